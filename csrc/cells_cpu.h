// One time step of each cell on the CPU, forward and backward: the recurrent product(s) and the
// pointwise pass over [B, H], fused by blocks of rows or units (recurrent_product.h). The time
// loop, tape layout and weight gradients live in sequence_cpu.cc; the loops over units in
// pointwise_rows.inc, the per-unit math in cell_math.h (shared with CUDA).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "parallel_gemm.h"
#include "pointwise.h"
#include "recurrent_product.h"
#include "fusedrnn/rnn.h"

namespace fusedrnn {
namespace cpu {

inline bool row_active(const int64_t* lengths, int64_t b, int64_t t) {
  return lengths == nullptr || t < lengths[b];
}

// A forward takes a packed [W_ihᵀ; W_hhᵀ] as one product (StepProducts::stacks_input) where it
// fits in half of L2: LSTM I = H = 128 with a 1 MB L2 (Zen 4 and 5).
// And for a batch of kMinRowsStackedFromL3 to kMaxRowsStackedFromL3 rows, too few to walk a
// W_hh from L3 by rows (kMinWalkRowsFromL3), whose steps stream W_hh from L3 anyway: up to
// 8 MB (LSTM I = H = 512, RNN I = H = 1024). Each step then streams W_ih too, and the chunk's
// projection no longer writes its pre-activations (up to 8 MB a chunk) to read them back from
// L3 a step at a time. Alternated in one process on a Zen 4 (AVX-512 on 256-bit units, 1 MB
// L2): LSTM inference T=200 H=512 4.5% faster at B=16, 4% at B=8, 6% at B=4 (4% slower at B=2,
// whose steps are bound by streaming both weights), RNN T=200 B=16 H=1024 6% and float64 H=512
// 14%, LSTM training B=16 H=512 1%; but 3-7% slower at B=24, whose 12-row tiles over k = 1024
// outgrow the 32 KB L1. Where L1 holds kWideL1Bytes (Zen 5: 48 KB), larger batches stack too,
// their walk's row blocks each streaming the stacked weights: alternated in one process on a
// Zen 5, LSTM inference T=100 H=256 ran 9% faster at B=48, 5-6% at B=64, 3% at B=96 and B=128
// (training B=128 4.5%), T=200 H=512 5% at B=20 and B=24 (training 4%), T=100 H=512 4% at
// B=32, 5-7.5% at B=64 (training 4%), 1% at B=128; RNN H=1024 B=64 and B=128 and T=20 LSTM
// B=128 H=512 level to 1% faster. So do larger batches where a tile's rows of [x | h] take at
// most half of L1 (AVX2's tiles of 3 rows: float32 LSTM up to I + H = 1365), each step then cut
// by units: alternated in one process on a Zen 3, both builds loaded first in turn, LSTM
// inference ran 5% faster at T=100 B=64 H=256, 7% at T=200 B=128 H=256, 3% at T=200 B=128
// H=512, 2% at T=200 B=24 and B=32 H=512 and T=20 B=128 H=256, training T=100 B=64 H=256
// 2.5%, T=20 B=128 H=512 1%, RNN inference T=200 H=512 4% at B=64 and 1% at B=128 (an A/A
// run of an unchanged case read within 2%); RNN T=20 B=128 H=1024 (tiles of 24 KB) ran 2%
// slower. Not where W_hh alone fits in half of L2, whose steps would read it from there:
// stacked, a Zen 3 (512 KB L2, AVX2) read LSTM I = H = 128's 512 KB from L3 at every step, and
// ran inference T=200 B=16 5% slower than with a projection, two-layer and bidirectional 3%,
// B=128 2% (each in its own process, alternated).
constexpr int64_t kStackedFromL3Bytes = int64_t{8} << 20;
constexpr int64_t kMinRowsStackedFromL3 = 4;
constexpr int64_t kMaxRowsStackedFromL3 = 16;
constexpr int64_t kWideL1Bytes = int64_t{48} << 10;

// An RNN's W_hh from which a batch of one's backward packs it (StepProducts::main_packing).
constexpr int64_t kRnnPackingBytes = int64_t{4} << 20;

// The recurrent products a cell's steps use, W_hh packed once per call: forward h·W_hhᵀ over
// the gates, backward dG·W_hh. GRU reset-before's n gate reads r⊙h, so it has its own.
template <typename T>
struct StepProducts {
  static ProductShape main_shape(Cell cell, int64_t H, bool forward) {
    const int64_t gates = cell == Cell::GRU_RESET_BEFORE ? 2 : gate_count(cell);
    return forward ? ProductShape{true, H, gates, H} : ProductShape{false, gates * H, 1, H};
  }
  static ProductShape n_gate_shape(int64_t H, bool forward) {
    return ProductShape{forward, H, 1, H};
  }
  static bool has_n_gate(Cell cell) { return cell == Cell::GRU_RESET_BEFORE; }
  // Elements to pack for a call of `steps` steps of B rows. A batch of one packs for cells of
  // several gates, and for an RNN's backward over a W_hh of kRnnPackingBytes or more: with the
  // readers of an unpacked W_hh (row_dots, row_axpys), alternated in one process on a Zen 4,
  // RNN training T=200 B=1 H=1024 (4 MB) ran 11-13% faster with its backward packed, H=128 to
  // 512 level; with the forward packed too, H=1024 no faster and H=512 4-20% slower. (Its peak
  // grows by W_hh: 13.2 -> 17.2 MB at H=1024, where torch's read 27 to 156.)
  static int64_t main_packing(Cell cell, int64_t H, int64_t B, int64_t steps, bool forward) {
    const ProductShape shape = main_shape(cell, H, forward);
    const bool rnn_packs =
        !forward && RecurrentProduct<T>::weight_bytes(shape, false) >= kRnnPackingBytes;
    return RecurrentProduct<T>::packing_size(shape, B,
                                             gate_count(cell) > 1 || rnn_packs ? steps : 0);
  }
  static int64_t n_gate_packing(Cell cell, int64_t H, int64_t B, int64_t steps, bool forward) {
    return has_n_gate(cell)
               ? RecurrentProduct<T>::packing_size(n_gate_shape(H, forward), B, steps)
               : 0;
  }

