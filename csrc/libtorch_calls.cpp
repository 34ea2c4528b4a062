// Small libtorch calls that tch does not bind. Tensors cross as `at::Tensor*` (tch's
// C_tensor). Each function that can fail returns 0, or non-zero with a message in `err`.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/core/CachingDeviceAllocator.h>
#include <ATen/autocast_mode.h>
#include <c10/core/GradMode.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/jit/serialization/pickle.h>

#include <fstream>
#include <iterator>
#include <stdexcept>
#include <vector>

#include "bridge.h"

namespace {
c10::DeviceAllocator* cuda_allocator() { return c10::getDeviceAllocator(c10::DeviceType::CUDA); }
}  // namespace

extern "C" {
// Drops a tensor's gradient (PyTorch's zero_grad(set_to_none=True)): the next backward
// then hands its gradient over to the tensor instead of adding it into a zeroed buffer,
// so that the two never exist side by side.
void reformer_clear_grad(const at::Tensor* tensor) { tensor->mutable_grad().reset(); }

// Throws what `kind` names inside bridge::guarded (0: nothing, 1: a c10::Error, 2: a
// std::runtime_error, 3: an int, which is no std::exception): for the guard's test.
int reformer_guard_probe(int kind, char* err, size_t err_len) {
  return bridge::guarded(err, err_len, [&] {
    if (kind == 1) TORCH_CHECK(false, "probe: a c10 error");
    if (kind == 2) throw std::runtime_error("probe: a std error");
    if (kind == 3) throw 3;
  });
}

// Whether libtorch records operations for autograd on this thread.
int reformer_grad_enabled() { return c10::GradMode::is_enabled() ? 1 : 0; }

// The CUDA caching allocator's peak on device `index` since the process started or the
// last reset: of allocated bytes, or with `reserved` of the bytes it held from the driver.
int reformer_cuda_peak(int index, int reserved, int64_t* peak, char* err, size_t err_len) {
  return bridge::guarded(err, err_len, [&] {
    auto stats = cuda_allocator()->getDeviceStats(static_cast<c10::DeviceIndex>(index));
    auto aggregate = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    *peak = reserved ? stats.reserved_bytes[aggregate].peak : stats.allocated_bytes[aggregate].peak;
  });
}

// Free and total bytes of CUDA device `index`, as the driver reports them.
int reformer_cuda_memory_info(int index, int64_t* free_bytes, int64_t* total_bytes, char* err, size_t err_len) {
  return bridge::guarded(err, err_len, [&] {
    auto [free, total] = cuda_allocator()->getMemoryInfo(static_cast<c10::DeviceIndex>(index));
    *free_bytes = static_cast<int64_t>(free);
    *total_bytes = static_cast<int64_t>(total);
  });
}

// Starts the peak statistics of device `index` afresh.
int reformer_cuda_reset_peak(int index, char* err, size_t err_len) {
  return bridge::guarded(err, err_len, [&] {
    cuda_allocator()->resetPeakStats(static_cast<c10::DeviceIndex>(index));
  });
}
}

extern "C" {
// Autocast for the device type `device_type` (0 CPU, 1 CUDA) to `dtype` (0 float32 =
// off, 1 bfloat16, 2 float16). Enters: saves the state it replaces into `saved` (two
// ints) and increments the nesting; exits: restores `saved` and decrements the nesting,
// clearing the cast cache when the outermost scope ends (as torch.autocast does).
int reformer_autocast_enter(int device_type, int dtype, int* saved, char* err, size_t err_len);
int reformer_autocast_exit(int device_type, const int* saved, char* err, size_t err_len);
// The autocast state of `device_type` as the codes above: 0 when off.
int reformer_autocast_state(int device_type);
}

namespace {
at::DeviceType device_type_of(int code) { return code == 1 ? at::DeviceType::CUDA : at::DeviceType::CPU; }

int dtype_code(at::ScalarType dtype) {
  if (dtype == at::kBFloat16) return 1;
  if (dtype == at::kHalf) return 2;
  return 0;
}

at::ScalarType dtype_of(int code) { return code == 2 ? at::kHalf : at::kBFloat16; }
}  // namespace

int reformer_autocast_state(int device_type) {
  auto type = device_type_of(device_type);
  return at::autocast::is_autocast_enabled(type) ? dtype_code(at::autocast::get_autocast_dtype(type)) : 0;
}

int reformer_autocast_enter(int device_type, int dtype, int* saved, char* err, size_t err_len) {
  return bridge::guarded(err, err_len, [&] {
    auto type = device_type_of(device_type);
    saved[0] = at::autocast::is_autocast_enabled(type) ? 1 : 0;
    saved[1] = dtype_code(at::autocast::get_autocast_dtype(type));
    if (dtype != 0) at::autocast::set_autocast_dtype(type, dtype_of(dtype));
    at::autocast::set_autocast_enabled(type, dtype != 0);
    at::autocast::increment_nesting();
  });
}

int reformer_autocast_exit(int device_type, const int* saved, char* err, size_t err_len) {
  return bridge::guarded(err, err_len, [&] {
    auto type = device_type_of(device_type);
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    if (saved[1] != 0) at::autocast::set_autocast_dtype(type, dtype_of(saved[1]));
    at::autocast::set_autocast_enabled(type, saved[0] != 0);
  });
}


