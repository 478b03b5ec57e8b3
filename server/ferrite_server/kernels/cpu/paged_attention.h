// One-query attention over the paged KV cache: each decode token's heads attend over its own
// sequence's context, read block by block through its block table.
//
// Layout (layers/attention/backend.py): cache [num_blocks, block_size, num_kv_heads, head_dim]
// bf16; position p of a sequence lives in block blocks[p / block_size] at offset
// p % block_size. Scores, softmax and the weighted sum of values are float32 (SDPA's kernel sums
// in another order; e^x is vector_math.h's, within 3 ulp), the result rounded to bf16. Each (token, head) task is computed by one
// thread, so the bits do not depend on the thread count.

#pragma once

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "vector_math.h"

namespace ferrite_attention {

using bf16 = c10::BFloat16;

// Multiply-adds one task (one query head of one sequence) should have before the tasks are
// spread over threads: below it a parallel region costs more than it saves.
constexpr int64_t kMinParallelWork = 16384;

struct AttentionShape {
  int64_t num_heads;
  int64_t num_kv_heads;
  int64_t head_dim;
  float scale;
};

inline float dot(const float* q, const bf16* k, int64_t n) {
  int64_t i = 0;
  float sum = 0.f;
#if defined(__AVX512F__)
  __m512 acc = _mm512_setzero_ps();
  for (; i + 16 <= n; i += 16)
    acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), ferrite_vector::load_as_float(k + i), acc);
  sum = _mm512_reduce_add_ps(acc);
#endif
  for (; i < n; ++i) sum += q[i] * static_cast<float>(k[i]);
  return sum;
}

// acc[0..n) += weight * v[0..n).
inline void add_scaled(float* acc, float weight, const bf16* v, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  const __m512 w = _mm512_set1_ps(weight);
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(acc + i, _mm512_fmadd_ps(w, ferrite_vector::load_as_float(v + i),
                                              _mm512_loadu_ps(acc + i)));
#endif
  for (; i < n; ++i) acc[i] += weight * static_cast<float>(v[i]);
}

// scores[t] <- e^(scores[t] - max) for t < n; returns their sum.
inline float exponentiate(float* scores, int64_t n, float max) {
  int64_t t = 0;
  float total = 0.f;
#if defined(__AVX512F__)
  const __m512 shift = _mm512_set1_ps(max);
  __m512 sums = _mm512_setzero_ps();
  for (; t + 16 <= n; t += 16) {
    const __m512 e = ferrite_vector::exp(_mm512_sub_ps(_mm512_loadu_ps(scores + t), shift));
    _mm512_storeu_ps(scores + t, e);
    sums = _mm512_add_ps(sums, e);
  }
  total = _mm512_reduce_add_ps(sums);
#endif
  for (; t < n; ++t) {
    scores[t] = std::exp(scores[t] - max);
    total += scores[t];
  }
  return total;
}

// One sequence's context in the paged cache.
struct PagedContext {
  const bf16* key_cache;
  const bf16* value_cache;
  const int32_t* blocks;  // this sequence's block table
  int64_t length;  // keys in the context
  int64_t block_size;
  int64_t token_stride;  // elements between consecutive slots (num_kv_heads * head_dim)

  // visit(position, offset of that position's `kv_head` in the caches) for every position in
  // order, block by block (no division per position).
  template <typename Visit>
  void for_each_position(int64_t kv_head, int64_t head_dim, const Visit& visit) const {
    for (int64_t start = 0; start < length; start += block_size) {
      const int64_t first_slot = static_cast<int64_t>(blocks[start / block_size]) * block_size;
      const int64_t count = std::min(block_size, length - start);
      for (int64_t i = 0; i < count; ++i)
        visit(start + i, (first_slot + i) * token_stride + kv_head * head_dim);
    }
  }
};

// Asks for the `bytes` at `p` to be brought into cache ahead of their use. Why: between two
// layers' attention the weight products stream megabytes through the caches, so a context's
// keys and values come from memory, and a dot product that waits on each position's load in
// turn (one query head's walk) left attention latency-bound.
inline void prefetch(const void* p, int64_t bytes) {
  const char* start = static_cast<const char*>(p);
  for (int64_t line = 0; line < bytes; line += 64) __builtin_prefetch(start + line);
}

// Working memory of one thread's attention tasks, allocated once per parallel chunk.
struct Scratch {
  Scratch(int64_t head_dim, int64_t longest) : q(head_dim), acc(head_dim), scores(longest) {}
  std::vector<float> q, acc, scores;
};

// softmax(q K^T * scale) V for one query head over one sequence's context.
inline void attend_head(const bf16* query, const PagedContext& context, int64_t kv_head,
                        const AttentionShape& shape, Scratch& scratch, bf16* out) {
  const int64_t d = shape.head_dim;
  float* q = scratch.q.data();
  float* acc = scratch.acc.data();
  float* scores = scratch.scores.data();
  for (int64_t i = 0; i < d; ++i) q[i] = static_cast<float>(query[i]) * shape.scale;
  std::fill(acc, acc + d, 0.f);
  float max_score = -std::numeric_limits<float>::infinity();
  // Keys and values asked for at once: the values arrive while the scores are computed (0.1-0.2
  // ms a token faster than asking for the values after the scores, bench/RESULTS.md).
  const int64_t row_bytes = d * static_cast<int64_t>(sizeof(bf16));
  context.for_each_position(kv_head, d, [&](int64_t, int64_t offset) {
    prefetch(context.key_cache + offset, row_bytes);
    prefetch(context.value_cache + offset, row_bytes);
  });
  context.for_each_position(kv_head, d, [&](int64_t t, int64_t offset) {
    scores[t] = dot(q, context.key_cache + offset, d);
    max_score = std::max(max_score, scores[t]);
  });
  const float total = exponentiate(scores, context.length, max_score);
  context.for_each_position(kv_head, d, [&](int64_t t, int64_t offset) {
    add_scaled(acc, scores[t], context.value_cache + offset, d);
  });
  for (int64_t i = 0; i < d; ++i) out[i] = bf16(acc[i] / total);
}

// Every head of `rows` decode tokens: queries at `queries` (row r, head h at
// r * query_stride + h * head_dim), results into `out` [rows, num_heads * head_dim]; row r is
// sequence r (its context length lens[r], its block table tables[r * table_stride ...]).
inline void attend_decodes(const bf16* queries, int64_t query_stride, int64_t rows,
                           const bf16* key_cache, const bf16* value_cache, int64_t block_size,
                           const int32_t* tables, int64_t table_stride, const int32_t* lens,
                           const AttentionShape& shape, bf16* out) {
  const int64_t d = shape.head_dim, kv_size = shape.num_kv_heads * d;
  const int64_t q_size = shape.num_heads * d;
  const int64_t group = shape.num_heads / shape.num_kv_heads;
  const int64_t longest = *std::max_element(lens, lens + rows);
  const int64_t grain = std::max<int64_t>(1, kMinParallelWork / (2 * longest * d));
  at::parallel_for(0, rows * shape.num_heads, grain, [&](int64_t begin, int64_t end) {
    Scratch scratch(d, longest);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r = task / shape.num_heads, h = task % shape.num_heads;
      const PagedContext context{key_cache, value_cache, tables + r * table_stride, lens[r],
                                 block_size, kv_size};
      attend_head(queries + r * query_stride + h * d, context, h / group, shape, scratch,
                  out + r * q_size + h * d);
    }
  });
}

}  // namespace ferrite_attention