  // A forward of a cell with one product a step (LSTM, RNN) whose stacked M, [W_ihᵀ; W_hhᵀ],
  // stays in L2 (or, for a batch of 4 rows or more, streams from L3: kStackedFromL3Bytes) takes
  // x·W_ihᵀ and h·W_hhᵀ as one product, [x | h]·[W_ihᵀ; W_hhᵀ] over k = I + H:
  // twice the k of each (a Zen 5 core ran k=32 tiles at 224 GFLOP/s, k = 32 + 32 at 248), one
  // call for two, and no projection's pre-activations to write and read back. Each element is
  // then one sum, its rounding not that of two sums added: a cut by sizes and the L1's alone
  // (not by thread count or instruction set), so inference and training stack alike.
  static ProductShape stacked_shape(Cell cell, int64_t I, int64_t H) {
    return ProductShape{true, I + H, gate_count(cell), H};
  }
  static bool stacks_input(Cell cell, int64_t I, int64_t H, int64_t B) {
    const bool one_product = cell == Cell::LSTM || cell == Cell::RNN_TANH ||
                             cell == Cell::RNN_RELU;
    const int64_t bytes = packed_elements<T>(stacked_shape(cell, I, H)) * int64_t{sizeof(T)};
    const int64_t w_hh_bytes =
        packed_elements<T>(main_shape(cell, H, true)) * int64_t{sizeof(T)};
    const int64_t half_l2 = l2_cache_bytes() / 2;
    const int64_t tile_rows_bytes =
        panel_layout<T>(gate_count(cell)).max_rows * (I + H) * int64_t{sizeof(T)};
    const bool rows_fit = B <= kMaxRowsStackedFromL3 || l1_cache_bytes() >= kWideL1Bytes ||
                          tile_rows_bytes <= l1_cache_bytes() / 2;
    const bool from_l3 = B >= kMinRowsStackedFromL3 && rows_fit &&
                         bytes <= kStackedFromL3Bytes && w_hh_bytes > half_l2;
    return one_product && B > 1 && (bytes <= half_l2 || from_l3);
  }

  // The packings hold main_packing and n_gate_packing elements (null where that is 0).
  StepProducts(Cell cell, int64_t H, bool forward, const T* w_hh, T* main_packing,
               T* n_gate_packing)
      : main(main_shape(cell, H, forward), w_hh, H, main_packing) {
    if (has_n_gate(cell)) n_gate = RecurrentProduct<T>(n_gate_shape(H, forward), w_hh + 2 * H * H, H,
                                                       n_gate_packing);
  }
  // A stacked forward (stacks_input): `packing` holds packed_elements(stacked_shape) elements.
  StepProducts(Cell cell, int64_t I, int64_t H, const T* w_ih, const T* w_hh, T* packing)
      : main(stacked_shape(cell, I, H), w_ih, I, w_hh, H, H, packing) {}

  // Batch rows never meet in a step: when every product of the step would split its rows
  // (each W_hh fits in L2, see for_step_blocks), the walk can give each thread rows for a whole
  // chunk of steps instead of cutting every step. So it can when a W_hh that only fits in L3 is
  // packed for fusedrnn's kernel and `from_l3` allows (see kWalkFromL3Bytes). This many row
  // blocks (1: cut each step) for a walk of `steps` steps, whose recurrent products are
  // `chunk_flops`.
  int64_t walk_row_blocks(int64_t B, int64_t steps, double chunk_flops, bool from_l3) const {
    return row_blocks(main.weight_bytes(), n_gate.weight_bytes(), main.row_step(), B, steps,
                      chunk_flops, from_l3 && main.packed());
  }
  // The same before the products exist, for a call of `steps` steps walked at once.
  static int64_t walk_row_blocks(Cell cell, int64_t H, int64_t B, int64_t steps, bool forward,
                                 double chunk_flops, bool from_l3) {
    using Product = RecurrentProduct<T>;
    const ProductShape shape = main_shape(cell, H, forward);
    const bool packs = main_packing(cell, H, B, steps, forward) > 0;
    const int64_t n_gate_bytes =
        has_n_gate(cell) ? Product::weight_bytes(n_gate_shape(H, forward),
                                                 n_gate_packing(cell, H, B, steps, forward) > 0)
                         : 0;
    return row_blocks(Product::weight_bytes(shape, packs), n_gate_bytes,
                      Product::row_step(shape, packs), B, steps, chunk_flops, from_l3 && packs);
  }

  // walk(r0, r1) for the row blocks of a chunk, in parallel (one block: the whole batch, whose
  // steps then cut themselves over the threads).
  template <typename F>
  void for_walk_rows(int64_t B, int64_t steps, double chunk_flops, bool from_l3,
                     const F& walk) const {
    const int64_t blocks = walk_row_blocks(B, steps, chunk_flops, from_l3);
    parallel_for(blocks, [&](int64_t i) { walk(B * i / blocks, B * (i + 1) / blocks); });
  }

