// The pointwise rows of the cells' steps (pointwise_rows.inc), compiled once for each
// instruction set, and with_rows(f), which runs f with the rows this CPU takes.
//
// On x86-64 (GCC) there are three: AVX-512, x86-64-v3 (AVX2, FMA) and the baseline (SSE2), each
// a struct of its own built under `#pragma GCC target`. They are picked at run time by
// rows_isa() from cpu_isa(), so FUSEDRNN_KERNEL_ISA caps them with the recurrent kernel and the
// tests can run every version on a machine that has AVX-512 (the loader's choice of a
// target_clones function, used before, could not be capped). The build turns off FMA
// contraction (-ffp-contract=off): with it, each version and instantiation rounded a*b+c its
// own way, and inference stopped matching training bit for bit. The rows that run exp and tanh
// take Fma instead (cell_math.h's mul_add): fused multiply-adds in the two versions that have
// them, none in the baseline. LSTM's forward row ran 20% faster fused on AVX-512 (1.28 -> 1.02
// ns a unit), 23% with x86-64-v3 (2.65 -> 2.04). Every CPU with FMA computes the same bits, and
// every CPU without.
#pragma once

#include <cstdint>
#include <type_traits>

#include "cpu_isa.h"
#include "fusedrnn/cell_math.h"

namespace fusedrnn {
namespace cpu {

// The rows of a step block cut by units (cells_cpu.h's for_step_blocks: a W_hh that fits no
// L2) hold a run of a line or two of each gate, too short for the hardware prefetchers to
// follow from row to row; and what they read was written a while before: the forward's input
// projections (xp) by the chunk's projection, up to a chunk of steps before (in L3 or
// memory), the states by whichever thread ran the block the step before, the backward's tape
// by the forward. LSTM's forward row spent half its samples on xp's loads (inference T=20
// B=128 H=1024, a Zen 3), then on c_prev's; its backward row, at T=100 B=64 H=256, most of
// its samples on the tape's. There the rows ask for the lines they read of the row kAheadRows
// after each (Ahead in pointwise_rows.inc). On a Zen 3 the forward row's share of the samples
// went from 6.4% to 3.9% (LSTM inference T=20 B=128 H=1024), the backward's from 3.6-3.9% to
// 2.4% (LSTM training T=100 B=64 H=256); alternated in one process, both orders, inference
// T=20 B=128 H=1024 ran 2.4% faster (LSTM) and 2% (GRU). Asking for the tape's gates that a
// training forward writes changed nothing. Whole rows (n = H), which the prefetchers follow
// row after row, do not ask: asking there ran LSTM inference T=20 B=128 H=512 and T=200 B=128
// H=128 ~1% slower, and the mere test in the row loop ran training T=200 B=128 H=32 2% slower.
constexpr int64_t kAheadRows = 4;
constexpr int64_t kShortRunBytes = 256;
template <typename T>
bool asks_ahead(int64_t n, int64_t H) {
  return n < H && n * int64_t{sizeof(T)} <= kShortRunBytes;
}

#define FR_R __restrict
#define FR_ROW __attribute__((noinline))
// The gate loops must be unrolled before the vectoriser sees the loop over hidden units.
#define FR_UNROLL _Pragma("GCC unroll 4")
// A vector of units runs a long chain of dependent operations through a row (LSTM's forward:
// an exp and a division for each gate, then c, tanh(c) and a second division, some 200
// instructions with AVX2), longer than the out-of-order window overlaps: the row ran at about
// twice the time its operations take. FR_INTERLEAVE unrolls the vectorised loop over units by
// two, and the file that instantiates the rows (sequence_cpu.cc) is compiled with GCC's
// scheduling before register allocation (-fschedule-insns -fsched-pressure, CMakeLists.txt),
// which interleaves the two vectors' chains (GCC on x86 schedules only after allocation by
// default). Alone, the scheduling gained 3-8% in LSTM's forward row, the unrolling 2% in
// inference and lost 5% in training. Together, on one Zen 3 core (x86-64-v3 rows, H=128, 16 rows):
// LSTM's forward row 22% faster in inference (3.74 -> 2.91 ns a unit), 16% in training; GRU's
// forward 8% (reset-before's two forward rows 10%), RNN's 7%; LSTM's backward 3%, RNN's 14%; the
// double and SSE2 rows 10-34%. The same bits: no operation changes, only their order in the
// instruction stream. GRU's backward row ran level to 3% slower, and the short loops without exp
// (reset-before's backward rows) level: they are not unrolled.
#define FR_INTERLEAVE _Pragma("GCC unroll 2")

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FR_ROWS_BY_ISA 1

#pragma GCC push_options
#pragma GCC target("avx512f")
#define FR_ROWS RowsAvx512
#define FR_ROWS_NAME "avx512f"
#define FR_ROWS_FMA true
#define FR_ROWS_LANES 16
#include "pointwise_rows.inc"
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
#define FR_ROWS RowsX86_64_v3
#define FR_ROWS_NAME "x86-64-v3 (avx2, fma)"
#define FR_ROWS_FMA true
#define FR_ROWS_LANES 8
#include "pointwise_rows.inc"
#pragma GCC pop_options

#define FR_ROWS RowsBaseline
#define FR_ROWS_NAME "sse2 (x86-64 baseline)"
#define FR_ROWS_FMA false
#define FR_ROWS_LANES 4
#include "pointwise_rows.inc"

#else  // one version, for the compiler's target
#define FR_ROWS Rows
#define FR_ROWS_NAME "the compiler's default"
#if defined(__aarch64__) || defined(__FP_FAST_FMAF)
#define FR_ROWS_FMA true
#else
#define FR_ROWS_FMA false
#endif
#define FR_ROWS_LANES 4
#include "pointwise_rows.inc"
#endif

// The instruction set of the rows this CPU runs.
inline Isa rows_isa() {
#if FR_ROWS_BY_ISA
  // The x86-64-v3 rows may use any of its instructions (BMI2, MOVBE...), not only AVX2 and FMA.
  static const Isa isa = cpu_isa() == Isa::avx2 && !__builtin_cpu_supports("x86-64-v3")
                             ? Isa::portable
                             : cpu_isa();
  return isa;
#else
  return Isa::portable;
#endif
}

// f(rows) with an object of the rows' struct this CPU runs (its functions are static).
template <typename F>
decltype(auto) with_rows(const F& f) {
#if FR_ROWS_BY_ISA
  switch (rows_isa()) {
    case Isa::avx512: return f(RowsAvx512{});
    case Isa::avx2: return f(RowsX86_64_v3{});
    default: return f(RowsBaseline{});
  }
#else
  return f(Rows{});
#endif
}

// f(rows, ahead): f(rows) as with_rows, ahead std::true_type where a block's rows of n of H
// units ask for their lines ahead (asks_ahead), else std::false_type.
template <typename T, typename F>
void with_block_rows(int64_t n, int64_t H, const F& f) {
  with_rows([&](auto rows) {
    if (asks_ahead<T>(n, H)) f(rows, std::true_type{});
    else f(rows, std::false_type{});
  });
}

// Floats in a vector of the rows this CPU runs. A row given fewer units runs none of its vector
// loop: LSTM's forward row took 4.2 ns a unit in blocks of 8 units on AVX-512 against 2.2 in
// blocks of 16 or more.
inline int64_t pointwise_lanes() {
  return with_rows([](auto rows) { return decltype(rows)::lanes; });
}

// What the rows run, for build_info.
inline const char* pointwise_isa_name() {
  return with_rows([](auto rows) { return decltype(rows)::name; });
}

}  // namespace cpu
}  // namespace fusedrnn
