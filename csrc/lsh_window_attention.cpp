// Chunked LSH attention, forward and backward, fused: for each (sequence, round, chunk)
// block of the bucket-sorted sequence, the chunk's queries and its window of keys and
// values are read through the sort order, the C × W logits are masked from positions on
// the fly, soft-maxed with their log-sum-exp and multiplied by the values, and each
// output row is written straight to its (round, position). Nothing of size
// (rounds × positions × window) outlives a block: the backward recomputes each block's
// probabilities from its inputs alone (a block holds whole rows, so it needs neither
// the saved log-sum-exps of flash attention nor the outputs).
//
// The rules are those of the batched path in src/model/attention/lsh.rs (its reference):
// a key outside the query's round window (a chunk before the first) or at a padding
// position is hidden, and so, when causal, is a later position; under the strict causal
// rule a key is visible only in the query's own bucket and among the `chunk_len` slots
// just before it; a visible key in the query's own slot has logit SELF_LOGIT; a hidden
// key has MASKED_LOGIT (a row with nothing visible stays finite). The ring windows of
// `lsh.wrap_around` and attention dropout are not covered: the caller keeps the batched
// path for them.
//
// Layout: q, k, v (N, Tp, Dh) in position order, N = batch × heads; `sticker` (N, R·Tp)
// gives, for each slot of the sorted rounds, round · Tp + position; `buckets` (N, R, Tp)
// is read only under the strict rule. Outputs: out (N, R, Tp, Dh), lse (N, R, Tp).
//
// Threads: libtorch's OpenMP pool (this file is compiled with OpenMP against the
// libgomp that libtorch loads, so `--threads` governs it). The forward runs every block
// in parallel. In the backward every round of a sequence adds into the same gradient
// rows, and a block adds into the rows of its window: the rounds run one after another
// and, within a round, the chunks of one colour (chunk index mod the window's chunk
// count) together, whose windows cannot overlap. No row is written by two threads at
// once, each row receives its additions in an order fixed by the sizes alone (so the
// result does not depend on the thread count) and the backward's extra memory is the
// blocks' scratch, per thread: about (3·C·W + 6·W·Dh + 3·C·Dh) values and C·W bytes,
// whatever N and Tp (`fused_lsh_scratch_bytes` in src/bench/memory_model.rs).
//
// Instruction sets: the element-wise row work (softmax, its backward, adding rows into
// place) comes from csrc/lsh_rows.cpp, built once per x86-64 variant and chosen by the
// caller from the CPU's features; this file itself is compiled for baseline x86-64, and
// its block products go through oneDNN's micro-kernel, which picks its own code at run
// time.
//
// This is the CPU kernel. A CUDA kernel would take the same arguments and layout (one
// thread block per (sequence, round, chunk), the backward's key and value gradients
// accumulated atomically or per round) and be chosen by the same entry points on the
// tensors' device; until one exists the caller keeps the batched path on CUDA.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <c10/core/GradMode.h>
#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "bridge.h"
#include "lsh_rows.h"

extern "C" {
// Which keys a query may see (see the header comment); `real_len` is the number of
// positions before the padding.
struct LshWindowRules {
  int64_t chunk_len;
  int64_t n_chunks_before;
  int64_t n_chunks_after;
  int64_t real_len;
  int32_t causal;
  int32_t strict_causal;
  double self_logit;
  double masked_logit;
};
}

namespace {

// ---------------------------------------------------------------------------------------
// Small row-major GEMMs: float through ATen's micro-kernel, float64 through the BLAS that
// libtorch carries (MKL's Fortran symbols in the PyPI wheels), found at run time, or a
// plain loop where there is none.

template <typename T>
using FortranGemm = void (*)(const char*, const char*, const int*, const int*, const int*, const T*, const T*,
                             const int*, const T*, const int*, const T*, T*, const int*);

template <typename T>
FortranGemm<T> fortran_gemm() {
  static const FortranGemm<T> found = reinterpret_cast<FortranGemm<T>>(
      dlsym(RTLD_DEFAULT, std::is_same_v<T, float> ? "sgemm_" : "dgemm_"));
  return found;
}

// The blocks already run in parallel: a BLAS call inside one must not start threads of
// its own (MKL would, nesting OpenMP teams). For a worker's life: MKL's thread count for
// this thread set to one, where MKL is present; at the end, the micro-kernel's context
// released.
class WorkerBlas {
 public:
  WorkerBlas() {
    if (set_local_) previous_ = set_local_(1);
  }
  ~WorkerBlas() {
    if (set_local_) set_local_(previous_);
    at::native::cpublas::brgemm_release(false);
  }

