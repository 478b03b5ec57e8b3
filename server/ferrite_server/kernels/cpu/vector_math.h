// AVX-512 helpers the kernels share: widening loads of bf16 / int8 to float32, and e^x.

#pragma once

#if defined(__AVX512F__)

#include <c10/util/BFloat16.h>
#include <immintrin.h>

#include <cstdint>

namespace ferrite_vector {

// 16 bf16 -> float32 (a bf16 is a float's top half).
inline __m512 load_as_float(const c10::BFloat16* w) {
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

// 16 int8 -> float32.
inline __m512 load_as_float(const int8_t* w) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w));
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(raw));
}

// 16 floats -> their bf16 bits (in 16-bit lanes), rounded to nearest even as
// c10::BFloat16(float) rounds, NaN to its quiet NaN. (Not vcvtneps2bf16: it flushes denormal
// inputs to zero, which the scalar conversion does not.)
inline __m256i to_bf16_bits(__m512 x) {
  const __m512i bits = _mm512_castps_si512(x);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i rounded =
      _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF))), 16);
  rounded = _mm512_mask_mov_epi32(rounded, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q),
                                  _mm512_set1_epi32(0x7FC0));
  return _mm512_cvtepi32_epi16(rounded);
}

// Stores 16 floats as bf16, rounded as c10::BFloat16(float).
inline void store_as_bf16(c10::BFloat16* out, __m512 x) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), to_bf16_bits(x));
}

// float(bf16(x)) for 16 floats: x rounded to bf16 precision, kept as float32.
inline __m512 round_to_bf16(__m512 x) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(to_bf16_bits(x)), 16));
}

// e^x of 16 floats, within 3 ulp of the exact value where e^x is a normal float (2.73 at
// worst over 3e8 inputs from -87 to 88.5 against double precision; checked by
// tests/test_native_vector_math.py). Below that range it falls to a denormal, then 0; above
// ~88.7 it saturates at e^88.7. Why not std::exp: softmax and SiLU take one e^x per element,
// and the scalar call (~5 ns) made them a serial part of every layer.
//
// x = n ln2 + r with n an integer and |r| <= ln2 / 2 (ln2 split in two so n ln2 is exact),
// e^r by its Taylor polynomial to r^6 (truncation error < 1.2e-7 relative), times 2^n.
inline __m512 exp(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.f)), _mm512_set1_ps(88.7f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);  // ln2's top 16 bits
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860682030941723212e-6f), r);  // and the rest
  __m512 p = _mm512_set1_ps(1.f / 720.f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 120.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}

}  // namespace ferrite_vector

#endif
