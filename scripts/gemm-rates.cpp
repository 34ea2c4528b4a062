// Float32 matmul rates of this machine through libtorch's two CPU back ends: `at::mm`
// (MKL's sgemm in the PyPI wheels) and oneDNN's matmul (`at::native::mkldnn_matmul`), on
// the shapes of the bench's training steps, one thread and then all. Build and run from
// the repository root after `make setup`:
//
//   L=.libtorch; g++ -O2 -std=c++17 -D_GLIBCXX_USE_CXX11_ABI=1 -I$L/include \
//     -I$L/include/torch/csrc/api/include scripts/gemm-rates.cpp -o /tmp/gemm-rates \
//     -L$L/lib -ltorch_cpu -lc10 -Wl,-rpath,$L/lib && /tmp/gemm-rates
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <vector>

namespace at::native {
// Declared in ATen/native/mkldnn/Matmul.h, which the wheel does not ship.
TORCH_API void mkldnn_matmul(const Tensor& mat1, const Tensor& mat2, const Tensor& result, float beta, float alpha);
}

template <typename F>
double seconds_per_call(F call) {
  call();  // warm-up
  const int reps = 10;
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) call();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / reps;
}

int main() {
  const std::vector<std::array<int64_t, 3>> shapes = {{4096, 256, 1024}, {4096, 1024, 256}, {256, 4096, 1024}, {2048, 2048, 2048}};
  for (int threads : {1, at::get_num_threads()}) {
    at::set_num_threads(threads);
    for (const auto& [m, k, n] : shapes) {
      at::Tensor a = at::randn({m, k}), b = at::randn({k, n}), c = at::empty({m, n});
      const double flops = 2.0 * m * k * n;
      const double mkl = seconds_per_call([&] { at::mm_out(c, a, b); });
      const double onednn = seconds_per_call([&] { at::native::mkldnn_matmul(a, b, c, 0.f, 1.f); });
      const float error = (c - at::mm(a, b)).abs().max().item<float>();
      std::printf("%d thread(s) %ldx%ldx%ld: at::mm %.0f GFLOP/s, oneDNN %.0f GFLOP/s (max difference %.1e)\n", threads, m,
                  k, n, flops / mkl / 1e9, flops / onednn / 1e9, error);
    }
  }
}