 private:
  using SetLocal = int (*)(int);
  static inline const SetLocal set_local_ = reinterpret_cast<SetLocal>(dlsym(RTLD_DEFAULT, "MKL_Set_Num_Threads_Local"));
  int previous_ = 0;
};

// C (m × n) = op(A) · op(B), all row-major; op(X) is X or Xᵀ (then X is stored
// transposed: A as k × m, B as n × k). Sizes are a block's (C, W, Dh); indices are
// 64-bit, so C · W may pass 2^31.
template <typename T>
void matmul(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b,
            int64_t ldb, T* c, int64_t ldc) {
  const T one = 1, zero = 0;
  auto blas = fortran_gemm<T>();
  const bool fits_blas = std::max({m, n, k, lda, ldb, ldc}) <= std::numeric_limits<int>::max();
  if (blas && fits_blas) {
    // Row-major C = op(A) op(B) is column-major Cᵀ = op(B)ᵀ op(A)ᵀ: swap the operands.
    const char ta = trans_a ? 'T' : 'N', tb = trans_b ? 'T' : 'N';
    const int m_ = m, n_ = n, k_ = k, lda_ = lda, ldb_ = ldb, ldc_ = ldc;
    blas(&tb, &ta, &n_, &m_, &k_, &one, b, &ldb_, a, &lda_, &zero, c, &ldc_);
    return;
  }
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      T sum = 0;
      for (int64_t p = 0; p < k; ++p) {
        sum += (trans_a ? a[p * lda + i] : a[i * lda + p]) * (trans_b ? b[j * ldb + p] : b[p * ldb + j]);
      }
      c[i * ldc + j] = sum;
    }
  }
}

// The transpose of x (rows × cols, row stride ld) written into `out`: (cols × rows).
inline const float* transposed(const float* x, int64_t rows, int64_t cols, int64_t ld, std::vector<float>& out) {
  out.resize(static_cast<size_t>(rows) * cols);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) out[c * rows + r] = x[r * ld + c];
  }
  return out.data();
}

// float: ATen's batch-reduce GEMM micro-kernel (oneDNN's JIT code for the CPU it runs
// on; at these block sizes about 2.5 times MKL's rate on an AVX-512 CPU; libtorch's
// gemm where oneDNN's micro-kernel does not run), which takes both operands
// untransposed: a transposed one is first copied into a scratch buffer of the thread's.
template <>
void matmul<float>(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                   const float* b, int64_t ldb, float* c, int64_t ldc) {
  thread_local std::vector<float> a_rows, b_rows;
  if (trans_a) {
    a = transposed(a, k, m, lda, a_rows);  // (m, k) from A stored (k, m)
    lda = k;
  }
  if (trans_b) {
    b = transposed(b, n, k, ldb, b_rows);  // (k, n) from B stored (n, k)
    ldb = n;
  }
  at::native::cpublas::brgemm(m, n, k, lda, ldb, ldc, false, a, b, c, false);
}

// The row work of each dtype from the chosen variant's table (lsh_rows.h).
inline void softmax_rows(const LshRowKernels& rows, float* x, int64_t n, int64_t w, float* lse) {
  rows.softmax_f32(x, n, w, lse);
}
inline void softmax_rows(const LshRowKernels& rows, double* x, int64_t n, int64_t w, double* lse) {
  rows.softmax_f64(x, n, w, lse);
}
inline void softmax_backward_rows(const LshRowKernels& rows, const float* p, float* dp, const uint8_t* kinds,
                                  const float* d_lse, int64_t n, int64_t w) {
  rows.softmax_backward_f32(p, dp, kinds, d_lse, n, w);
}
inline void softmax_backward_rows(const LshRowKernels& rows, const double* p, double* dp, const uint8_t* kinds,
                                  const double* d_lse, int64_t n, int64_t w) {
  rows.softmax_backward_f64(p, dp, kinds, d_lse, n, w);
}
inline void scatter_add_rows(const LshRowKernels& rows, float* dst, const int64_t* pos, const float* src, int64_t n,
                             int64_t w) {
  rows.scatter_add_f32(dst, pos, src, n, w);
}
inline void scatter_add_rows(const LshRowKernels& rows, double* dst, const int64_t* pos, const double* src,
                             int64_t n, int64_t w) {
  rows.scatter_add_f64(dst, pos, src, n, w);
}

