// A parallel loop over the output rows of a weight product that tolerates a descheduled thread.

#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>

namespace ferrite_gemv {

// Output rows per chunk of a matrix-vector product: enough work per chunk (~64 x K
// multiply-adds) that handing it to another thread pays.
constexpr int64_t kRowsPerTask = 64;

// Runs body(begin, end) over [0, n) in chunks of `chunk` rows. Each thread owns a contiguous
// share and walks it from its start; a thread done with its share takes the next chunks of the
// others'. On a shared machine (the router, the client, another process) a thread is often
// descheduled mid-product: with a static split (at::parallel_for's) the others then wait for it
// at the product's end, here they do its rest.
template <typename Body>
inline void parallel_chunks(int64_t n, int64_t chunk, const Body& body) {
  const int64_t num_chunks = (n + chunk - 1) / chunk;
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), num_chunks);
  if (threads <= 1 || at::in_parallel_region()) {
    body(0, n);
    return;
  }
  struct alignas(64) Share {  // a cache line each: owners do not contend until they steal
    std::atomic<int64_t> next_chunk;
    int64_t end_chunk;
  };
  std::unique_ptr<Share[]> shares(new Share[threads]);
  for (int64_t t = 0; t < threads; ++t) {
    shares[t].next_chunk.store(t * num_chunks / threads, std::memory_order_relaxed);
    shares[t].end_chunk = (t + 1) * num_chunks / threads;
  }
  at::parallel_for(0, threads, 1, [&](int64_t first, int64_t last) {
    for (int64_t self = first; self < last; ++self)
      for (int64_t offset = 0; offset < threads; ++offset) {  // its own share first
        Share& share = shares[(self + offset) % threads];
        for (int64_t c = share.next_chunk.fetch_add(1, std::memory_order_relaxed);
             c < share.end_chunk; c = share.next_chunk.fetch_add(1, std::memory_order_relaxed))
          body(c * chunk, std::min(n, (c + 1) * chunk));
      }
  });
}

}  // namespace ferrite_gemv