extern "C" {
// Standard normal float32 numbers of shape `shape` (`n_dims` sizes) drawn on the CPU from
// a generator of their own seeded with `seed`: the numbers `torch.manual_seed(seed);
// torch.randn(shape)` gives, without touching the global generator. The new tensor is
// written to `out`.
int reformer_seeded_randn(uint64_t seed, const int64_t* shape, size_t n_dims, at::Tensor** out, char* err,
                          size_t err_len) {
  return bridge::guarded(err, err_len, [&] {
    at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(seed);
    *out = new at::Tensor(at::randn(at::IntArrayRef(shape, n_dims), generator, at::TensorOptions().dtype(at::kFloat)));
  });
}

// Called once per entry of a loaded state dict, with the entry's name and its tensor
// (handed over: the callee owns it).
typedef void (*reformer_named_tensor_fn)(void* context, const char* name, at::Tensor* tensor);

// Reads a state dict saved by Python's `torch.save` (the zip format of torch >= 1.6, as
// transformers' `pytorch_model.bin`) and hands each of its tensors to `visit`.
int reformer_load_pickled_tensors(const char* path, reformer_named_tensor_fn visit, void* context, char* err,
                                  size_t err_len) {
  return bridge::guarded(err, err_len, [&] {
    std::ifstream file(path, std::ios::binary);
    TORCH_CHECK(file, "cannot open ", path);
    std::vector<char> bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
    c10::IValue value = torch::jit::pickle_load(bytes);
    TORCH_CHECK(value.isGenericDict(), "it holds a ", value.tagKind(), ", not a dictionary of tensors");
    for (const auto& entry : value.toGenericDict()) {
      TORCH_CHECK(entry.key().isString(), "a key of its dictionary is a ", entry.key().tagKind(), ", not a name");
      TORCH_CHECK(entry.value().isTensor(), "its entry ", entry.key().toStringRef(), " is a ",
                  entry.value().tagKind(), ", not a tensor");
      visit(context, entry.key().toStringRef().c_str(), new at::Tensor(entry.value().toTensor()));
    }
  });
}
}

namespace at::native {
// oneDNN's matmul: result = alpha · mat1 · mat2 + beta · result. Declared in
// ATen/native/mkldnn/Matmul.h, which the PyPI wheels do not ship.
TORCH_API void mkldnn_matmul(const Tensor& mat1, const Tensor& mat2, const Tensor& result, float beta, float alpha);
}  // namespace at::native

extern "C" {
// Whether oneDNN's float32 matmul can run here: 1, or 0 with the reason in `err`
// (libtorch built without oneDNN, oneDNN disabled, or libtorch's own check refusing this
// CPU, tried on a 2 × 2 product).
int reformer_onednn_matmul_usable(char* err, size_t err_len) {
  if (!at::hasMKLDNN()) {
    bridge::write_error("libtorch was built without oneDNN", err, err_len);
    return 0;
  }
  if (!at::globalContext().userEnabledMkldnn()) {
    bridge::write_error("oneDNN is disabled", err, err_len);
    return 0;
  }
  const int failed = bridge::guarded(err, err_len, [] {
    c10::NoGradGuard no_grad;
    const at::Tensor a = at::ones({2, 2}), out = at::empty({2, 2});
    at::native::mkldnn_matmul(a, a, out, 0.f, 1.f);
  });
  return failed ? 0 : 1;
}

// A float32 linear layer through oneDNN's matmul: y (M, out) = x (M, in) · wᵀ + b, `b`
// null for none. On this project's CPUs oneDNN's float32 matmul runs the model's shapes
// at about twice the rate of `at::mm` (MKL), see scripts/gemm-rates.cpp. The weight goes
// in as its transposed view, which oneDNN reads in place: no copy per call.
int reformer_onednn_linear(const at::Tensor* x, const at::Tensor* w, const at::Tensor* b, at::Tensor** y, char* err,
                           size_t err_len) {
  return bridge::guarded(err, err_len, [&] {
    c10::NoGradGuard no_grad;
    const at::Tensor xc = x->contiguous(), wt = w->contiguous().t();  // (M, in), (in, out) a view
    at::Tensor out = at::empty({xc.size(0), w->size(0)}, xc.options());
    at::native::mkldnn_matmul(xc, wt, out, 0.f, 1.f);
    // The bias added afterwards: accumulating onto it (beta = 1) gave a wrong result for
    // a single row (tests/dense.rs covers one row).
    if (b && b->defined()) out.add_(*b);
    *y = new at::Tensor(std::move(out));
  });
}

// Its backward: dx (M, in) = dy · w, dw (out, in) = dyᵀ · x, and db = Σ dy over rows
// where `want_bias` (else null).
int reformer_onednn_linear_backward(const at::Tensor* x, const at::Tensor* w, const at::Tensor* dy, int want_bias,
                                    at::Tensor** dx, at::Tensor** dw, at::Tensor** db, char* err, size_t err_len) {
  return bridge::guarded(err, err_len, [&] {
    c10::NoGradGuard no_grad;
    const at::Tensor xc = x->contiguous(), wc = w->contiguous(), dyc = dy->contiguous();
    at::Tensor grad_x = at::empty({xc.size(0), wc.size(1)}, xc.options());
    at::native::mkldnn_matmul(dyc, wc, grad_x, 0.f, 1.f);
    at::Tensor grad_w = at::empty({wc.size(0), wc.size(1)}, wc.options());
    at::native::mkldnn_matmul(dyc.t(), xc, grad_w, 0.f, 1.f);  // dyᵀ as a view
    *dx = new at::Tensor(std::move(grad_x));
    *dw = new at::Tensor(std::move(grad_w));
    *db = want_bias ? new at::Tensor(dyc.sum(0)) : nullptr;
  });
}
}
