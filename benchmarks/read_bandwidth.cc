// Read bandwidth of a buffer of MB megabytes, summed by THREADS threads, each its share, 20
// passes a run, median and best of 15 runs: what a batch of one's steps can reach, each
// streaming all of W_hh (README, Benchmarks: 16 MB at up to 175 GB/s on two Zen 4 cores, from
// L3, 115-150 in slower spells; 64 MB, from memory, at 30-42).
//
//   g++ -O2 -mavx2 -pthread -o /tmp/read_bandwidth benchmarks/read_bandwidth.cc
//   /tmp/read_bandwidth 16 2
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s MB THREADS\n", argv[0]);
    return 2;
  }
  const std::size_t floats = std::size_t(std::atoi(argv[1])) << 18;
  const int threads = std::atoi(argv[2]);
  if (floats == 0 || threads < 1) {
    std::fprintf(stderr, "MB and THREADS: expected positive integers\n");
    return 2;
  }
  constexpr int kPasses = 20;
  std::vector<float> data(floats);
  for (std::size_t i = 0; i < floats; ++i) data[i] = 1e-9f * float(i % 1024);
  std::vector<double> rates;
  std::vector<float> sums(threads);
  for (int run = 0; run < 15; ++run) {
    const auto start = std::chrono::steady_clock::now();
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t)
      pool.emplace_back([&sums, t, threads, floats, p = data.data()] {
        // Eight independent sums, so that loads, not the adds' latency, set the pace.
        const float* const begin = p + floats * t / threads / 64 * 64;
        const float* const end = p + floats * (t + 1) / threads / 64 * 64;
        __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0, s4 = s0, s5 = s0, s6 = s0,
               s7 = s0;
        for (int pass = 0; pass < kPasses; ++pass)
          for (const float* q = begin; q < end; q += 64) {
            s0 = _mm256_add_ps(s0, _mm256_loadu_ps(q));
            s1 = _mm256_add_ps(s1, _mm256_loadu_ps(q + 8));
            s2 = _mm256_add_ps(s2, _mm256_loadu_ps(q + 16));
            s3 = _mm256_add_ps(s3, _mm256_loadu_ps(q + 24));
            s4 = _mm256_add_ps(s4, _mm256_loadu_ps(q + 32));
            s5 = _mm256_add_ps(s5, _mm256_loadu_ps(q + 40));
            s6 = _mm256_add_ps(s6, _mm256_loadu_ps(q + 48));
            s7 = _mm256_add_ps(s7, _mm256_loadu_ps(q + 56));
          }
        const __m256 all = _mm256_add_ps(
            _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)),
            _mm256_add_ps(_mm256_add_ps(s4, s5), _mm256_add_ps(s6, s7)));
        float lanes[8];
        _mm256_storeu_ps(lanes, all);
        sums[t] = lanes[0];
      });
    for (auto& thread : pool) thread.join();
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    rates.push_back(kPasses * double(floats) * sizeof(float) / seconds / 1e9);
  }
  std::sort(rates.begin(), rates.end());
  std::printf("%s MB, %d threads: median %.1f GB/s, best %.1f (checksum %g)\n", argv[1], threads,
              rates[rates.size() / 2], rates.back(), double(sums[0]));
  return 0;
}
