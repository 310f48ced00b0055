// The two yardsticks that `fusedrnn bench` sets each case beside, both measured on this machine
// with the kernels' threads:
// - the GEMM ceiling: what the kernels' GEMM for their big products (chunk_product.h: BLAS
//   through parallel_gemm.h, or fusedrnn's own kernel where that is faster) reaches on a large
//   square product, packing included;
// - the read bandwidth of a buffer of W_hh's size. A step of a batch of one multiplies one row
//   by all of W_hh, two flops for every four bytes read, so it waits on the memory W_hh lives in
//   (L2, L3 or DRAM, by its size), not on the FMA units. Each thread sums its own share of the
//   buffer again and again, as the steps of a sequence read their share of W_hh at every step.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "chunk_product.h"
#include "fusedrnn/rnn.h"
#include "rnn_common.h"
#include "thread_pool.h"

namespace fusedrnn {
namespace {

// The median of `repeats` timings of run(), in seconds, after one untimed run (the warm-up:
// threads started, buffers allocated, data in its place in the caches).
template <typename F>
double median_seconds(int repeats, const F& run) {
  run();
  std::vector<double> seconds;
  for (int r = 0; r < repeats; ++r) {
    const auto start = std::chrono::steady_clock::now();
    run();
    const auto stop = std::chrono::steady_clock::now();
    seconds.push_back(std::chrono::duration<double>(stop - start).count());
  }
  std::nth_element(seconds.begin(), seconds.begin() + repeats / 2, seconds.end());
  return seconds[repeats / 2];
}

void check_repeats(int repeats) {
  if (repeats < 1 || repeats > 1000)
    detail::fail("repeats: expected 1..1000, got " + std::to_string(repeats));
}

template <typename T>
double median_gflops(int64_t n, int repeats) {
  // Values in [0, 1): no denormals or overflow that could slow the product down.
  std::vector<T> a(n * n), b(n * n), c(n * n);
  for (int64_t i = 0; i < n * n; ++i) {
    a[i] = T((i * 7919) % 1000) / T(1000);
    b[i] = T((i * 104729) % 1000) / T(1000);
  }
  const cpu::ProductShape shape{true, n, 1, n};  // C = A·Bᵀ
  std::vector<T> packing(static_cast<std::size_t>(cpu::ChunkProduct<T>::packing_size(shape)));
  const double seconds = median_seconds(repeats, [&] {
    T* scratch = packing.empty() ? nullptr : packing.data();
    const cpu::ChunkProduct<T> b_t(shape, b.data(), n, scratch);
    b_t(a.data(), n, false, n, c.data(), n, false);
  });
  return 2.0 * double(n) * double(n) * double(n) / seconds / 1e9;
}

// Enough bytes read per timing that the fork-join around it costs under a percent.
constexpr int64_t kMinBytesTimed = int64_t{256} << 20;

// Sixteen-byte vectors where the compiler has them (SSE2 on x86-64, NEON on ARM): integer sums,
// which the compiler may not reorder or drop, eight of them, so that loads, not the adds'
// latency, set the pace. (Thirty-two-byte AVX2 loads read no faster from L3: two Zen 5 cores
// read 16 MB at 140-160 GB/s either way.)
#if defined(__GNUC__)
using Lanes = uint64_t __attribute__((vector_size(16)));
#else
using Lanes = uint64_t;
#endif
constexpr int kSums = 8;

uint64_t sum_passes(const Lanes* begin, int64_t count, int64_t passes) {
  Lanes sums[kSums] = {};
  for (int64_t pass = 0; pass < passes; ++pass) {
    const Lanes* p = begin;
#if defined(__GNUC__)
    asm volatile("" : "+r"(p));  // each pass reads the memory again: nothing carried over
#endif
    for (int64_t i = 0; i + kSums <= count; i += kSums)
      for (int s = 0; s < kSums; ++s) sums[s] += p[i + s];
  }
  uint64_t total = 0;
  for (const Lanes& s : sums) {
    uint64_t lanes[sizeof(Lanes) / sizeof(uint64_t)];
    std::memcpy(lanes, &s, sizeof s);
    for (const uint64_t lane : lanes) total += lane;
  }
  return total;
}

}  // namespace

double gemm_gflops(bool double_precision, int64_t n, int repeats) {
  if (n < 1 || n > 16384) detail::fail("n: expected 1..16384, got " + std::to_string(n));
  check_repeats(repeats);
  return double_precision ? median_gflops<double>(n, repeats) : median_gflops<float>(n, repeats);
}

double read_gbps(int64_t bytes, int repeats) {
  if (bytes < 4096 || bytes > (int64_t{1} << 34))
    detail::fail("bytes: expected 4096..2^34, got " + std::to_string(bytes));
  check_repeats(repeats);
  const int64_t count = bytes / int64_t{sizeof(Lanes)};
  std::vector<Lanes> data(static_cast<std::size_t>(count));
  for (int64_t i = 0; i < count; ++i) data[i] = Lanes{} + uint64_t(i);
  const int64_t threads = cpu::pool_threads();
  // Shares on whole groups of kSums vectors (a cache line's multiple), one a thread.
  const auto share_start = [&](int64_t t) { return count / kSums * t / threads * kSums; };
  const int64_t passes = std::max<int64_t>(1, kMinBytesTimed / bytes);
  std::vector<uint64_t> sinks(static_cast<std::size_t>(threads));
  // The warm-up is as long as a timing: in a new process the first reads of a small buffer ran
  // on the calling thread alone, at half the rate, while the pool's threads started.
  const double seconds = median_seconds(repeats, [&] {
    cpu::parallel_for(threads, [&](int64_t t) {
      sinks[t] = sum_passes(data.data() + share_start(t), share_start(t + 1) - share_start(t),
                            passes);
    });
  });
  return double(share_start(threads)) * sizeof(Lanes) * double(passes) / seconds / 1e9;
}

}  // namespace fusedrnn
