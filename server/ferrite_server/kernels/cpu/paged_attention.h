// One-query attention over the paged KV cache: each decode token's heads attend over its own
// sequence's context, read block by block through its block table.
//
// Layout (layers/attention/backend.py): cache [num_blocks, block_size, num_kv_heads, head_dim]
// bf16; position p of a sequence lives in block blocks[p / block_size] at offset
// p % block_size. Scores, softmax and the weighted sum of values are float32 (SDPA's kernel sums
// in another order), the result rounded to bf16. Each (token, head) task is computed by one
// thread, so the bits do not depend on the thread count.

#pragma once

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace ferrite_attention {

using bf16 = c10::BFloat16;

// Lanes of the float32 partial sums of a dot product (independent accumulators the compiler
// maps onto vector registers).
constexpr int64_t kLanes = 16;
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
  float lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int64_t j = 0; j < kLanes; ++j) lanes[j] += q[i + j] * static_cast<float>(k[i + j]);
  float sum = 0.f;
  for (; i < n; ++i) sum += q[i] * static_cast<float>(k[i]);
  for (float lane : lanes) sum += lane;
  return sum;
}

// One sequence's context in the paged cache.
struct PagedContext {
  const bf16* key_cache;
  const bf16* value_cache;
  const int32_t* blocks;  // this sequence's block table
  int64_t length;  // keys in the context
  int64_t block_size;
  int64_t token_stride;  // elements between consecutive slots (num_kv_heads * head_dim)

  int64_t offset(int64_t position, int64_t kv_head, int64_t head_dim) const {
    const int64_t slot = static_cast<int64_t>(blocks[position / block_size]) * block_size +
                         position % block_size;
    return slot * token_stride + kv_head * head_dim;
  }
};

// softmax(q K^T * scale) V for one query head over one sequence's context.
inline void attend_head(const bf16* query, const PagedContext& context, int64_t kv_head,
                        const AttentionShape& shape, bf16* out) {
  const int64_t d = shape.head_dim;
  std::vector<float> q(d), acc(d, 0.f), scores(context.length);
  for (int64_t i = 0; i < d; ++i) q[i] = static_cast<float>(query[i]);
  float max_score = -std::numeric_limits<float>::infinity();
  for (int64_t t = 0; t < context.length; ++t) {
    scores[t] = dot(q.data(), context.key_cache + context.offset(t, kv_head, d), d) * shape.scale;
    max_score = std::max(max_score, scores[t]);
  }
  float total = 0.f;
  for (int64_t t = 0; t < context.length; ++t) {
    scores[t] = std::exp(scores[t] - max_score);
    total += scores[t];
  }
  for (int64_t t = 0; t < context.length; ++t) {
    const bf16* value = context.value_cache + context.offset(t, kv_head, d);
    const float weight = scores[t];
    for (int64_t i = 0; i < d; ++i) acc[i] += weight * static_cast<float>(value[i]);
  }
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
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r = task / shape.num_heads, h = task % shape.num_heads;
      const PagedContext context{key_cache, value_cache, tables + r * table_stride, lens[r],
                                 block_size, kv_size};
      attend_head(queries + r * query_stride + h * d, context, h / group, shape,
                  out + r * q_size + h * d);
    }
  });
}

}  // namespace ferrite_attention