// The variant of code `isa` (src/cpu_paths.rs: 0 baseline, 1 AVX2, 2 AVX-512).
const LshRowKernels& row_kernels(int32_t isa) {
#if defined(__x86_64__)
  if (isa == 2) return *reformer_lsh_rows_avx512();
  if (isa == 1) return *reformer_lsh_rows_avx2();
#endif
  TORCH_CHECK(isa == 0, "no LSH row kernels for instruction set code ", isa, " in this build");
  return *reformer_lsh_rows_baseline();
}

// How many distinct threads ran blocks in the last forward or backward call: a check
// that the kernel runs in parallel (tests/lsh_kernel_threads.rs).
std::atomic<int> threads_in_last_call{0};

// Collects the thread numbers that enter a call's block loops.
class ThreadCensus {
 public:
  void enter() { seen_.fetch_or(uint64_t{1} << std::min(at::get_thread_num(), 63), std::memory_order_relaxed); }
  ~ThreadCensus() { threads_in_last_call.store(__builtin_popcountll(seen_.load())); }

 private:
  std::atomic<uint64_t> seen_{0};
};

// ---------------------------------------------------------------------------------------
// One block: a chunk of C sorted queries and its window of W = (before + 1 + after) · C
// keys.

// What a logit is, by the rules.
enum class Logit : uint8_t { Visible, Self, Hidden };

// The sizes shared by every block of a call.
struct Geometry {
  int64_t n_seqs, n_rounds, t_pad, d_head, chunk_len, n_chunks, window_chunks, window;

  static Geometry of(const at::Tensor& q, const at::Tensor& sticker, const LshWindowRules& rules) {
    Geometry g{};
    g.n_seqs = q.size(0);
    g.t_pad = q.size(1);
    g.d_head = q.size(2);
    g.n_rounds = sticker.size(1) / g.t_pad;
    g.chunk_len = rules.chunk_len;
    g.n_chunks = g.t_pad / g.chunk_len;
    g.window_chunks = rules.n_chunks_before + 1 + rules.n_chunks_after;
    g.window = g.window_chunks * g.chunk_len;
    return g;
  }
  int64_t n_blocks() const { return n_seqs * n_rounds * n_chunks; }
};

// A block's rows, gathered through the sort order into buffers of its own, and the rule
// of each of its logits.
template <typename T>
struct Block {
  const Geometry& g;
  const LshWindowRules& rules;
  std::vector<int64_t> q_pos, k_pos;  // (C), (W); -1: a key slot outside the round
  std::vector<int32_t> k_limit;       // (W): the key's position, or INT32_MAX where it is never visible
  std::vector<T> q, k_t, v;           // (C, Dh), (Dh, W), (W, Dh): for the forward
  std::vector<T> k, v_t;              // (W, Dh), (Dh, W): for the backward, which needs no v
  std::vector<T> logits;              // (C, W), then the probabilities
  std::vector<Logit> kind;            // (C, W)
  int64_t seq = 0, round = 0;

  Block(const Geometry& geometry, const LshWindowRules& r)
      : g(geometry),
        rules(r),
        q_pos(g.chunk_len),
        k_pos(g.window),
        k_limit(g.window),
        q(g.chunk_len * g.d_head),
        k_t(g.d_head * g.window),
        v(g.window * g.d_head),
        k(g.window * g.d_head),
        v_t(g.d_head * g.window),
        logits(g.chunk_len * g.window),
        kind(g.chunk_len * g.window) {}

