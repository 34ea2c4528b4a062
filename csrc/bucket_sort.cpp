// The sort order of LSH attention's rounds by a counting sort: for each (sequence, head,
// round) row of buckets, the positions ordered by bucket and, within a bucket, by
// position (the stable order ties need), in O(Tp + n_buckets) instead of an argsort's
// O(Tp log Tp). Rows run in parallel on libtorch's OpenMP threads.
//
// Input: buckets (M, R, Tp) int64, each in 0..=n_buckets (n_buckets: the padding bucket).
// Output: (M, R·Tp) int64, slot ↦ round·Tp + position, the rounds one after another:
// what `argsort_stable` gives for the keys round·(n_buckets + 1)·Tp + bucket·Tp + position.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>

#include <atomic>
#include <vector>

#include "bridge.h"

extern "C" {
int reformer_bucket_sort(const at::Tensor* buckets, int64_t n_buckets, at::Tensor** sticker, char* err,
                         size_t err_len) {
  return bridge::guarded(err, err_len, [&] {
    c10::NoGradGuard no_grad;
    TORCH_CHECK(buckets->device().is_cpu() && buckets->scalar_type() == at::kLong && buckets->dim() == 3,
                "the bucket sort takes (M, R, Tp) int64 buckets on the CPU, got ", buckets->sizes(), " ",
                buckets->scalar_type(), " on ", buckets->device());
    TORCH_CHECK(n_buckets > 0, "n_buckets must be positive, got ", n_buckets);
    const at::Tensor in = buckets->contiguous();
    const int64_t rows = in.size(0) * in.size(1), rounds = in.size(1), t_pad = in.size(2);
    at::Tensor out = at::empty({in.size(0), rounds * t_pad}, in.options());
    const int64_t* bucket_of = in.data_ptr<int64_t>();
    int64_t* slots = out.data_ptr<int64_t>();
    std::atomic<int64_t> bad{0};  // a bucket out of range, plus one
    at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
      std::vector<int64_t> start(n_buckets + 2);
      for (int64_t row = begin; row < end; ++row) {
        const int64_t* b = bucket_of + row * t_pad;  // (Tp)
        const int64_t round = row % rounds, offset = round * t_pad;
        std::fill(start.begin(), start.end(), 0);
        for (int64_t p = 0; p < t_pad; ++p) {
          if (b[p] < 0 || b[p] > n_buckets) {
            bad.store(b[p] + 1);  // any one of them, for the message
            return;
          }
          ++start[b[p] + 1];
        }
        for (int64_t k = 1; k <= n_buckets + 1; ++k) start[k] += start[k - 1];  // first slot of each bucket
        int64_t* row_slots = slots + row * t_pad;  // this round's Tp slots of (M, R·Tp)
        for (int64_t p = 0; p < t_pad; ++p) row_slots[start[b[p]]++] = offset + p;
      }
    });
    TORCH_CHECK(bad.load() == 0, "bucket ", bad.load() - 1, " is outside 0..=", n_buckets);
    *sticker = new at::Tensor(std::move(out));
  });
}
}
