// Activations quantized to int8 per block of 32 features, for the integer dot-product loops
// (int8_vnni_gemv.h, int4_vnni_gemv.h): scale = the block's largest magnitude / 127, code =
// x * (127 / largest) rounded to nearest even (as llama.cpp's Q8 activations).
//
// Vectorized because it runs on one thread before every product, while the other threads wait:
// the scalar loop took ~2.5 ns per feature, ~0.25 ms of a batch-1 token of the bundled model.

#pragma once

#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__)

#include <c10/util/BFloat16.h>
#include <immintrin.h>

#include <cstdint>

#include "weight_gemv.h"

namespace ferrite_gemv {

constexpr int64_t kActivationBlock = 32;  // features per activation scale

struct QuantizedBlock {
  __m256i codes;  // 32 int8 codes, in the features' order
  __m512i codes_low, codes_high;  // the same codes as int32, features 0-15 and 16-31
  float scale;
};

inline QuantizedBlock quantize_block(const c10::BFloat16* in) {
  const __m512 low = load_as_float(in), high = load_as_float(in + 16);
  const float largest =
      _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(low), _mm512_abs_ps(high)));
  const __m512 inverse = _mm512_set1_ps(largest > 0.f ? 127.f / largest : 0.f);
  // The default rounding mode (nearest even); |x| * 127 / largest rounds to at most 127.
  const __m512i codes_low = _mm512_cvtps_epi32(_mm512_mul_ps(low, inverse));
  const __m512i codes_high = _mm512_cvtps_epi32(_mm512_mul_ps(high, inverse));
  const __m256i codes = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm512_cvtsepi32_epi8(codes_low)),
                                                 _mm512_cvtsepi32_epi8(codes_high), 1);
  return {codes, codes_low, codes_high, largest / 127.f};
}

}  // namespace ferrite_gemv

#endif