  // Gathers block `index` = (seq · R + round) · NC + chunk (keys and values laid out as
  // the forward, or with `backward` as the backward, multiplies them) and computes its
  // masked logits.
  void load(int64_t index, const T* q_all, const T* k_all, const T* v_all, const int64_t* sticker,
            const int64_t* buckets, bool backward) {
    const int64_t c = g.chunk_len, dh = g.d_head, w_len = g.window, chunk = index % g.n_chunks;
    round = (index / g.n_chunks) % g.n_rounds;
    seq = index / (g.n_chunks * g.n_rounds);
    const int64_t* slots = sticker + seq * g.n_rounds * g.t_pad + round * g.t_pad;  // (Tp) this round's slots
    const size_t row_bytes = dh * sizeof(T);
    const T* q_seq = q_all + seq * g.t_pad * dh;
    for (int64_t i = 0; i < c; ++i) {
      q_pos[i] = slots[chunk * c + i] % g.t_pad;
      std::memcpy(&q[i * dh], q_seq + q_pos[i] * dh, row_bytes);
    }
    const T* k_seq = k_all + seq * g.t_pad * dh;
    const T* v_seq = v_all + seq * g.t_pad * dh;
    for (int64_t w = 0; w < g.window_chunks; ++w) {
      const int64_t neighbour = chunk - rules.n_chunks_before + w;
      const bool inside = neighbour >= 0 && neighbour < g.n_chunks;
      for (int64_t jj = 0; jj < c; ++jj) {
        const int64_t j = w * c + jj;
        k_pos[j] = inside ? slots[neighbour * c + jj] % g.t_pad : -1;
        const bool seen = inside && k_pos[j] < rules.real_len;
        k_limit[j] = seen ? static_cast<int32_t>(k_pos[j]) : std::numeric_limits<int32_t>::max();
        const T* key = inside ? k_seq + k_pos[j] * dh : nullptr;
        const T* value = inside ? v_seq + k_pos[j] * dh : nullptr;
        for (int64_t d = 0; d < dh; ++d) k_t[d * w_len + j] = key ? key[d] : T(0);
        if (backward) {
          for (int64_t d = 0; d < dh; ++d) v_t[d * w_len + j] = value ? value[d] : T(0);
          if (key) std::memcpy(&k[j * dh], key, row_bytes);
          else std::fill_n(&k[j * dh], dh, T(0));
        } else if (value) {
          std::memcpy(&v[j * dh], value, row_bytes);
        } else {
          std::fill_n(&v[j * dh], dh, T(0));
        }
      }
    }
    // logits (C, W) = q (C, Dh) · kᵀ (Dh, W)
    matmul<T>(false, false, c, w_len, dh, q.data(), dh, k_t.data(), w_len, logits.data(), w_len);
    const int64_t* round_buckets = buckets ? buckets + (seq * g.n_rounds + round) * g.t_pad : nullptr;  // (Tp)
    for (int64_t i = 0; i < c; ++i) classify_row(i, round_buckets);
  }

  // The rule of each of query i's logits, and the fixed logits in place.
  void classify_row(int64_t i, const int64_t* round_buckets) {
    const int64_t c = g.chunk_len, query = q_pos[i];
    // Hidden: a key past the limit (later than the query when causal; never visible).
    const int32_t limit = rules.causal ? static_cast<int32_t>(query) : std::numeric_limits<int32_t>::max() - 1;
    Logit* kinds = &kind[i * g.window];
    const int32_t* key_limits = k_limit.data();
    for (int64_t j = 0; j < g.window; ++j) kinds[j] = key_limits[j] > limit ? Logit::Hidden : Logit::Visible;
    if (rules.strict_causal) {
      // Visible: the query's bucket, 0..=C slots before it in the sorted round (the
      // query's chunk is window chunk `before`).
      for (int64_t j = 0; j < g.window; ++j) {
        if (kinds[j] != Logit::Visible) continue;
        const int64_t distance = rules.n_chunks_before * c + i - j;
        const bool reach = distance >= 0 && distance <= c && round_buckets[k_pos[j]] == round_buckets[query];
        if (!reach) kinds[j] = Logit::Hidden;
      }
    }
    const int64_t own_slot = rules.n_chunks_before * c + i;
    if (kinds[own_slot] == Logit::Visible) kinds[own_slot] = Logit::Self;
    T* row = &logits[i * g.window];
    const T masked = T(rules.masked_logit);
    for (int64_t j = 0; j < g.window; ++j) row[j] = kinds[j] == Logit::Hidden ? masked : row[j];
    if (kinds[own_slot] == Logit::Self) row[own_slot] = T(rules.self_logit);
  }

  // The logits of each row become its probabilities, their log-sum-exps go to `lse`
  // (C). The backward recomputes them this way too, not from the log-sum-exp: a row
  // with nothing visible has a log-sum-exp near MASKED_LOGIT, where even float64 keeps
  // no digits of log W.
  void softmax(const LshRowKernels& rows, T* lse) { softmax_rows(rows, logits.data(), g.chunk_len, g.window, lse); }
};

