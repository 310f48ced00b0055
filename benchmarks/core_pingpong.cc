// Round-trip time of a cache line bounced between CPUs 0 and 1: tells which kind of spell this
// machine is in (README, Benchmarks: 60-130 ns in the fast ones, 360-400 ns in the slow ones,
// where the cores share no L3 and fusedrnn's training backward runs a third slower).
//
//   g++ -O2 -pthread -o /tmp/core_pingpong benchmarks/core_pingpong.cc && /tmp/core_pingpong
#include <pthread.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>

namespace {

alignas(64) std::atomic<long> ball{0};

bool pin_to(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return pthread_setaffinity_np(pthread_self(), sizeof(set), &set) == 0;
}

}  // namespace

int main() {
  // Two threads spinning on one CPU would hand the ball over once per time slice.
  if (!pin_to(1) || !pin_to(0)) {
    std::fprintf(stderr, "core_pingpong: needs CPUs 0 and 1\n");
    return 1;
  }
  constexpr long kRounds = 200000;
  std::thread other([] {  // returns each odd value as the next even one
    pin_to(1);
    for (long i = 0; i < kRounds; ++i) {
      while (ball.load(std::memory_order_acquire) != 2 * i + 1) {
      }
      ball.store(2 * i + 2, std::memory_order_release);
    }
  });
  pin_to(0);
  const auto start = std::chrono::steady_clock::now();
  for (long i = 0; i < kRounds; ++i) {
    ball.store(2 * i + 1, std::memory_order_release);
    while (ball.load(std::memory_order_acquire) != 2 * i + 2) {
    }
  }
  const auto stop = std::chrono::steady_clock::now();
  other.join();
  std::printf("round trip %.1f ns\n",
              std::chrono::duration<double, std::nano>(stop - start).count() / kRounds);
}
