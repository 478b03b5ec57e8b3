// Weight products for a few rows (decode steps): y = x W^T, W read once from memory.
//
// Why not aten's kernels: at one to four rows a product is a matrix-vector product whose time is
// reading W, and aten's bf16 `linear`, `_weight_int8pack_mm` and `_weight_int4pack_mm_for_cpu`
// read it at ~6-9 GB/s per core on this project's AVX-512 machine (bench/RESULTS.md). These
// loops widen W's elements in registers and multiply-add them in float32, row by row.
//
// Numerics: float32 sums (other order than aten's), result rounded to bfloat16 as aten's are.
// int8 weights carry one scale per output row, applied once to the row's sum (as aten does).

#pragma once

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <cstdint>
#include <vector>

#include "parallel_chunks.h"

#if defined(__AVX512F__)
#include <immintrin.h>

#include "vector_math.h"
#endif

namespace ferrite_gemv {

using bf16 = c10::BFloat16;

// The activations as float32 rows (widened once, read once per weight row).
inline std::vector<float> widen_rows(const bf16* x, int64_t rows, int64_t k) {
  std::vector<float> out(rows * k);
  for (int64_t i = 0; i < rows * k; ++i) out[i] = static_cast<float>(x[i]);
  return out;
}

#if defined(__AVX512F__)
using ferrite_vector::load_as_float;
#endif

inline float weight_value(bf16 w) { return static_cast<float>(w); }
inline float weight_value(int8_t w) { return static_cast<float>(w); }

// dot(W row, x) over k elements: two accumulators, so consecutive multiply-adds do not wait
// on each other (a 4-row variant, which keeps four rows' loads in flight, streamed at a fifth
// of this speed on the reference machine).
template <typename Weight>
inline float dot_row(const Weight* w, const float* x, int64_t k) {
  int64_t i = 0;
  float sum = 0.f;
#if defined(__AVX512F__)
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  for (; i + 32 <= k; i += 32) {
    acc0 = _mm512_fmadd_ps(load_as_float(w + i), _mm512_loadu_ps(x + i), acc0);
    acc1 = _mm512_fmadd_ps(load_as_float(w + i + 16), _mm512_loadu_ps(x + i + 16), acc1);
  }
  for (; i + 16 <= k; i += 16)
    acc0 = _mm512_fmadd_ps(load_as_float(w + i), _mm512_loadu_ps(x + i), acc0);
  sum = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
#endif
  for (; i < k; ++i) sum += weight_value(w[i]) * x[i];
  return sum;
}

// y [M, N] (bf16) = x [M, K] (bf16) W^T, W [N, K] row-major (bf16 or int8 codes); int8 rows are
// scaled by `row_scales` [N] (bf16), bf16 ones not (row_scales null).
template <typename Weight>
void gemv(const bf16* x, int64_t rows, int64_t k, const Weight* w, const bf16* row_scales,
          int64_t n, bf16* y) {
  const std::vector<float> xf = widen_rows(x, rows, k);
  parallel_chunks(n, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const float scale = row_scales ? static_cast<float>(row_scales[row]) : 1.f;
      for (int64_t m = 0; m < rows; ++m)  // the weight row stays in L1 across the m rows
        y[m * n + row] = bf16(dot_row(w + row * k, xf.data() + m * k, k) * scale);
    }
  });
}

// int4 weights in aten's CPU layout (`_convert_weight_to_int4pack_for_cpu` on an AVX-512
// build): output rows in blocks of 64, and for each block and input feature k, 32 bytes whose
// byte j holds the code of row j (low nibble) and of row j + 32 (high nibble). The layout is
// aten's internal choice, so the caller checks it against aten's kernel before using this
// (models/native_decode.py); `scale_zero` is aten's scales_and_zeros [K / G, N, 2] bf16, one
// 32-bit word (scale low, zero high) per group and row: W[n, k] = (q - 8) * scale + zero.
constexpr int64_t kInt4BlockRows = 64;