static_assert(static_cast<uint8_t>(Logit::Visible) == LSH_LOGIT_VISIBLE, "lsh_rows.h reads Logit::Visible as 0");

const int64_t* bucket_data(const at::Tensor& buckets, const LshWindowRules& rules) {
  return rules.strict_causal ? buckets.data_ptr<int64_t>() : nullptr;
}

template <typename T>
void forward_kernel(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& sticker,
                    const at::Tensor& buckets, const LshWindowRules& rules, const LshRowKernels& rows,
                    at::Tensor& out, at::Tensor& lse) {
  const Geometry g = Geometry::of(q, sticker, rules);
  const T *q_all = q.data_ptr<T>(), *k_all = k.data_ptr<T>(), *v_all = v.data_ptr<T>();
  const int64_t* slots = sticker.data_ptr<int64_t>();
  const int64_t* bucket_ids = bucket_data(buckets, rules);
  T* out_all = out.data_ptr<T>();
  T* lse_all = lse.data_ptr<T>();
  ThreadCensus census;
  at::parallel_for(0, g.n_blocks(), 1, [&](int64_t begin, int64_t end) {
    census.enter();
    WorkerBlas blas;
    Block<T> block(g, rules);
    std::vector<T> o(g.chunk_len * g.d_head), row_lse(g.chunk_len);  // (C, Dh), (C)
    for (int64_t index = begin; index < end; ++index) {
      block.load(index, q_all, k_all, v_all, slots, bucket_ids, false);
      block.softmax(rows, row_lse.data());
      const int64_t row_base = (block.seq * g.n_rounds + block.round) * g.t_pad;  // of (N, R, Tp)
      for (int64_t i = 0; i < g.chunk_len; ++i) lse_all[row_base + block.q_pos[i]] = row_lse[i];
      // o (C, Dh) = probabilities (C, W) · v (W, Dh)
      matmul<T>(false, false, g.chunk_len, g.d_head, g.window, block.logits.data(), g.window, block.v.data(),
                g.d_head, o.data(), g.d_head);
      for (int64_t i = 0; i < g.chunk_len; ++i) {
        std::memcpy(out_all + (row_base + block.q_pos[i]) * g.d_head, &o[i * g.d_head], g.d_head * sizeof(T));
      }
    }
  });
}

