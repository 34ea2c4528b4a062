// The row work of the fused LSH kernel (see lsh_rows.h), written as plain loops that the
// compiler vectorises for the instruction set it is built for. build.rs compiles this
// file once per variant with ROWS_VARIANT set to its name (baseline, avx2, avx512) and
// that variant's flags, and -ffp-contract=off so that no variant fuses a multiply with an
// add; sums go through LANES fixed lanes. Hence every variant gives the same bits.
// Only C headers: nothing of libtorch, so every function here is this file's own.
#include "lsh_rows.h"

#include <math.h>
#include <string.h>

#ifndef ROWS_VARIANT
#error "build.rs names the variant: -DROWS_VARIANT=baseline|avx2|avx512"
#endif

#define ROWS_CONCAT(a, b) a##b
#define ROWS_ENTRY(variant) ROWS_CONCAT(reformer_lsh_rows_, variant)
#define ROWS_STRING(x) #x
#define ROWS_NAME(x) ROWS_STRING(x)

namespace {

// Partial sums per row: element j goes to lane j mod LANES (16 floats fill one AVX-512
// register, two AVX2 ones, four SSE ones).
constexpr int64_t LANES = 16;

// exp(x) for x <= 0 (rows are shifted by their maximum), 0 below float's range: the
// classic range reduction x = n·ln 2 + r, |r| <= ln(2)/2, a degree-6 polynomial for
// exp(r) and 2^n built in the exponent bits. Relative error about 1e-7.
inline float exp_nonpositive(float x) {
  const float below_range = -87.0f;
  const float clamped = x < below_range ? below_range : x;
  // Adding 1.5·2^23 rounds to the nearest integer; the integer sits in the low bits.
  const float round_magic = 12582912.0f;
  const float shifted = clamped * 1.44269504088896341f + round_magic;
  const float n = shifted - round_magic;
  int32_t shifted_bits, magic_bits;
  memcpy(&shifted_bits, &shifted, sizeof shifted_bits);
  memcpy(&magic_bits, &round_magic, sizeof magic_bits);
  const int32_t exponent = shifted_bits - magic_bits;  // n, in [-126, 0]
  // r = x − n·ln 2, with ln 2 split in two so that n·ln2_high is exact.
  float r = clamped - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const int32_t scale_bits = (exponent + 127) << 23;  // 2^n
  float scale;
  memcpy(&scale, &scale_bits, sizeof scale);
  return x < below_range ? 0.0f : p * scale;
}

inline double exp_nonpositive(double x) { return x < -745.0 ? 0.0 : exp(x); }

inline float log_of(float x) { return logf(x); }
inline double log_of(double x) { return log(x); }

template <typename T>
T row_max(const T* row, int64_t n) {
  T lanes[LANES];
  for (int64_t l = 0; l < LANES; ++l) lanes[l] = row[0];
  int64_t j = 0;
  for (; j + LANES <= n; j += LANES) {
    for (int64_t l = 0; l < LANES; ++l) lanes[l] = row[j + l] > lanes[l] ? row[j + l] : lanes[l];
  }
  for (; j < n; ++j) lanes[0] = row[j] > lanes[0] ? row[j] : lanes[0];
  T max = lanes[0];
  for (int64_t l = 1; l < LANES; ++l) max = lanes[l] > max ? lanes[l] : max;
  return max;
}

template <typename T>
T lanes_total(const T* lanes) {
  T total = 0;
  for (int64_t l = 0; l < LANES; ++l) total += lanes[l];
  return total;
}

template <typename T>
void softmax(T* logits, int64_t rows, int64_t width, T* lse) {
  for (int64_t i = 0; i < rows; ++i) {
    T* row = logits + i * width;
    const T max = row_max(row, width);
    T sums[LANES] = {};
    int64_t j = 0;
    for (; j + LANES <= width; j += LANES) {
      for (int64_t l = 0; l < LANES; ++l) {
        const T e = exp_nonpositive(row[j + l] - max);
        row[j + l] = e;
        sums[l] += e;
      }
    }
    for (; j < width; ++j) sums[j % LANES] += (row[j] = exp_nonpositive(row[j] - max));
    const T sum = lanes_total(sums);
    const T inverse = T(1) / sum;
    for (j = 0; j < width; ++j) row[j] *= inverse;
    lse[i] = max + log_of(sum);
  }
}

template <typename T>
void softmax_backward(const T* probs, T* d_probs, const uint8_t* kinds, const T* d_lse, int64_t rows,
                      int64_t width) {
  for (int64_t i = 0; i < rows; ++i) {
    const T* p = probs + i * width;
    T* dp = d_probs + i * width;
    const uint8_t* kind = kinds + i * width;
    T sums[LANES] = {};  // Σ_j p·dp, the output row's dot with its gradient
    int64_t j = 0;
    for (; j + LANES <= width; j += LANES) {
      for (int64_t l = 0; l < LANES; ++l) sums[l] += p[j + l] * dp[j + l];
    }
    for (; j < width; ++j) sums[j % LANES] += p[j] * dp[j];
    const T dot = lanes_total(sums);
    const T row_d_lse = d_lse ? d_lse[i] : T(0);
    for (j = 0; j < width; ++j) dp[j] = kind[j] == LSH_LOGIT_VISIBLE ? p[j] * ((dp[j] - dot) + row_d_lse) : T(0);
  }
}

template <typename T>
void scatter_add(T* dst, const int64_t* positions, const T* src, int64_t rows, int64_t width) {
  for (int64_t i = 0; i < rows; ++i) {
    if (positions[i] < 0) continue;
    T* out = dst + positions[i] * width;
    const T* in = src + i * width;
    for (int64_t d = 0; d < width; ++d) out[d] += in[d];
  }
}

const LshRowKernels kernels = {
    ROWS_NAME(ROWS_VARIANT),
    softmax<float>,
    softmax<double>,
    softmax_backward<float>,
    softmax_backward<double>,
    scatter_add<float>,
    scatter_add<double>,
};

}  // namespace

extern "C" const LshRowKernels* ROWS_ENTRY(ROWS_VARIANT)(void) { return &kernels; }
