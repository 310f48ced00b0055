// The yardsticks that `fusedrnn bench` sets each case beside, the first two measured on this
// machine with the kernels' threads:
// - the GEMM ceiling: what the kernels' GEMM for their big products (chunk_product.h: BLAS
//   through parallel_gemm.h, or fusedrnn's own kernel where that is faster) reaches on a large
//   square product, packing included;
// - the read bandwidth of a buffer of W_hh's size. A step of a batch of one multiplies one row
//   by all of W_hh, two flops for every four bytes read, so it waits on the memory W_hh lives in
//   (L2, L3 or DRAM, by its size), not on the FMA units. Each thread sums its own share of the
//   buffer again and again, as the steps of a sequence read their share of W_hh at every step;
// - the round trip of a cache line between two CPUs, which says whether they share a cache.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <pthread.h>
#include <sched.h>
#endif

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

#if defined(__linux__)
// The first two CPUs this process may run on, or false where it has fewer.
bool two_cpus(int (&cpus)[2]) {
  cpu_set_t allowed;
  if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) return false;
  int found = 0;
  for (int cpu = 0; cpu < CPU_SETSIZE && found < 2; ++cpu)
    if (CPU_ISSET(cpu, &allowed)) cpus[found++] = cpu;
  return found == 2;
}

bool pin(std::thread& thread, int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return pthread_setaffinity_np(thread.native_handle(), sizeof set, &set) == 0;
}

constexpr int64_t kTripsTimed = 1000;

// The line the two threads bounce, alone on its cache line: nothing else written nearby adds
// traffic to the trips.
struct alignas(64) Ball {
  std::atomic<int64_t> value{-1};
};

// Two threads, each pinned to a CPU of its own (two spinning on one would hand the line over
// once a time slice): `server` answers each odd value of the ball with the next even one,
// `client` writes the odd ones and times kTripsTimed answers, `repeats` times after one untimed
// pass. Both wait for `start` until they are pinned (kLeave: a pin failed, or the second thread
// could not start, and they leave at once); each pass begins when the server is ready (the ball
// at 0 again), so none waits on a thread not yet spinning. NaN where a pin fails.
double median_round_trip_ns(const int (&cpus)[2], int repeats) {
  enum : int { kWait, kGo, kLeave };
  std::atomic<int> start{kWait};
  Ball ball;
  const auto started = [&] {
    int now;
    while ((now = start.load(std::memory_order_acquire)) == kWait) std::this_thread::yield();
    return now == kGo;
  };
  std::vector<double> ns;
  ns.reserve(static_cast<std::size_t>(repeats));  // no allocation on the client thread
  std::thread server([&] {
    if (!started()) return;
    for (int pass = 0; pass <= repeats; ++pass) {
      while (ball.value.load(std::memory_order_acquire) != -1) {
      }
      ball.value.store(0, std::memory_order_release);
      for (int64_t i = 0; i < kTripsTimed; ++i) {
        while (ball.value.load(std::memory_order_acquire) != 2 * i + 1) {
        }
        ball.value.store(2 * i + 2, std::memory_order_release);
      }
    }
  });
  std::thread client;
  try {
    client = std::thread([&] {
      if (!started()) return;
      for (int pass = 0; pass <= repeats; ++pass) {
        while (ball.value.load(std::memory_order_acquire) != 0) {
        }
        const auto begin = std::chrono::steady_clock::now();
        for (int64_t i = 0; i < kTripsTimed; ++i) {
          ball.value.store(2 * i + 1, std::memory_order_release);
          while (ball.value.load(std::memory_order_acquire) != 2 * i + 2) {
          }
        }
        const auto end = std::chrono::steady_clock::now();
        if (pass > 0)
          ns.push_back(std::chrono::duration<double, std::nano>(end - begin).count() /
                       double(kTripsTimed));
        ball.value.store(-1, std::memory_order_release);
      }
    });
  } catch (const std::system_error& e) {
    // A joinable thread destroyed would end the process: let the server go first.
    start.store(kLeave, std::memory_order_release);
    server.join();
    throw std::runtime_error(std::string("core_round_trip_ns: could not start a second thread: ") +
                             e.what());
  }
  const bool pinned = pin(server, cpus[0]) && pin(client, cpus[1]);
  start.store(pinned ? kGo : kLeave, std::memory_order_release);
  server.join();
  client.join();
  if (!pinned) return std::numeric_limits<double>::quiet_NaN();
  std::nth_element(ns.begin(), ns.begin() + repeats / 2, ns.end());
  return ns[repeats / 2];
}
#endif

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

double core_round_trip_ns(int repeats) {
  check_repeats(repeats);
#if defined(__linux__)
  int cpus[2];
  if (two_cpus(cpus)) return median_round_trip_ns(cpus, repeats);
#endif
  return std::numeric_limits<double>::quiet_NaN();  // one CPU, or no way to pin threads here
}

}  // namespace fusedrnn
