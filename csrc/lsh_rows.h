// The element-wise row work of the fused LSH kernel (softmax of a block's logits, its
// backward, adding gradient rows into place), compiled once per x86-64 instruction set
// from csrc/lsh_rows.cpp and chosen at run time by the CPU's features
// (src/cpu_paths.rs). Plain C: the variants include no libtorch header, so that no
// AVX2 or AVX-512 copy of a libtorch inline function can reach the rest of the program.
//
// Every variant computes the same numbers bit for bit: reductions go through 16 fixed
// lanes whatever the vector width, and no variant fuses a multiply with an add.
#pragma once

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// A logit's rule, as the kernel's `kinds` arrays hold it: only visible logits carry a
// gradient.
#define LSH_LOGIT_VISIBLE 0

typedef struct LshRowKernels {
  // The variant's name, as `reformer --version` and bench print it.
  const char* name;
  // Each of the `rows` rows of `logits` (rows × width) becomes its softmax; `lse[i]`
  // gets row i's log-sum-exp.
  void (*softmax_f32)(float* logits, int64_t rows, int64_t width, float* lse);
  void (*softmax_f64)(double* logits, int64_t rows, int64_t width, double* lse);
  // The logits' gradient in place of the probabilities' (`d_probs`, rows × width):
  // p · (dp − Σ_j p·dp + d_lse[i]) where `kinds` says visible, else 0. `d_lse` may be null.
  void (*softmax_backward_f32)(const float* probs, float* d_probs, const uint8_t* kinds, const float* d_lse,
                               int64_t rows, int64_t width);
  void (*softmax_backward_f64)(const double* probs, double* d_probs, const uint8_t* kinds, const double* d_lse,
                               int64_t rows, int64_t width);
  // dst[positions[i]] += src[i] for each row i of `src` (rows × width) whose position is
  // not negative; dst rows are `width` long.
  void (*scatter_add_f32)(float* dst, const int64_t* positions, const float* src, int64_t rows, int64_t width);
  void (*scatter_add_f64)(double* dst, const int64_t* positions, const double* src, int64_t rows, int64_t width);
} LshRowKernels;

// The variants: baseline x86-64 (SSE2) or any other architecture; AVX2 with FMA
// (x86-64 only); AVX-512 F/BW/VL/DQ (x86-64 only).
const LshRowKernels* reformer_lsh_rows_baseline(void);
const LshRowKernels* reformer_lsh_rows_avx2(void);
const LshRowKernels* reformer_lsh_rows_avx512(void);

#ifdef __cplusplus
}
#endif
