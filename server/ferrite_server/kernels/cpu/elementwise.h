// The elementwise parts of a decoder layer, one row at a time: RMSNorm, RoPE, SiLU * up and
// the residual add.
//
// Numerics follow the Python layers' bfloat16 expressions, rounding to bf16 where they do
// (RMSNorm: float32 statistics, normalized value rounded, then times the weight; RoPE:
// x * cos and rotate_half(x) * sin each rounded, then their sum; silu(gate) rounded, then
// times up; residual: the bf16 sum rounded once).
//
// Why vectorized: each runs on one thread between two weight products while the other threads
// wait for the next product, so their time is the whole machine's. Every loop has an AVX-512
// body over 16 elements and a scalar rest (all of it on other CPUs), which give the same bits,
// except SiLU's e^x (vector_math.h's, within 3 ulp of std::exp) and the order of the RMSNorm
// sum of squares.

#pragma once

#include <c10/util/BFloat16.h>

#include <cmath>
#include <cstdint>

#include "vector_math.h"

namespace ferrite_elementwise {

using bf16 = c10::BFloat16;

inline float to_float(bf16 x) { return static_cast<float>(x); }
inline float rounded(float x) { return static_cast<float>(bf16(x)); }  // through bf16

inline float sum_of_squares(const bf16* x, int64_t n) {
  int64_t i = 0;
  float sum = 0.f;
#if defined(__AVX512F__)
  __m512 acc = _mm512_setzero_ps();
  for (; i + 16 <= n; i += 16) {
    const __m512 v = ferrite_vector::load_as_float(x + i);
    acc = _mm512_fmadd_ps(v, v, acc);
  }
  sum = _mm512_reduce_add_ps(acc);
#endif
  for (; i < n; ++i) sum += to_float(x[i]) * to_float(x[i]);
  return sum;
}

// out = weight * bf16(x * rsqrt(mean(x^2) + eps)), one row of `hidden` features.
inline void rms_norm_row(const bf16* x, const bf16* weight, bf16* out, int64_t hidden, float eps) {
  const float inverse_rms = 1.f / std::sqrt(sum_of_squares(x, hidden) / hidden + eps);
  int64_t i = 0;
#if defined(__AVX512F__)
  const __m512 scale = _mm512_set1_ps(inverse_rms);
  for (; i + 16 <= hidden; i += 16) {
    const __m512 normed =
        ferrite_vector::round_to_bf16(_mm512_mul_ps(ferrite_vector::load_as_float(x + i), scale));
    ferrite_vector::store_as_bf16(out + i,
                                  _mm512_mul_ps(ferrite_vector::load_as_float(weight + i), normed));
  }
#endif
  for (; i < hidden; ++i) out[i] = bf16(to_float(weight[i]) * rounded(to_float(x[i]) * inverse_rms));
}

// sum <- bf16(added + sum) over `count` elements.
inline void add_into(const bf16* added, bf16* sum, int64_t count) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= count; i += 16)
    ferrite_vector::store_as_bf16(sum + i, _mm512_add_ps(ferrite_vector::load_as_float(added + i),
                                                         ferrite_vector::load_as_float(sum + i)));
#endif
  for (; i < count; ++i) sum[i] = bf16(to_float(added[i]) + to_float(sum[i]));
}

// "Rotate half" RoPE of one head in place: x * cos + rotate_half(x) * sin, where
// rotate_half(x) = [-x2, x1] for the halves x1, x2.
inline void rotate_head(bf16* head, int64_t head_dim, const bf16* cos, const bf16* sin) {
  const int64_t half = head_dim / 2;
  int64_t i = 0;
#if defined(__AVX512F__)
  using ferrite_vector::load_as_float;
  using ferrite_vector::round_to_bf16;
  for (; i + 16 <= half; i += 16) {
    const __m512 first = load_as_float(head + i), second = load_as_float(head + i + half);
    const __m512 first_out = _mm512_add_ps(
        round_to_bf16(_mm512_mul_ps(first, load_as_float(cos + i))),
        round_to_bf16(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), second), load_as_float(sin + i))));
    const __m512 second_out =
        _mm512_add_ps(round_to_bf16(_mm512_mul_ps(second, load_as_float(cos + i + half))),
                      round_to_bf16(_mm512_mul_ps(first, load_as_float(sin + i + half))));
    ferrite_vector::store_as_bf16(head + i, first_out);
    ferrite_vector::store_as_bf16(head + i + half, second_out);
  }
#endif
  for (; i < half; ++i) {
    const float first = to_float(head[i]), second = to_float(head[i + half]);
    head[i] = bf16(rounded(first * to_float(cos[i])) + rounded(-second * to_float(sin[i])));
    head[i + half] =
        bf16(rounded(second * to_float(cos[i + half])) + rounded(first * to_float(sin[i + half])));
  }
}

// out = bf16(bf16(silu(gate)) * up) over `inner` features, silu(g) = g / (1 + e^-g).
inline void silu_and_mul_row(const bf16* gate, const bf16* up, bf16* out, int64_t inner) {
  int64_t i = 0;
#if defined(__AVX512F__)
  const __m512 one = _mm512_set1_ps(1.f);
  for (; i + 16 <= inner; i += 16) {
    const __m512 g = ferrite_vector::load_as_float(gate + i);
    const __m512 e = ferrite_vector::exp(_mm512_sub_ps(_mm512_setzero_ps(), g));
    const __m512 activated = ferrite_vector::round_to_bf16(_mm512_div_ps(g, _mm512_add_ps(one, e)));
    ferrite_vector::store_as_bf16(out + i,
                                  _mm512_mul_ps(activated, ferrite_vector::load_as_float(up + i)));
  }
#endif
  for (; i < inner; ++i) {
    const float g = to_float(gate[i]);
    out[i] = bf16(rounded(g / (1.f + std::exp(-g))) * to_float(up[i]));
  }
}

}  // namespace ferrite_elementwise
