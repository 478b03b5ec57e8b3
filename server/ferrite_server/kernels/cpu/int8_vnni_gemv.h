// Weight products of int8 codes for a few rows (decode steps) on the integer dot-product
// instruction: vpdpbusd sums 64 byte products four at a time into 16 int32 lanes, as llama.cpp's
// Q8_0 products run. weight_gemv.h's float loop widens every weight to float32 first (~4
// instructions per 16 weights) and is compute-bound on one core of the reference machine;
// this loop takes about half of them (bench/RESULTS.md).
//
// Activations are quantized per block of 32 features (scale = the block's largest magnitude /
// 127, as Q8_0's), so a row of K features costs K/32 scales. vpdpbusd multiplies unsigned by
// signed bytes: the activation's magnitude is the unsigned side, and its sign moves onto the
// weight (a masked negation), which is exact because codes lie in [-127, 127].
//
// Numerics: the activation quantization adds an error of ~0.5% of a product's magnitude (as
// Q8_0's); decode quality is measured by bench/native_decode_quality.py. Compiled where the CPU
// has AVX-512 VNNI (-march=native); weight_gemv.h's float loop runs elsewhere.

#pragma once

#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__)

#include <c10/util/BFloat16.h>
#include <immintrin.h>

#include <cstdint>
#include <vector>

#include "activation_blocks.h"
#include "parallel_chunks.h"

namespace ferrite_gemv {

using bf16 = c10::BFloat16;

constexpr int64_t kVnniBlock = 64;  // features per instruction

struct Int8Activations {  // rows of activations in the form the dot loop reads
  Int8Activations(const bf16* x, int64_t rows, int64_t k)
      : k(k), magnitudes(rows * k), negative(rows * k / kVnniBlock), lane_scales(rows * k / 4) {
    for (int64_t block = 0; block < rows * k / kActivationBlock; ++block) {
      const int64_t at = block * kActivationBlock;
      const QuantizedBlock quantized = quantize_block(x + at);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(magnitudes.data() + at),
                          _mm256_abs_epi8(quantized.codes));
      const uint32_t signs = _mm256_movepi8_mask(quantized.codes);
      negative[at / kVnniBlock] |= static_cast<uint64_t>(signs) << (at % kVnniBlock);
      // The dot product's 32-bit lane j sums features 4j..4j+3, all inside one block.
      _mm256_storeu_ps(lane_scales.data() + at / 4, _mm256_set1_ps(quantized.scale));
    }
  }

  // dot(W row, activation row m), in units of the weight codes.
  float dot(const int8_t* w, int64_t m) const {
    const uint8_t* mag = magnitudes.data() + m * k;
    const uint64_t* signs = negative.data() + m * k / kVnniBlock;
    const float* scales = lane_scales.data() + m * k / 4;
    const __m512i zero = _mm512_setzero_si512();
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int64_t i = 0;
    // acc + the 64 features at `at`, as 16 float lanes (each lane's int32 sum times its scale)
    auto add_block = [&](__m512 acc, int64_t at) {
      const __m512i codes = _mm512_loadu_si512(w + at);
      const __m512i signed_codes = _mm512_mask_sub_epi8(codes, signs[at / kVnniBlock], zero, codes);
      const __m512i sums = _mm512_dpbusd_epi32(zero, _mm512_loadu_si512(mag + at), signed_codes);
      return _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), _mm512_loadu_ps(scales + at / 4), acc);
    };
    for (; i + 2 * kVnniBlock <= k; i += 2 * kVnniBlock) {
      acc0 = add_block(acc0, i);
      acc1 = add_block(acc1, i + kVnniBlock);
    }
    if (i < k) acc0 = add_block(acc0, i);
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
  }

  int64_t k;
  std::vector<uint8_t> magnitudes;  // |code| [rows, K]
  std::vector<uint64_t> negative;  // bit i of word j: feature 64 j + i is negative
  std::vector<float> lane_scales;  // [rows, K / 4]: the scale of each 32-bit lane's block
};

// y [M, N] (bf16) = x [M, K] (bf16) W^T for int8 codes W [N, K] with `row_scales` [N],
// K a multiple of 64.
inline void int8_gemv_vnni(const bf16* x, int64_t rows, int64_t k, const int8_t* w,
                           const bf16* row_scales, int64_t n, bf16* y) {
  const Int8Activations activations(x, rows, k);
  parallel_chunks(n, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const float scale = static_cast<float>(row_scales[row]);
      for (int64_t m = 0; m < rows; ++m)
        y[m * n + row] = bf16(activations.dot(w + row * k, m) * scale);
    }
  });
}

}  // namespace ferrite_gemv

#endif