  RecurrentProduct<T> main, n_gate;  // main: [x | h]·[W_ihᵀ; W_hhᵀ] when stacked

 private:
  static int64_t row_blocks(int64_t main_bytes, int64_t n_gate_bytes, int64_t row_step,
                            int64_t B, int64_t steps, double chunk_flops, bool from_l3);
};

// One step's products are cut into blocks of ~kStepBlockFlops: enough to outweigh handing a
// block to a thread (~1 µs), small enough that a 2-MFLOP step (B=16, H=128 LSTM) still spreads
// over several threads. Like every cut here, it depends on the sizes only.
constexpr double kStepBlockFlops = 2.5e5;
constexpr int64_t kMaxStepBlocks = 64;
// Blocks of units hold at least this many: an LSTM step cut into blocks of one 8-unit panel
// (H=256: 32 blocks) ran its pointwise rows a vector a row, at 9 ns a unit against 4 in long
// rows, most of it in each row's set-up. Alternated in one process on a Zen 3, both orders,
// against blocks of 8 units: LSTM inference T=100 B=64 H=256 5% faster, T=20 B=16 H=256 5%,
// T=20 B=16 H=512 2.7%, T=200 1.6%, T=20 B=16 H=1024 1%; training T=100 B=64 H=256 2%, T=20
// B=128 H=512 1.4%; GRU inference T=100 B=64 H=256 1%, training T=20 B=16 H=512 2%; LSTM
// inference T=20 B=128 H=1024 and training T=20 B=4 H=512 level. (Blocks of 16 units ran
// B=64 H=256 3% slower than 8, of 64 3% slower: two blocks a thread balance poorly.)
constexpr int64_t kMinBlockUnits = 32;
// A W_hh up to this size (LSTM H <= 128) stays in each core's L2 (512 KB here) from step to
// step, so every thread may read all of it: its blocks split the batch rows rather than the
// units, and the pointwise pass runs over whole rows (at H=32, blocks of 8 units spent more
// in calls than in math). A larger W_hh is split by units, each thread streaming its share.
constexpr int64_t kRowSplitBytes = int64_t{256} << 10;

// Rows [r0, r1) and hidden units [u0, u1) of one step.
struct StepBlock {
  int64_t r0, r1, u0, u1;
};

// Start of block i when [0, n) is cut into `blocks` near-equal blocks on multiples of `step`
// (i = blocks gives n).
inline int64_t block_start(int64_t i, int64_t blocks, int64_t n, int64_t step) {
  const int64_t steps = (n + step - 1) / step;
  return std::min(n, steps * i / blocks * step);
}

// How a step's B rows and H units are cut into blocks over the threads; `flops` is the step's
// product.
struct StepCut {
  int64_t blocks;
  bool split_rows;  // blocks of rows (B), else of units (H), on multiples of `step`
  int64_t step;
  int64_t B, H;
  StepBlock block(int64_t i) const {
    const int64_t n = split_rows ? B : H;
    const int64_t a = block_start(i, blocks, n, step), b = block_start(i + 1, blocks, n, step);
    return split_rows ? StepBlock{a, b, 0, H} : StepBlock{0, B, a, b};
  }
};

template <typename T>
StepCut step_cut(const RecurrentProduct<T>& product, int64_t B, int64_t H, double flops) {
  const bool split_rows =
      product.weight_bytes() <= kRowSplitBytes && B > product.row_step();
  // Units go in whole panels, and whole vectors of the pointwise rows (both powers of two),
  // and at least kMinBlockUnits of them. Rows go in near-equal blocks of at least a tile's
  // rows: the kernel runs any count of rows but one at full speed, and blocks cut on multiples
  // of the tile's 3 rows left B=16 a block of one row.
  const int64_t step =
      split_rows ? 1
                 : std::max<int64_t>({product.unit_step(), pointwise_lanes(), kMinBlockUnits});
  const int64_t most = split_rows ? B / product.row_step() : (H + step - 1) / step;
  const int64_t blocks = even_blocks(static_cast<int64_t>(flops / kStepBlockFlops),
                                     std::min(kMaxStepBlocks, most));
  return {blocks, split_rows, step, B, H};
}

// body(block) for the blocks of the step's cut, in parallel.
template <typename T, typename F>
void for_step_blocks(const RecurrentProduct<T>& product, int64_t B, int64_t H, double flops,
                     const F& body) {
  // Inside a walk's row block (for_walk_rows) the blocks would run one after the other on this
  // thread: one block keeps the tiles whole. Cut in two, the 8-row walk blocks of LSTM T=20
  // B=128 H=128 ran 4-row tiles (8 accumulators), a third of that case's time.
  if (inside_parallel_loop()) return body(StepBlock{0, B, 0, H});
  const StepCut cut = step_cut(product, B, H, flops);
  parallel_for(cut.blocks, [&](int64_t i) { body(cut.block(i)); });
}

// Which blocks of a step a cell's step function runs: all of them, over the threads...
struct AllBlocks {
  static constexpr bool one = false;
  template <typename T, typename F>
  void operator()(const RecurrentProduct<T>& product, int64_t B, int64_t H, double flops,
                  const F& body) const {
    for_step_blocks(product, B, H, flops, body);
  }
};
// ...or block i of `cut` only, on the calling thread: one chunk of a walk's parallel_steps.
struct OneBlock {
  static constexpr bool one = true;
  const StepCut& cut;
  int64_t i;
  template <typename T, typename F>
  void operator()(const RecurrentProduct<T>&, int64_t, int64_t, double, const F& body) const {
    body(cut.block(i));
  }
};

// A chunk's walk in row blocks of ~kWalkBlockFlops (the chunk's products): a step of B=16,
// H=32 (0.1 MFLOP) is too small to cut, but 64 such steps on 4 blocks of rows are not. At most
// 4 blocks: at B=128, 16 blocks of 8 rows ran every product in 8-row tiles, and 4 of 32 rows
// in 10- and 11-row ones; RNN training T=200 B=128 H=128 took 19.2-19.8 ms against 21.1-21.3,
// LSTM inference T=20 B=128 H=128 1.83-1.90 against 1.90-2.06 (in the same slow spell).
constexpr double kWalkBlockFlops = 2e6;
constexpr int64_t kMaxWalkBlocks = 4;
constexpr int64_t kWalkTileRows = 8;  // a block's rows where few rows are to be had (row_blocks)
// A packed W_hh up to this size (float: LSTM H <= 512, GRU H <= 591, RNN H <= 1024) is read
// from L3 at every step by each row block that walks it, each of its panels then serving the
// block's rows from L2. With kMinWalkRowsFromL3 rows or more a block, that costs less than
// cutting every step by units: each block projects its rows just before their step, so the
// pre-activations never leave the cache, and no step waits at a fork-join. Alternated in one
// process: LSTM inference T=20 B=128 H=512 ran 3.7% faster walked (on one thread too), T=200
// 4.2%, the backward of LSTM training T=20 B=128 H=512 1.5%; at H=1024 (16 MB, beside a 16 MB
// W_ih) 10% slower. At most kMaxWalkBlocks threads walk, so the walk is taken only where the
// pool has no more threads than blocks. How a step is cut changes no bit (each element is
// summed in one tile, in k order, either way): tests/test_determinism.py checks.
constexpr int64_t kWalkFromL3Bytes = int64_t{4} << 20;
constexpr int64_t kMinWalkRowsFromL3 = 16;
// A batch too small for every thread to walk kMinWalkRowsFromL3 rows walks kMinLongWalkRows
// a block where the walk takes kMinLongWalkSteps or more: each block then reads W_hh (or a
// stacked [W_ihᵀ; W_hhᵀ]) at every step, but no step waits at a fork-join, and the pointwise
// rows run whole, not in 16-unit blocks. Alternated in one process on a Zen 4, two blocks of 8
// rows at B=16 (blocks of 4 rows ran 2-7% slower than these): LSTM inference T=200 H=512 ran
// 3-7% faster, bidirectional and two-layer 3-7%, GRU 4-12%, RNN H=1024 7%, H=512 6-16%, LSTM
// training's backward 1-3%. But a walk costs 0.1-1 ms more at its start (T=1: RNN H=1024 1.7
// against 0.7 ms, in some processes only), so that RNN inference T=20 ran 5% slower, T=40
// level, T=80 3% faster; LSTM T=50 2%, T=100 6%.
constexpr int64_t kMinLongWalkRows = 8;
constexpr int64_t kMinLongWalkSteps = 64;

template <typename T>
int64_t StepProducts<T>::row_blocks(int64_t main_bytes, int64_t n_gate_bytes, int64_t row_step,
                                    int64_t B, int64_t steps, double chunk_flops,
                                    bool from_l3) {
  // (A cell without an n-gate product has an empty one, of 0 bytes.)
  const int64_t bytes = std::max(main_bytes, n_gate_bytes);
  const auto wanted = static_cast<int64_t>(chunk_flops / kWalkBlockFlops);
  const auto blocks_of = [&](int64_t min_rows) {
    return even_blocks(wanted, std::min(kMaxWalkBlocks, B / std::max(min_rows, row_step)));
  };
  const int64_t threads = pool_threads();
  if (bytes <= kRowSplitBytes) {
    // Blocks of kWalkTileRows rows where the batch makes just one for each thread: 8-row
    // tiles rather than the 4-row ones of blocks of row_step (16 accumulators where a Zen 5's
    // two 512-bit FMA units keep 8 in flight). Alternated in one process on a Zen 5, B=16
    // H=128: LSTM training T=200 2-6% faster, T=20 6%, two-layer and bidirectional 4-5%,
    // inference level to 8%; H=32 training 6-8%; RNN inference 8%, training 3%; GRU level.
    // Blocks of 12 rows (B=24) ran LSTM inference 5-8% slower than blocks of 6.
    const int64_t blocks = blocks_of(kWalkTileRows);
    if (blocks >= threads && B <= blocks * kWalkTileRows) return blocks;
    return blocks_of(row_step);
  }
  if (!from_l3 || bytes > kWalkFromL3Bytes) return 1;
  int64_t blocks = blocks_of(kMinWalkRowsFromL3);
  if (blocks < threads && steps >= kMinLongWalkSteps) blocks = blocks_of(kMinLongWalkRows);
  return blocks >= threads ? blocks : 1;
}

// Everything a forward step touches. Pointers are already offset to time step t.
template <typename T>
struct StepIO {
  int64_t B, H, t;
  const int64_t* lengths;
  const T* xproj;   // [B, ldg] x·W_ihᵀ (no bias), G*H values a row; null for a stacked product
  const T* x;       // [B, ldx] the step's input, read by a stacked product (else null)
  int64_t ldx;
  const StepProducts<T>* products;  // h·W_hhᵀ
  const T* b_ih;    // [G*H]     (zeros when the layer has no bias): GRU's
  const T* b_hh;    // [G*H]
  const T* b;       // [G*H]     b_ih + b_hh, for LSTM's and RNN's one sum of both; else null
  const T* h_prev;  // [B, H]
  const T* c_prev;  // [B, H] LSTM
  T* h_new;         // [B, H]    never aliases h_prev: the row loops below are restrict
  T* c_new;         // [B, H]
  T* gates;         // [B, W*H]  tape gates of step t, or scratch for inference
  T* y;             // [B, *]    row stride ldy
  int64_t ldy;
  T* rec;           // [B, ldg]  scratch for the recurrent product
  int64_t ldg;      // row stride of xproj and rec: pre_activation_stride
  T* h_t;           // [H, B]    scratch for h_prev transposed (see forward_pass), or null
};

// The rows of the pre-activations (xproj, rec) and of their gradients (dgx, dgh) are G·H values
// and a cache line apart. At a power-of-two G·H the lines a tile touches fall into a few of L1's
// 64 sets and evict one another: at H = 512 the 48 lines a 12-row LSTM tile writes into rec,
// 12 to each of two sets; and the weight gradients' tiles read dGᵀ a row of dG per k, every
// line in the same set. One line more per row spreads them. On two Zen 5 cores, LSTM B=128:
// the recurrent product at H = 512 (1024) ran at 515 (495) GFLOP/s against 491 (461), the
// weight gradients over a chunk of 1024 rows at 449 (421) against 350 (321).
template <typename T>
int64_t pre_activation_stride(int64_t gh) {
  return gh + int64_t{64} / int64_t{sizeof(T)};
}

// Everything a backward step touches. Pointers are offset to time step t. The step first adds
// the recurrent gradient of the step walked before it, dg_next·W_hh, to dh (the products need
// all of dg_next's units, so they wait for every block of that step), then runs its pointwise
// pass. After the walk, a last call without the pointwise pass adds step 0's.
template <typename T>
struct BackStepIO {
  int64_t B, H, t;
  const int64_t* lengths;
  const StepProducts<T>* products;  // dG·W_hh
  const T* dg_next; // [B, ldg] recurrent-side gate gradients of step t+1 (reverse: t-1); null
                    // at the first step walked
  bool pointwise;   // false: only dh += dg_next·W_hh
  const T* h_prev;  // [B, H] tape slots
  const T* c_prev;
  const T* h_new;
  const T* c_new;
  const T* gates;   // [B, W*H]
  const T* dy;      // [B, *] row stride lddy (zeros when the caller gave none)
  int64_t lddy;
  T* dh;            // [B, H] in: gradient reaching h after step t; out: before it
  T* dc;            // [B, H] likewise for LSTM's c
  T* dgx;           // [B, ldg] out: gradient of the input-side pre-activations
  T* dgh;           // [B, ldg] out: recurrent side (same buffer as dgx except for GRU)
  T* scratch;       // [B, H]
  int64_t ldg;      // row stride of dg_next, dgx and dgh: pre_activation_stride
};

// p + n, or null for an array the step does not use.
template <typename P>
P* offset_or_null(P* p, int64_t n) {
  return p ? p + n : p;
}

// A step restricted to batch rows [r0, r1): each per-row array from row r0 on (rows [0, B):
// the step itself). Rows of the gates hold `gate_width` values.
template <typename T>
StepIO<T> rows_of(const StepIO<T>& s, int64_t r0, int64_t r1, int64_t gate_width) {
  const int64_t H = s.H;
  return {r1 - r0, H, s.t, offset_or_null(s.lengths, r0), offset_or_null(s.xproj, r0 * s.ldg),
          offset_or_null(s.x, r0 * s.ldx), s.ldx, s.products, s.b_ih, s.b_hh, s.b,
          s.h_prev + r0 * H, offset_or_null(s.c_prev, r0 * H),
          s.h_new + r0 * H, offset_or_null(s.c_new, r0 * H),
          offset_or_null(s.gates, r0 * gate_width), s.y + r0 * s.ldy, s.ldy,
          s.rec + r0 * s.ldg, s.ldg, offset_or_null(s.h_t, r0 * H)};
}

template <typename T>
BackStepIO<T> rows_of(const BackStepIO<T>& s, int64_t r0, int64_t r1, int64_t gate_width) {
  const int64_t H = s.H, ldg = s.ldg;
  return {r1 - r0, H, s.t, offset_or_null(s.lengths, r0), s.products,
          offset_or_null(s.dg_next, r0 * ldg), s.pointwise, s.h_prev + r0 * H,
          offset_or_null(s.c_prev, r0 * H), s.h_new + r0 * H, offset_or_null(s.c_new, r0 * H),
          offset_or_null(s.gates, r0 * gate_width), s.dy + r0 * s.lddy, s.lddy, s.dh + r0 * H,
          offset_or_null(s.dc, r0 * H), offset_or_null(s.dgx, r0 * ldg),
          offset_or_null(s.dgh, r0 * ldg), s.scratch + r0 * H, ldg};
}

// A row past its length keeps its state and outputs 0 (units [u0, u1)).
template <typename T>
void carry_row(const StepIO<T>& s, int64_t b, bool has_c, int64_t u0, int64_t u1) {
  const int64_t H = s.H, n = u1 - u0;
  std::memcpy(s.h_new + b * H + u0, s.h_prev + b * H + u0, sizeof(T) * n);
  if (has_c) std::memcpy(s.c_new + b * H + u0, s.c_prev + b * H + u0, sizeof(T) * n);
  std::memset(s.y + b * s.ldy + u0, 0, sizeof(T) * n);
}

// A row past its length gets no gate gradients (units [u0, u1) of each of G gates).
template <typename T>
void zero_gate_row(T* dg, int64_t H, int G, int64_t u0, int64_t u1) {
  for (int k = 0; k < G; ++k) std::memset(dg + k * H + u0, 0, sizeof(T) * (u1 - u0));
}

template <typename IO>
double step_flops(const IO& s, int G) { return 2.0 * s.B * s.H * G * s.H; }

// run(b0, b1) for each run [b0, b1) of consecutive rows of [r0, r1) still running at step t,
// inactive(b) for the others. The pointwise functions take whole runs: one call a row paid a
// call and a loop set-up for each 16-unit row of a unit-split block, and kept rows from
// overlapping one another's latency (LSTM inference T=200 B=128 H=32 ran 3% faster by runs).
template <typename Run, typename Inactive>
void for_row_runs(const int64_t* lengths, int64_t t, int64_t r0, int64_t r1, const Run& run,
                  const Inactive& inactive) {
  for (int64_t b = r0; b < r1;) {
    if (!row_active(lengths, b, t)) {
      inactive(b++);
      continue;
    }
    int64_t end = b + 1;
    while (end < r1 && row_active(lengths, end, t)) ++end;
    run(b, end);
    b = end;
  }
}

// A forward pass over step blocks with one product: the block's share of `a`·W (into rec at
// column `c_offset`; [x | a]·M for a stacked product), then rows(b0, b1, u0, u1) for each run
// [b0, b1) of rows still running and carry for the others. Where `a_t` is scratch (not null)
// and the product reads_a_transposed, `a` is transposed into it first: once a step, not once a
// block (LSTM T=20 B=128 H=1024 cuts each step into 32 blocks).
template <typename T, typename Blocks, typename Rows>
void forward_pass(const StepIO<T>& s, const RecurrentProduct<T>& product, int G, const T* a,
                  int64_t lda, T* a_t, int64_t c_offset, bool has_c, const Blocks& blocks,
                  const Rows& rows) {
  const int64_t k_count = s.H;  // a's columns: every product here is over h's H units
  // A block of its own reads h where it lies: transposing is the whole step's (which is why
  // sequence_cpu.cc's steps_in_one_job leaves such steps a fork-join each).
  const bool transposed = !Blocks::one && !s.x && a_t && product.reads_a_transposed(lda, s.B);
  if (transposed) transpose_rows(a, lda, s.B, k_count, a_t);
  blocks(product, s.B, s.H, step_flops(s, G), [&](const StepBlock& k) {
    T* const rec = s.rec + k.r0 * s.ldg + c_offset;
    if (s.x)
      product.multiply(s.x + k.r0 * s.ldx, s.ldx, a + k.r0 * lda, lda, k.r1 - k.r0, k.u0, k.u1,
                       rec, s.ldg);
    else if (transposed)
      product.multiply_transposed(a_t + k.r0, s.B, k.r1 - k.r0, k.u0, k.u1, rec, s.ldg);
    else
      product.multiply(a + k.r0 * lda, lda, k.r1 - k.r0, k.u0, k.u1, rec, s.ldg, false);
    for_row_runs(
        s.lengths, s.t, k.r0, k.r1, [&](int64_t b0, int64_t b1) { rows(b0, b1, k.u0, k.u1); },
        [&](int64_t b) { carry_row(s, b, has_c, k.u0, k.u1); });
  });
}

// A backward pass over step blocks: dh += dg_next·W for the block (when a step was walked
// before), then rows(b0, b1, u0, u1) for each run of rows still running; the others get zero
// gate gradients in dgx (dgx_blocks blocks of H) and dgh (G).
template <typename T, typename Blocks, typename Rows>
void backward_pass(const BackStepIO<T>& s, const RecurrentProduct<T>& product, int G,
                   int dgx_blocks, const Blocks& blocks, const Rows& rows) {
  const int64_t H = s.H, ldg = s.ldg;
  blocks(product, s.B, H, step_flops(s, G), [&](const StepBlock& k) {
    if (s.dg_next)
      product.multiply(s.dg_next + k.r0 * ldg, ldg, k.r1 - k.r0, k.u0, k.u1, s.dh + k.r0 * H, H,
                       true);
    if (!s.pointwise) return;
    for_row_runs(
        s.lengths, s.t, k.r0, k.r1, [&](int64_t b0, int64_t b1) { rows(b0, b1, k.u0, k.u1); },
        [&](int64_t b) {
          zero_gate_row(s.dgx + b * ldg, H, dgx_blocks, k.u0, k.u1);
          if (s.dgh != s.dgx) zero_gate_row(s.dgh + b * ldg, H, G, k.u0, k.u1);
        });
  });
}

// f(std::true_type) where the step has an input projection to add (xproj), else
// f(std::false_type): a stacked product's sums hold x's part already.
template <typename T, typename F>
void with_projection(const StepIO<T>& s, const F& f) {
  if (s.xproj) f(std::true_type{});
  else f(std::false_type{});
}

// Each step's pointwise math runs in the rows of pointwise_rows.inc, for the instruction set
// this CPU runs (with_rows).
// ---------------------------------------------------------------------------------------------
template <typename T, bool Training>
struct LstmStep {
  static constexpr int G = 4;
  template <typename Blocks>
  static void forward(const StepIO<T>& s, const Blocks& blocks) {
    const int64_t H = s.H, GH = G * H;
    forward_pass(s, s.products->main, G, s.h_prev, H, s.h_t, 0, true, blocks,
                 [&](int64_t b0, int64_t b1, int64_t u0, int64_t u1) {
      with_projection(s, [&](auto projected) {
        with_block_rows<T>(u1 - u0, H, [&](auto rows, auto ahead) {
          rows.template lstm_forward<T, Training, decltype(projected)::value,
                                     decltype(ahead)::value>(
              b1 - b0, H, u1 - u0, s.ldg, offset_or_null(s.xproj, b0 * s.ldg + u0),
              s.rec + b0 * s.ldg + u0, s.b + u0, s.c_prev + b0 * H + u0, s.c_new + b0 * H + u0,
              s.h_new + b0 * H + u0, s.ldy, s.y + b0 * s.ldy + u0,
              Training ? s.gates + b0 * GH + u0 : nullptr);
        });
      });
    });
  }
  template <typename Blocks>
  static void backward(const BackStepIO<T>& s, const Blocks& blocks) {
    const int64_t H = s.H, GH = G * H;
    backward_pass(s, s.products->main, G, G, blocks,
                  [&](int64_t b0, int64_t b1, int64_t u0, int64_t u1) {
      with_block_rows<T>(u1 - u0, H, [&](auto rows, auto ahead) {
        rows.template lstm_backward<T, decltype(ahead)::value>(
            b1 - b0, H, u1 - u0, s.gates + b0 * GH + u0, s.c_prev + b0 * H + u0,
            s.c_new + b0 * H + u0, s.lddy, s.dy + b0 * s.lddy + u0, s.dh + b0 * H + u0,
            s.dc + b0 * H + u0, s.ldg, s.dgx + b0 * s.ldg + u0);
      });
    });
  }
};

// ---------------------------------------------------------------------------------------------
template <typename T, bool Training>
struct GruStep {
  static constexpr int G = 3;
  template <typename Blocks>
  static void forward(const StepIO<T>& s, const Blocks& blocks) {
    const int64_t H = s.H;
    forward_pass(s, s.products->main, G, s.h_prev, H, s.h_t, 0, false, blocks,
                 [&](int64_t b0, int64_t b1, int64_t u0, int64_t u1) {
      with_block_rows<T>(u1 - u0, H, [&](auto rows, auto ahead) {
        rows.template gru_forward<T, Training, decltype(ahead)::value>(
            b1 - b0, H, u1 - u0, s.ldg, s.xproj + b0 * s.ldg + u0, s.rec + b0 * s.ldg + u0,
            s.b_ih + u0, s.b_hh + u0, s.h_prev + b0 * H + u0, s.h_new + b0 * H + u0, s.ldy,
            s.y + b0 * s.ldy + u0, Training ? s.gates + b0 * 4 * H + u0 : nullptr);
      });
    });
  }
  // The recurrent side's gradients differ from the input side's in n (scaled by r): the rows
  // write them to dgh, which the next step multiplies by W_hh, and n's also to a fourth block
  // of dgx's rows, [r, z, n, n's recurrent side], from which the chunk's dW_hn is taken. Turning
  // the chunk's n into the recurrent side afterwards, in place, took a pass over the chunk and
  // its tape gates and a fork-join, and kept a chunk's rows from being taken a batch part at a
  // time, each on one core (sequence_cpu.cc's kRowParts). Alternated in one process (without
  // the parts), in spells whose cores share no L3 training ran 6% faster at T=200 B=128 H=32,
  // 4% at T=20 B=128 H=128, 2% at T=200 B=16 H=128, 2% slower at T=20 B=16 H=512; in the
  // other spells, level at B=16 (H=32, 128, 512), T=20 B=128 H=512, 2% faster at T=20 B=1
  // H=1024. The block adds H values a row to the chunk: T=20 B=16 H=512 peaked at 18.3 MB
  // (torch 21.8).
  static constexpr int kDgxBlocks = 4;
  template <typename Blocks>
  static void backward(const BackStepIO<T>& s, const Blocks& blocks) {
    const int64_t H = s.H;
    backward_pass(s, s.products->main, G, kDgxBlocks, blocks,
                  [&](int64_t b0, int64_t b1, int64_t u0, int64_t u1) {
      with_block_rows<T>(u1 - u0, H, [&](auto rows, auto ahead) {
        rows.template gru_backward<T, decltype(ahead)::value>(
            b1 - b0, H, u1 - u0, s.gates + b0 * 4 * H + u0, s.h_prev + b0 * H + u0, s.lddy,
            s.dy + b0 * s.lddy + u0, s.dh + b0 * H + u0, s.ldg, s.dgx + b0 * s.ldg + u0,
            s.dgh + b0 * s.ldg + u0);
      });
    });
  }
};

// ---------------------------------------------------------------------------------------------
// The reset gate scales h before W_hn, so each step has two recurrent products: (r, z) from h,
// then n from r⊙h, each in its own pass over the step blocks (split by units, n's product
// needs all units of r⊙h).
// Its tape row is (r, z, n, r⊙h); inference uses the same layout as scratch.
template <typename T, bool Training>
struct GruResetBeforeStep {
  static constexpr int G = 3;
  static void forward(const StepIO<T>& s, AllBlocks) {
    const int64_t H = s.H, W = 4 * H;
    const RecurrentProduct<T>& rz = s.products->main;
    const RecurrentProduct<T>& n_gate = s.products->n_gate;
    // Every row, active or not, gets a finite r⊙h: backward multiplies it by zero gradients.
    for_step_blocks(rz, s.B, H, step_flops(s, 2), [&](const StepBlock& k) {
      rz.multiply(s.h_prev + k.r0 * H, H, k.r1 - k.r0, k.u0, k.u1, s.rec + k.r0 * s.ldg, s.ldg,
                  false);
      with_rows([&](auto rows) {
        for (int64_t b = k.r0; b < k.r1; ++b)
          rows.gru_reset_before_forward_rz(
              H, k.u1 - k.u0, s.xproj + b * s.ldg + k.u0, s.rec + b * s.ldg + k.u0,
              s.b_ih + k.u0, s.b_hh + k.u0, s.h_prev + b * H + k.u0, s.gates + b * W + k.u0);
      });
    });
    forward_pass(s, n_gate, 1, s.gates + 3 * H, W, static_cast<T*>(nullptr), 2 * H, false,
                 AllBlocks{},
                 [&](int64_t b0, int64_t b1, int64_t u0, int64_t u1) {
      with_rows([&](auto rows) {
        for (int64_t b = b0; b < b1; ++b)
          rows.gru_reset_before_forward_n(
              H, u1 - u0, s.xproj + b * s.ldg + u0, s.rec + b * s.ldg + u0, s.b_ih + u0,
              s.b_hh + u0, s.h_prev + b * H + u0, s.gates + b * W + u0, s.h_new + b * H + u0,
              s.y + b * s.ldy + u0);
      });
    });
  }
  static void backward(const BackStepIO<T>& s, AllBlocks) {
    const int64_t H = s.H, W = 4 * H;
    const RecurrentProduct<T>& rz = s.products->main;
    const RecurrentProduct<T>& n_gate = s.products->n_gate;
    // dh += dg_next[r, z]·W_h(r,z), then z and n; their rows are zero past a row's length.
    backward_pass(s, rz, G, G, AllBlocks{}, [&](int64_t b0, int64_t b1, int64_t u0, int64_t u1) {
      with_rows([&](auto rows) {
        for (int64_t b = b0; b < b1; ++b)
          rows.gru_reset_before_backward_zn(H, u1 - u0, s.gates + b * W + u0,
                                            s.h_prev + b * H + u0, s.dy + b * s.lddy + u0,
                                            s.dh + b * H + u0, s.dgx + b * s.ldg + u0);
      });
    });
    if (!s.pointwise) return;
    // scratch = dpre_n·W_hn, the gradient reaching r⊙h; then r.
    for_step_blocks(n_gate, s.B, H, step_flops(s, 1), [&](const StepBlock& k) {
      n_gate.multiply(s.dgx + k.r0 * s.ldg + 2 * H, s.ldg, k.r1 - k.r0, k.u0, k.u1,
                      s.scratch + k.r0 * H, H, false);
      with_rows([&](auto rows) {
        for (int64_t b = k.r0; b < k.r1; ++b) {
          if (!row_active(s.lengths, b, s.t)) continue;
          rows.gru_reset_before_backward_r(k.u1 - k.u0, s.gates + b * W + k.u0,
                                           s.h_prev + b * H + k.u0, s.scratch + b * H + k.u0,
                                           s.dh + b * H + k.u0, s.dgx + b * s.ldg + k.u0);
        }
      });
    });
  }
};

// ---------------------------------------------------------------------------------------------
template <typename T, bool Training, bool Relu>
struct RnnStep {
  static constexpr int G = 1;
  template <typename Blocks>
  static void forward(const StepIO<T>& s, const Blocks& blocks) {
    const int64_t H = s.H;
    forward_pass(s, s.products->main, G, s.h_prev, H, s.h_t, 0, false, blocks,
                 [&](int64_t b0, int64_t b1, int64_t u0, int64_t u1) {
      with_projection(s, [&](auto projected) {
        with_block_rows<T>(u1 - u0, H, [&](auto rows, auto ahead) {
          rows.template rnn_forward<T, Relu, decltype(projected)::value,
                                    decltype(ahead)::value>(
              b1 - b0, H, u1 - u0, s.ldg, offset_or_null(s.xproj, b0 * s.ldg + u0),
              s.rec + b0 * s.ldg + u0, s.b + u0, s.h_new + b0 * H + u0, s.ldy,
              s.y + b0 * s.ldy + u0);
        });
      });
    });
  }
  template <typename Blocks>
  static void backward(const BackStepIO<T>& s, const Blocks& blocks) {
    const int64_t H = s.H;
    backward_pass(s, s.products->main, G, G, blocks,
                  [&](int64_t b0, int64_t b1, int64_t u0, int64_t u1) {
      with_block_rows<T>(u1 - u0, H, [&](auto rows, auto ahead) {
        rows.template rnn_backward<T, Relu, decltype(ahead)::value>(
            b1 - b0, H, u1 - u0, s.h_new + b0 * H + u0, s.lddy, s.dy + b0 * s.lddy + u0,
            s.dh + b0 * H + u0, s.ldg, s.dgx + b0 * s.ldg + u0);
      });
    });
  }
};

}  // namespace cpu
}  // namespace fusedrnn
