// int4 weight products for a few rows (decode steps) on the integer dot-product instruction.
//
// The weights stay in aten's CPU int4 layout (weight_gemv.h describes it): per block of 64
// output rows and input feature k, 32 bytes, byte j holding row j's code (low nibble) and row
// j + 32's (high nibble). vpdpbusd wants each 32-bit lane to hold four features of one row, so
// every four features are transposed in registers (two byte and two word interleaves and two
// lane shuffles per 32 rows); the lanes then hold rows in the order kLaneRows* below, which the
// scales follow and the output undoes. Activations are quantized to int8 per block of 32
// features (as llama.cpp's Q8 activations); codes are unsigned (0..15), activations signed,
// exactly vpdpbusd's operands.
//
// weight_gemv.h's float loop spends ~19 instructions per 64 weights and is compute-bound on
// both cores of the reference machine; this loop spends ~6 (bench/RESULTS.md).

#pragma once

#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__)

#include <c10/util/BFloat16.h>
#include <immintrin.h>

#include <cstdint>
#include <vector>

#include "activation_blocks.h"
#include "parallel_chunks.h"
#include "weight_gemv.h"

namespace ferrite_gemv {

using bf16 = c10::BFloat16;

// The rows in the lanes of the two transposed vectors of 32 rows (add 32 for the high nibbles).
// They double as vpermt2d indices picking 16 rows' words out of two natural 16-row vectors.
alignas(64) constexpr int32_t kLaneRowsE[16] = {0, 1, 2, 3, 16, 17, 18, 19,
                                                8, 9, 10, 11, 24, 25, 26, 27};
alignas(64) constexpr int32_t kLaneRowsF[16] = {4, 5, 6, 7, 20, 21, 22, 23,
                                                12, 13, 14, 15, 28, 29, 30, 31};

// Rows of activations in the form the loop reads: per four features one 32-bit word of their
// int8 codes in the transposed lanes' byte order (features 0, 2, 1, 3); a scale per block of 32
// features; the sum of every weight group's quantized activations (the zero points multiply it).
struct Int4Activations {
  Int4Activations(const bf16* x, int64_t rows, int64_t k, int64_t group)
      : k(k), group(group), quads(rows * k / 4), block_scales(rows * k / kActivationBlock),
        group_sums(rows * k / group, 0.f) {
    // Within each 32-bit word, features 0, 2, 1, 3 (the transposed lanes' byte order).
    const __m256i word_order = _mm256_setr_epi8(0, 2, 1, 3, 4, 6, 5, 7, 8, 10, 9, 11, 12, 14, 13, 15,
                                                0, 2, 1, 3, 4, 6, 5, 7, 8, 10, 9, 11, 12, 14, 13, 15);
    for (int64_t block = 0; block < rows * k / kActivationBlock; ++block) {
      const QuantizedBlock quantized = quantize_block(x + block * kActivationBlock);
      block_scales[block] = quantized.scale;
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(quads.data() + block * kActivationBlock / 4),
                          _mm256_shuffle_epi8(quantized.codes, word_order));
      const int32_t code_sum =
          _mm512_reduce_add_epi32(_mm512_add_epi32(quantized.codes_low, quantized.codes_high));
      // The quantized activations' sum, not the exact one: then both terms of
      // W x = scale (q . x) + (zero - 8 scale) sum(x) see the same activations, and the error is
      // W times the activations' rounding. With the exact sum, q . x (codes average ~7.5)
      // would carry ~7.5 scale sum(rounding) that nothing cancels (twice the error, measured).
      group_sums[block * kActivationBlock / group] += block_scales[block] * code_sum;
    }
  }

  int64_t k, group;
  std::vector<int32_t> quads;  // [rows, K / 4]
  std::vector<float> block_scales;  // [rows, K / 32]
  std::vector<float> group_sums;  // [rows, K / G], of the quantized activations
};

// Four features of 32 rows (one nibble half of two 64-byte loads) -> two vectors whose 32-bit
// lanes hold those features of one row each (rows kLaneRowsE / kLaneRowsF).
inline void transpose_quads(__m512i features01, __m512i features23, __m512i& e, __m512i& f) {
  const __m512i low = _mm512_unpacklo_epi8(features01, features23);  // pairs (k0, k2)
  const __m512i high = _mm512_unpackhi_epi8(features01, features23);
  const __m512i even = _mm512_shuffle_i64x2(low, high, _MM_SHUFFLE(1, 0, 1, 0));  // (k0, k2)
  const __m512i odd = _mm512_shuffle_i64x2(low, high, _MM_SHUFFLE(3, 2, 3, 2));  // (k1, k3)
  e = _mm512_unpacklo_epi16(even, odd);
  f = _mm512_unpackhi_epi16(even, odd);
}