// Gradients of q, k and v, added block by block into (N, Tp, Dh) buffers in the phases
// of the header comment: for each round, for each colour, every (sequence, chunk of that
// colour) block in parallel.
template <typename T>
void backward_kernel(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& sticker,
                     const at::Tensor& buckets, const LshWindowRules& rules, const LshRowKernels& rows,
                     const at::Tensor& d_out, const at::Tensor& d_lse, at::Tensor& dq, at::Tensor& dk,
                     at::Tensor& dv) {
  const Geometry g = Geometry::of(q, sticker, rules);
  const T *q_all = q.data_ptr<T>(), *k_all = k.data_ptr<T>(), *v_all = v.data_ptr<T>();
  const T* d_out_all = d_out.defined() ? d_out.data_ptr<T>() : nullptr;
  const T* d_lse_all = d_lse.defined() ? d_lse.data_ptr<T>() : nullptr;
  const int64_t* slots = sticker.data_ptr<int64_t>();
  const int64_t* bucket_ids = bucket_data(buckets, rules);
  T *dq_all = dq.data_ptr<T>(), *dk_all = dk.data_ptr<T>(), *dv_all = dv.data_ptr<T>();
  // Chunks `colours` apart have disjoint windows (a window spans window_chunks chunks).
  const int64_t colours = g.window_chunks;
  ThreadCensus census;

  auto run_block = [&](Block<T>& block, int64_t index, std::vector<T>& scratch) {
    const int64_t c = g.chunk_len, w_len = g.window, dh = g.d_head;
    T* d_o = scratch.data();           // (C, Dh)
    T* d_probs = d_o + c * dh;         // (C, W), then the logits' gradient
    T* dq_block = d_probs + c * w_len; // (C, Dh)
    T* dk_block = dq_block + c * dh;   // (W, Dh)
    T* dv_block = dk_block + w_len * dh;  // (W, Dh)
    T* row_d_lse = dv_block + w_len * dh; // (C)
    T* row_lse = row_d_lse + c;           // (C), unused
    block.load(index, q_all, k_all, v_all, slots, bucket_ids, true);
    const int64_t row_base = (block.seq * g.n_rounds + block.round) * g.t_pad;  // of (N, R, Tp)
    for (int64_t i = 0; i < c; ++i) {
      const int64_t row = row_base + block.q_pos[i];
      if (d_out_all) {
        std::memcpy(&d_o[i * dh], d_out_all + row * dh, dh * sizeof(T));
      } else {
        std::fill_n(&d_o[i * dh], dh, T(0));
      }
      row_d_lse[i] = d_lse_all ? d_lse_all[row] : T(0);
    }
    block.softmax(rows, row_lse);
    const T* probs = block.logits.data();
    // d_probs (C, W) = d_o (C, Dh) · vᵀ (Dh, W)
    matmul<T>(false, false, c, w_len, dh, d_o, dh, block.v_t.data(), w_len, d_probs, w_len);
    // dv (W, Dh) = probabilitiesᵀ (W, C) · d_o (C, Dh)
    matmul<T>(true, false, w_len, dh, c, probs, w_len, d_o, dh, dv_block, dh);
    // d_logits in place of d_probs: p · (dp − Σ p dp + d_lse); none through a fixed logit
    softmax_backward_rows(rows, probs, d_probs, reinterpret_cast<const uint8_t*>(block.kind.data()), row_d_lse, c,
                          w_len);
    // dq (C, Dh) = d_logits (C, W) · k (W, Dh); dk (W, Dh) = d_logitsᵀ (W, C) · q (C, Dh)
    matmul<T>(false, false, c, dh, w_len, d_probs, w_len, block.k.data(), dh, dq_block, dh);
    matmul<T>(true, false, w_len, dh, c, d_probs, w_len, block.q.data(), dh, dk_block, dh);
    const int64_t seq_offset = block.seq * g.t_pad * dh;
    scatter_add_rows(rows, dq_all + seq_offset, block.q_pos.data(), dq_block, c, dh);
    scatter_add_rows(rows, dk_all + seq_offset, block.k_pos.data(), dk_block, w_len, dh);
    scatter_add_rows(rows, dv_all + seq_offset, block.k_pos.data(), dv_block, w_len, dh);
  };

  const int64_t scratch_len = 3 * g.chunk_len * g.d_head + g.chunk_len * g.window + 2 * g.window * g.d_head +
                              2 * g.chunk_len;
  for (int64_t round = 0; round < g.n_rounds; ++round) {
    for (int64_t colour = 0; colour < std::min(colours, g.n_chunks); ++colour) {
      const int64_t per_seq = (g.n_chunks - colour + colours - 1) / colours;  // chunks of this colour
      at::parallel_for(0, g.n_seqs * per_seq, 1, [&](int64_t begin, int64_t end) {
        census.enter();
        WorkerBlas blas;
        Block<T> block(g, rules);
        std::vector<T> scratch(scratch_len);
        for (int64_t item = begin; item < end; ++item) {
          const int64_t seq = item / per_seq, chunk = colour + (item % per_seq) * colours;
          run_block(block, (seq * g.n_rounds + round) * g.n_chunks + chunk, scratch);
        }
      });
    }
  }
}

void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& sticker,
                  const at::Tensor& buckets, const LshWindowRules& rules) {
  TORCH_CHECK(q.device().is_cpu(), "the fused LSH kernel runs on the CPU, not on ", q.device());
  TORCH_CHECK(q.dim() == 3 && k.sizes() == q.sizes() && v.sizes() == q.sizes(),
              "q, k and v must be (N, Tp, Dh) alike, got ", q.sizes(), ", ", k.sizes(), ", ", v.sizes());
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble,
              "the fused LSH kernel computes in float32 or float64, not ", q.scalar_type());
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), "q, k, v dtypes differ");
  TORCH_CHECK(rules.chunk_len > 0 && q.size(1) % rules.chunk_len == 0, "length ", q.size(1),
              " is not a multiple of the chunk length ", rules.chunk_len);
  TORCH_CHECK(sticker.dim() == 2 && sticker.size(0) == q.size(0) && sticker.size(1) % q.size(1) == 0 &&
                  sticker.scalar_type() == at::kLong,
              "sticker must be (N, R·Tp) int64, got ", sticker.sizes());
  TORCH_CHECK(!rules.strict_causal || (buckets.defined() && buckets.scalar_type() == at::kLong &&
                                       buckets.numel() == sticker.numel()),
              "the strict causal rule needs the buckets, (N, R, Tp) int64");
}