#if defined(__AVX512F__)
// total + scale * dot + (zero - 8 scale) * sum_x for 16 rows of one group, from their aten words
// (scale in the low half, zero in the high half): W = (q - 8) scale + zero, so W . x is the
// codes' dot product scaled plus the zero term times the group's sum of x.
inline __m512 add_group_terms(__m512 total, __m512i words, __m512 dot, __m512 sum_x) {
  const __m512 scale = _mm512_castsi512_ps(_mm512_slli_epi32(words, 16));
  const __m512 zero = _mm512_castsi512_ps(
      _mm512_and_si512(words, _mm512_set1_epi32(static_cast<int32_t>(0xFFFF0000u))));
  total = _mm512_fmadd_ps(scale, dot, total);
  return _mm512_fmadd_ps(_mm512_fnmadd_ps(_mm512_set1_ps(8.f), scale, zero), sum_x, total);
}

// out[0..63] = the block's rows times x (k features, groups of `group`). Per group, the codes'
// dot product is scaled once, and (zero - 8 scale) multiplies the group's sum of x.
inline void int4_block_dot(const uint8_t* codes, const uint32_t* scale_zero, int64_t n,
                           const float* x, const float* group_sums, int64_t k, int64_t group,
                           float* out) {
  const __m256i low_nibbles = _mm256_set1_epi8(0x0F);
  __m512 total[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                     _mm512_setzero_ps()};
  for (int64_t g = 0; g < k / group; ++g) {
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                     _mm512_setzero_ps()};
    for (int64_t i = g * group; i < (g + 1) * group; ++i) {
      const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + i * 32));
      const __m256i low = _mm256_and_si256(bytes, low_nibbles);
      const __m256i high = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low_nibbles);
      const __m512 xv = _mm512_set1_ps(x[i]);
      const __m128i parts[4] = {_mm256_castsi256_si128(low), _mm256_extracti128_si256(low, 1),
                                _mm256_castsi256_si128(high), _mm256_extracti128_si256(high, 1)};
      for (int q = 0; q < 4; ++q)
        acc[q] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(parts[q])), xv, acc[q]);
    }
    const __m512 sum_x = _mm512_set1_ps(group_sums[g]);
    for (int q = 0; q < 4; ++q)
      total[q] = add_group_terms(total[q], _mm512_loadu_si512(scale_zero + g * n + q * 16), acc[q],
                                 sum_x);
  }
  for (int q = 0; q < 4; ++q) _mm512_storeu_ps(out + q * 16, total[q]);
}

// y [M, N] (bf16) = x [M, K] (bf16) W^T for int4 W in the layout above (N a multiple of 64).
inline void int4_gemv(const bf16* x, int64_t rows, int64_t k, const uint8_t* codes,
                      const bf16* scales_and_zeros, int64_t n, int64_t group, bf16* y) {
  const std::vector<float> xf = widen_rows(x, rows, k);
  std::vector<float> group_sums(rows * (k / group), 0.f);
  for (int64_t m = 0; m < rows; ++m)
    for (int64_t i = 0; i < k; ++i) group_sums[m * (k / group) + i / group] += xf[m * k + i];
  const auto* words = reinterpret_cast<const uint32_t*>(scales_and_zeros);
  parallel_chunks(n / kInt4BlockRows, 1, [&](int64_t begin, int64_t end) {
    float out[kInt4BlockRows];
    for (int64_t block = begin; block < end; ++block) {
      const uint8_t* block_codes = codes + block * k * (kInt4BlockRows / 2);
      const int64_t first = block * kInt4BlockRows;
      for (int64_t m = 0; m < rows; ++m) {  // the block stays in L1 / L2 across the m rows
        int4_block_dot(block_codes, words + first, n, xf.data() + m * k,
                       group_sums.data() + m * (k / group), k, group, out);
        for (int64_t j = 0; j < kInt4BlockRows; ++j) y[m * n + first + j] = bf16(out[j]);
      }
    }
  });
}
#endif

}  // namespace ferrite_gemv