// out[0..63] = one block of 64 rows times activation row m (scale_zero: aten's words, row
// stride n; W = (q - 8) scale + zero).
inline void int4_block_dot_vnni(const uint8_t* codes, const uint32_t* scale_zero, int64_t n,
                                const Int4Activations& x, int64_t m, float* out) {
  const int64_t k = x.k, group = x.group;
  const int32_t* quads = x.quads.data() + m * k / 4;
  const float* block_scales = x.block_scales.data() + m * k / kActivationBlock;
  const float* group_sums = x.group_sums.data() + m * k / group;
  const __m512i nibble = _mm512_set1_epi8(0x0F);
  const __m512i rows_e = _mm512_load_si512(kLaneRowsE), rows_f = _mm512_load_si512(kLaneRowsF);
  __m512 total[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                     _mm512_setzero_ps()};
  for (int64_t g = 0; g < k / group; ++g) {
    __m512 grouped[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                         _mm512_setzero_ps()};
    for (int64_t start = g * group; start < (g + 1) * group; start += kActivationBlock) {
      __m512i acc[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(),
                        _mm512_setzero_si512()};
      for (int64_t i = start; i < start + kActivationBlock; i += 4) {
        const __m512i raw01 = _mm512_loadu_si512(codes + i * 32);
        const __m512i raw23 = _mm512_loadu_si512(codes + i * 32 + 64);
        __m512i t[4];
        transpose_quads(_mm512_and_si512(raw01, nibble), _mm512_and_si512(raw23, nibble), t[0],
                        t[1]);
        transpose_quads(_mm512_and_si512(_mm512_srli_epi16(raw01, 4), nibble),
                        _mm512_and_si512(_mm512_srli_epi16(raw23, 4), nibble), t[2], t[3]);
        const __m512i activation = _mm512_set1_epi32(quads[i / 4]);
        for (int q = 0; q < 4; ++q) acc[q] = _mm512_dpbusd_epi32(acc[q], t[q], activation);
      }
      const __m512 scale_x = _mm512_set1_ps(block_scales[start / kActivationBlock]);
      for (int q = 0; q < 4; ++q)
        grouped[q] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[q]), scale_x, grouped[q]);
    }
    const uint32_t* words = scale_zero + g * n;
    const __m512i natural[4] = {_mm512_loadu_si512(words), _mm512_loadu_si512(words + 16),
                                _mm512_loadu_si512(words + 32), _mm512_loadu_si512(words + 48)};
    const __m512i lanes[4] = {_mm512_permutex2var_epi32(natural[0], rows_e, natural[1]),
                              _mm512_permutex2var_epi32(natural[0], rows_f, natural[1]),
                              _mm512_permutex2var_epi32(natural[2], rows_e, natural[3]),
                              _mm512_permutex2var_epi32(natural[2], rows_f, natural[3])};
    const __m512 sum_x = _mm512_set1_ps(group_sums[g]);
    for (int q = 0; q < 4; ++q) total[q] = add_group_terms(total[q], lanes[q], grouped[q], sum_x);
  }
  alignas(64) float lanes_out[4][16];
  for (int q = 0; q < 4; ++q) _mm512_store_ps(lanes_out[q], total[q]);
  for (int l = 0; l < 16; ++l) {
    out[kLaneRowsE[l]] = lanes_out[0][l];
    out[kLaneRowsF[l]] = lanes_out[1][l];
    out[32 + kLaneRowsE[l]] = lanes_out[2][l];
    out[32 + kLaneRowsF[l]] = lanes_out[3][l];
  }
}

// y [M, N] (bf16) = x [M, K] (bf16) W^T for int4 W in aten's layout (N a multiple of 64, the
// group size a multiple of 32).
inline void int4_gemv_vnni(const bf16* x, int64_t rows, int64_t k, const uint8_t* codes,
                           const bf16* scales_and_zeros, int64_t n, int64_t group, bf16* y) {
  const Int4Activations activations(x, rows, k, group);
  const auto* words = reinterpret_cast<const uint32_t*>(scales_and_zeros);
  parallel_chunks(n / kInt4BlockRows, 1, [&](int64_t begin, int64_t end) {
    alignas(64) float out[kInt4BlockRows];
    for (int64_t block = begin; block < end; ++block) {
      const uint8_t* block_codes = codes + block * k * (kInt4BlockRows / 2);
      const int64_t first = block * kInt4BlockRows;
      for (int64_t m = 0; m < rows; ++m) {  // the block stays in L1 / L2 across the m rows
        int4_block_dot_vnni(block_codes, words + first, n, activations, m, out);
        for (int64_t j = 0; j < kInt4BlockRows; ++j) y[m * n + first + j] = bf16(out[j]);
      }
    }
  });
}

}  // namespace ferrite_gemv

#endif