// The inputs of both entry points, checked and made contiguous.
struct KernelInputs {
  at::Tensor q, k, v, sticker, buckets;

  KernelInputs(const at::Tensor* q_in, const at::Tensor* k_in, const at::Tensor* v_in, const at::Tensor* sticker_in,
               const at::Tensor* buckets_in, const LshWindowRules& rules) {
    const at::Tensor no_buckets;
    const at::Tensor& bucket_ids = buckets_in ? *buckets_in : no_buckets;
    check_inputs(*q_in, *k_in, *v_in, *sticker_in, bucket_ids, rules);
    q = q_in->contiguous();
    k = k_in->contiguous();
    v = v_in->contiguous();
    sticker = sticker_in->contiguous();
    buckets = bucket_ids.defined() ? bucket_ids.contiguous() : bucket_ids;
  }
};

}  // namespace

extern "C" {
// Forward: `out` (N, R, Tp, Dh) and `lse` (N, R, Tp) become new tensors. `buckets` may
// be null unless the rule is strict. `isa` chooses the row kernels (see row_kernels).
int reformer_lsh_window_forward(const at::Tensor* q, const at::Tensor* k, const at::Tensor* v,
                                const at::Tensor* sticker, const at::Tensor* buckets, const LshWindowRules* rules,
                                int32_t isa, at::Tensor** out, at::Tensor** lse, char* err, size_t err_len) {
  return bridge::guarded(err, err_len, [&] {
    c10::NoGradGuard no_grad;
    const KernelInputs in(q, k, v, sticker, buckets, *rules);
    const int64_t n = in.q.size(0), t_pad = in.q.size(1), dh = in.q.size(2), rounds = in.sticker.size(1) / t_pad;
    at::Tensor o = at::empty({n, rounds, t_pad, dh}, in.q.options());
    at::Tensor l = at::empty({n, rounds, t_pad}, in.q.options());
    AT_DISPATCH_FLOATING_TYPES(in.q.scalar_type(), "lsh_window_forward", [&] {
      forward_kernel<scalar_t>(in.q, in.k, in.v, in.sticker, in.buckets, *rules, row_kernels(isa), o, l);
    });
    *out = new at::Tensor(std::move(o));
    *lse = new at::Tensor(std::move(l));
  });
}

// Backward: the gradients of q, k and v from the forward's inputs and its outputs'
// gradients (`d_out`, `d_lse` may be null: no gradient reached that output).
int reformer_lsh_window_backward(const at::Tensor* q, const at::Tensor* k, const at::Tensor* v,
                                 const at::Tensor* sticker, const at::Tensor* buckets, const LshWindowRules* rules,
                                 int32_t isa, const at::Tensor* d_out, const at::Tensor* d_lse, at::Tensor** dq, at::Tensor** dk,
                                 at::Tensor** dv, char* err, size_t err_len) {
  return bridge::guarded(err, err_len, [&] {
    c10::NoGradGuard no_grad;
    const KernelInputs in(q, k, v, sticker, buckets, *rules);
    const auto kind = in.q.scalar_type();
    auto same_kind = [&](const at::Tensor* t) {
      return (t && t->defined()) ? t->to(kind).contiguous() : at::Tensor();
    };
    const at::Tensor doc = same_kind(d_out), dlc = same_kind(d_lse);
    at::Tensor gq = at::zeros_like(in.q), gk = at::zeros_like(in.k), gv = at::zeros_like(in.v);
    AT_DISPATCH_FLOATING_TYPES(kind, "lsh_window_backward", [&] {
      backward_kernel<scalar_t>(in.q, in.k, in.v, in.sticker, in.buckets, *rules, row_kernels(isa), doc, dlc, gq, gk,
                                gv);
    });
    *dq = new at::Tensor(std::move(gq));
    *dk = new at::Tensor(std::move(gk));
    *dv = new at::Tensor(std::move(gv));
  });
}

// How many distinct threads ran blocks in the last forward or backward call.
int reformer_lsh_threads_in_last_call() { return threads_in_last_call.load(); }
}
