#include "cpu_isa.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#if defined(__unix__)
#include <unistd.h>
#endif

namespace fusedrnn {
namespace cpu {

Isa cpu_isa() {
  static const Isa isa = [] {
    Isa best = Isa::portable;
#if defined(__x86_64__) && defined(__GNUC__)
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = Isa::avx2;
    if (best == Isa::avx2 && __builtin_cpu_supports("avx512f")) best = Isa::avx512;
#endif
    const char* cap = std::getenv("FUSEDRNN_KERNEL_ISA");
    if (cap && std::strcmp(cap, "portable") == 0) return Isa::portable;
    if (cap && std::strcmp(cap, "avx2") == 0) return std::min(best, Isa::avx2);
    return best;
  }();
  return isa;
}

bool amd_family_25() {
#if defined(__x86_64__) && defined(__GNUC__)
  return __builtin_cpu_is("amdfam19h");  // family 0x19 = 25, from the CPUID cpu_isa() reads
#else
  return false;
#endif
}

namespace {

// The sysconf names of L1's and L2's sizes, or -1 where the C library has none.
#if defined(_SC_LEVEL1_DCACHE_SIZE) && defined(_SC_LEVEL2_CACHE_SIZE)
constexpr int kL1Name = _SC_LEVEL1_DCACHE_SIZE, kL2Name = _SC_LEVEL2_CACHE_SIZE;
#else
constexpr int kL1Name = -1, kL2Name = -1;
#endif

// sysconf(name)'s answer where it gives one, else `fallback`.
int64_t cache_bytes(int name, int64_t fallback) {
#if defined(__unix__)
  const long reported = name < 0 ? -1 : sysconf(name);
  if (reported > 0) return int64_t{reported};
#endif
  static_cast<void>(name);
  return fallback;
}

}  // namespace

int64_t l1_cache_bytes() {
  static const int64_t bytes = cache_bytes(kL1Name, int64_t{32} << 10);
  return bytes;
}

int64_t l2_cache_bytes() {
  static const int64_t bytes = cache_bytes(kL2Name, int64_t{512} << 10);
  return bytes;
}

}  // namespace cpu
}  // namespace fusedrnn
