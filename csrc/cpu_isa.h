// Which instruction set fusedrnn's CPU code runs. The recurrent kernel's tiles
// (recurrent_product.cc) are compiled for AVX-512, for AVX2 with FMA and portably, the
// pointwise rows (pointwise.h) for AVX-512, x86-64-v3 and the x86-64 baseline; one wheel runs
// on any x86-64 and picks at run time. And the sizes of its L1 and L2, which some choices of
// loop order and product go by, and whether it is a CPU whose own prefetcher keeps ahead of a
// stream that the kernels would otherwise ask for ahead.
#pragma once

#include <cstdint>

namespace fusedrnn {
namespace cpu {

enum class Isa { portable, avx2, avx512 };

// The widest this CPU runs (avx512: AVX-512F; avx2: AVX2 and FMA), capped by
// FUSEDRNN_KERNEL_ISA=avx2 or =portable, so that the tests hold every version to the reference
// on a machine that runs the widest.
Isa cpu_isa();

// Bytes of L1 data cache a core has, as the C library reports it (glibc's sysconf), else
// 32 KB.
int64_t l1_cache_bytes();

// Bytes of L2 a core has, as the C library reports it, else 512 KB.
int64_t l2_cache_bytes();

// Whether this CPU is an AMD of family 25 (Zen 3 and Zen 4). On a Zen 4 the hardware prefetcher
// alone keeps a one-row AVX-512 tile streaming its panels from L3 fed, and software requests only
// slowed it (recurrent_product.cc's streams_panels); a lone row's dots over a large W ask for
// lines another way there (recurrent_product.h's dots_ask_in_rows). A Zen 3 has no AVX-512.
bool amd_family_25();

}  // namespace cpu
}  // namespace fusedrnn
