// The CPU sequence driver: the time loop over cells_cpu.h's steps, in chunks of steps whose input
// projection (forward) and weight gradients and dx (backward) are one GEMM each. A chunk's steps
// are cut over the threads one at a time, or, for a small W_hh, the batch rows are, each thread
// walking its rows through all the chunk's steps (backward) or the whole sequence, projecting
// them itself (forward). Validation and the slot convention are shared with the CUDA driver
// (rnn_common.h).
#include <algorithm>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "blas.h"
#include "cells_cpu.h"
#include "chunk_product.h"
#include "cpu_isa.h"
#include "fusedrnn/rnn.h"
#include "rnn_common.h"
#include "workspace.h"

namespace fusedrnn {
namespace {

// Asks for the cache lines of p[0, n) ahead of their first read.
template <typename T>
void prefetch(const T* p, int64_t n) {
#if defined(__GNUC__)
  for (int64_t i = 0; i < n; i += 64 / int64_t{sizeof(T)}) __builtin_prefetch(p + i, 0, 3);
#else
  static_cast<void>(p), static_cast<void>(n);
#endif
}

using detail::check_backward_args;
using detail::check_cell;
using detail::check_dims;
using detail::check_forward_args;
using detail::check_lengths;
using detail::check_tape_buffers;
using detail::StepPlan;

template <typename T>
T* take_or_null(cpu::Workspace& ws, int64_t count) {
  return count ? ws.take<T>(count) : nullptr;
}

// memmove: a caller may pass the same array as source and destination.
template <typename T>
void copy_or_zero(T* dst, const T* src, int64_t n) {
  if (src) std::memmove(dst, src, sizeof(T) * n);
  else std::memset(dst, 0, sizeof(T) * n);
}

// sums[k] = beta·sums[k] + Σ_rows dg[row, k] for the block of columns [c0, c0 + width) (rows
// ld apart; beta 0 or 1), each column summed in row order.
template <typename T>
void sum_rows(const T* dg, int64_t rows, int64_t ld, int64_t c0, int64_t width, T beta,
              T* sums) {
  // Summed in a buffer of this thread's own and stored once. Summed in db itself, a block
  // wrote the first and last lines of its columns at every row; a NumPy array need not start
  // on a line (the layers' db started 32 and 48 bytes in), so neighbouring blocks shared a
  // line that went back and forth between the cores row by row. On two threads the sums of
  // RNN training T=200 B=128 H=128 took 0.50 ms a call that way (0.33 on one thread), 0.19
  // this way; LSTM B=128 H=512's 12 ms, 4.4.
  constexpr int64_t kPart = 1024;
  alignas(64) T part[kPart];
  for (int64_t p0 = c0; p0 < c0 + width; p0 += kPart) {
    const int64_t n = std::min(kPart, c0 + width - p0);
    if (beta == T(0)) std::fill(part, part + n, T(0));
    else std::copy(sums + p0, sums + p0 + n, part);
    for (int64_t r = 0; r < rows; ++r) {
      const T* FR_R in = dg + r * ld + p0;
      for (int64_t k = 0; k < n; ++k) part[k] += in[k];
    }
    std::copy(part, part + n, sums + p0);
  }
}

// db[k] = beta·db[k] + Σ_rows dg[row, k] (rows ld apart; beta 0 or 1), in blocks of about
// 256 KB: of columns, at least 64 a block (four cache lines of a row), and where too few
// columns make enough of them, of rows too, each part of the rows summed on its own and the
// parts added in order. Cut by the sizes alone, so the bits do not follow the threads. In
// blocks of 256 columns, the 128 of LSTM H=32 were summed by one thread while the other
// waited (LSTM training T=200 B=128 H=32 2-3% slower), but two blocks of 160 KB took longer
// than one (T=20 B=16 H=32 7%); GRU H=32's 96 columns, one block over a 2 MB chunk, kept a
// thread waiting for 4% of GRU training T=200 B=128 H=32.
template <typename T>
void column_sums(const T* dg, int64_t rows, int64_t cols, int64_t ld, T beta, T* db) {
  constexpr int64_t kBlockBytes = int64_t{256} << 10;
  const int64_t bytes = rows * cols * int64_t{sizeof(T)};
  const int64_t wanted = std::clamp<int64_t>(bytes / kBlockBytes, 1, cpu::kMaxBlocks);
  const cpu::Split blocks(cols, std::min(wanted, std::max<int64_t>(1, cols / 64)));
  const cpu::Split parts(rows, std::max<int64_t>(1, wanted / blocks.count));
  std::vector<T> part_sums(parts.count > 1 ? parts.count * cols : 0);
  cpu::parallel_for(blocks.count * parts.count, [&](int64_t task) {
    const int64_t i = task % blocks.count, j = task / blocks.count;
    const int64_t c0 = blocks.begin(i), width = blocks.size(i);
    if (parts.count == 1) return sum_rows(dg, rows, ld, c0, width, beta, db);
    sum_rows(dg + parts.begin(j) * ld, parts.size(j), ld, c0, width, T(0),
             part_sums.data() + j * cols);
  });
  if (parts.count == 1) return;
  for (int64_t k = 0; k < cols; ++k) {
    T sum = beta == T(0) ? T(0) : db[k];
    for (int64_t j = 0; j < parts.count; ++j) sum += part_sums[j * cols + k];
    db[k] = sum;
  }
}

// The walk goes through time in chunks of about kChunkRows rows (steps × B). The forward takes
// each chunk's input projection just before walking it, and the backward takes each chunk's
// weight gradients and dx as soon as it has walked it. Scratch then holds one chunk rather than
// the whole sequence (an LSTM of T=200, B=128, H=1024 kept 420 MB of gate gradients). Against
// GEMMs over all T·B rows, chunks of 2048 rows timed the same within this machine's noise (LSTM
// T=200, H=512, B=16 and 128), and so did 4096 and 1024. 1024 it is: it keeps GRU T=20 B=128
// H=512's training peak at 44 MB, where 2048 peaked at 49 MB and torch at 46 to 55 MB. Chunks
// depend on the sizes only, so results do not depend on threads.
constexpr int64_t kChunkRows = 1024;
// Each chunk's products and passes also cost a fork-join each, which at a small W_hh outweighed
// them: a chunk holds at least kChunkFlops of dW_hh's product (2·rows·G·H·H), and its gate
// gradients at most kMaxChunkBytes. That leaves LSTM from H = 63 up, GRU from 73 and RNN from
// 125 at 1024 rows; LSTM H=32 takes 3906 rows, 2.2 MB. Alternated in one process on a Zen 4,
// training T=200 B=128 H=32 ran 4.5-5% faster (LSTM), 4% (GRU), 40% (RNN; its inference
// 42-54%), GRU T=20 B=128 H=32 7-11%, LSTM T=200 B=16 H=32 5-6%, RNN H=64 3-5%, GRU H=64
// 1-3%; LSTM H=48 level. Peaks stay far under torch's (LSTM T=200 B=128 H=32: 24.6 MB, torch
// 47.1).
constexpr double kChunkFlops = 32e6;
constexpr int64_t kMaxChunkBytes = int64_t{4} << 20;

template <typename Real>
int64_t chunk_rows(Cell cell, int64_t H) {
  const int64_t G = gate_count(cell);
  const int64_t most = kMaxChunkBytes / (cpu::pre_activation_stride<Real>(G * H) * sizeof(Real));
  const auto wanted = static_cast<int64_t>(kChunkFlops / (2.0 * double(G) * double(H * H)));
  return std::max(kChunkRows, std::min(wanted, most));
}

struct Chunk {
  int64_t s0, s1;     // walk indices [s0, s1)
  int64_t t0, steps;  // the same steps as times [t0, t0 + steps)
};

class Chunks {
 public:
  Chunks(int64_t T, int64_t B, int64_t rows, bool reverse)
      : T_(T), reverse_(reverse), steps_(std::clamp<int64_t>((rows + B - 1) / B, 1, T)) {}
  int64_t steps() const { return steps_; }
  int64_t count() const { return (T_ + steps_ - 1) / steps_; }
  Chunk operator[](int64_t c) const {
    const int64_t s0 = c * steps_, s1 = std::min(T_, s0 + steps_);
    return {s0, s1, reverse_ ? T_ - s1 : s0, s1 - s0};
  }

 private:
  int64_t T_;
  bool reverse_;
  int64_t steps_;
};

// The chunks of a call of `cell` over d's sizes (chunk_rows rows each).
template <typename Real>
Chunks chunks_of(Cell cell, const Dims& d, bool reverse) {
  return Chunks(d.T, d.B, chunk_rows<Real>(cell, d.H), reverse);
}

// Where the backward's walk gives each thread batch rows of its own (a W_hh of at most
// kRowSplitBytes: cells_cpu.h's walk_row_blocks), each chunk's weight gradients, bias sums and dx
// keep to those rows too. The batch is cut into kRowParts parts of consecutive rows; the chunk's
// gate gradients lie part by part (a part's rows of all the chunk's steps together); each part's
// weight gradients are one product over its rows, on the thread whose slice held those rows in
// the walk (the pool deals part i to it), x's and h's rows packed from their runs (RowRuns); its
// dx is a product a step; each weight gradient is summed per part over the call, the first part
// into the gradients themselves, and the other parts are added in order at the end. The parts
// are fixed by sizes alone, so the bits do not depend on the threads (they differ from the whole
// products' by rounding).
//
// Cut by gate rows and by steps instead, every thread read the gate gradients, x and h of every
// row, half of them written on the other core. A 2-core Zen 4 VM whose vCPUs share no L3 for
// spells of a minute or so (a cache line's round trip 300-370 ns, against 55-90) pays for that.
// Alternated in one process against the whole products, in such spells training ran 5-39%
// faster: LSTM T=200 B=128 H=32 0.733, GRU 0.615-0.643 (both a product a step), RNN T=200 B=16
// H=128 0.694-0.731, GRU 0.823-0.859, LSTM T=200 B=16 H=32 0.870-0.882, T=20 H=128 0.951-0.955,
// T=200 B=64 H=64 0.741, GRU T=20 B=32 H=128 0.868. In the other spells level: LSTM B=16 T=200
// H=128 1.000, T=20 1.009, T=20 H=32 0.936, B=64 H=64 0.991, GRU B=128 0.935-1.025 (a product a
// step). A product a step (rows B/2 apart) was the first cut; over the chunk, B=128 ran level to
// it in fast spells (LSTM H=32 1.000, H=128 0.990) and faster in slow ones (GRU H=32 0.903, RNN
// H=128 0.941); at B=16 a product a step (parts of 8 rows) had run 13-20% slower than the whole
// products.
//
// Where the parts are not taken: a larger W_hh, whose products are large enough whole and lost
// more in steps than they gained (LSTM T=20 B=128 H=512 1.084, RNN T=20 B=128 H=1024 1.017); BLAS
// (AVX2), which packs again at every small call; batches of fewer than kRowParts·kMinPartRows
// rows (not measured); the reset-before GRU, whose dW_hn reads r⊙h, a third product a part (not
// measured); and calls whose parts' sums (the gradients' size, for each part but the first) are
// more than a kTapePerPartSums-th of the tape: LSTM training T=20 B=16 H=128 (a tape of 1 MB)
// peaked at 4.1 MB with two parts' sums, over torch's 3.6, and at 3.1 MB with the whole products.
// GRU's parts take dW_hn by h from its rows' fourth block (GruStep), beside dW_hh's r and z.
constexpr int64_t kRowParts = 2;
constexpr int64_t kMinPartRows = 8;
constexpr int64_t kTapePerPartSums = 8;
// Elements of one part's sums: dW_ih, dW_hh, db_ih, then GRU's db_hn.
int64_t part_elements(Cell cell, const Dims& d) {
  const int64_t GH = gate_count(cell) * d.H;
  return GH * d.I + GH * d.H + GH + (cell == Cell::GRU ? d.H : 0);
}
template <typename Real>
bool takes_row_parts(Cell cell, const Dims& d) {
  const bool measured = cell != Cell::GRU_RESET_BEFORE;
  const int64_t w_hh_bytes = d.H * gate_count(cell) * d.H * int64_t{sizeof(Real)};
  const auto sums_bytes = static_cast<std::size_t>((kRowParts - 1) * part_elements(cell, d)) *
                          sizeof(Real);
  return measured && cpu::packed_kernel_beats_blas() && d.B >= kRowParts * kMinPartRows &&
         w_hh_bytes <= cpu::kRowSplitBytes &&
         sums_bytes * kTapePerPartSums <= detail::tape_bytes(cell, d, false, sizeof(Real));
}

// Whether a walk's steps, each cut into `cut`'s blocks, run in one job of the pool
// (cpu::parallel_steps) rather than a fork-join a step: where a step is cut at all, is one pass
// (not GRU_RESET_BEFORE's two), transposes no h first, and the walk is not itself a chunk of a
// parallel loop (a bidirectional layer's direction), where each step runs whole on its thread.
inline bool steps_in_one_job(Cell cell, const cpu::StepCut& cut, bool transposes) {
  return cut.blocks > 1 && cell != Cell::GRU_RESET_BEFORE && !transposes &&
         !cpu::inside_parallel_loop();
}

template <template <typename, bool> class Step, typename T>
struct Dispatch {
  template <typename Blocks>
  static void forward(const cpu::StepIO<T>& s, bool training, const Blocks& blocks) {
    training ? Step<T, true>::forward(s, blocks) : Step<T, false>::forward(s, blocks);
  }
  template <typename Blocks>
  static void backward(const cpu::BackStepIO<T>& s, const Blocks& blocks) {
    Step<T, true>::backward(s, blocks);
  }
};

template <typename T, bool Training>
using RnnTanhStep = cpu::RnnStep<T, Training, false>;
template <typename T, bool Training>
using RnnReluStep = cpu::RnnStep<T, Training, true>;

// A step's blocks (cpu::AllBlocks), or one of them (cpu::OneBlock: never GRU_RESET_BEFORE's,
// whose steps are two passes; see steps_in_one_job).
template <typename T, typename Blocks = cpu::AllBlocks>
void step_forward(Cell cell, const cpu::StepIO<T>& s, bool training, const Blocks& blocks = {}) {
  switch (cell) {
    case Cell::LSTM: return Dispatch<cpu::LstmStep, T>::forward(s, training, blocks);
    case Cell::GRU: return Dispatch<cpu::GruStep, T>::forward(s, training, blocks);
    case Cell::GRU_RESET_BEFORE:
      if constexpr (Blocks::one) detail::fail("step_forward: GRU_RESET_BEFORE steps in passes");
      else return Dispatch<cpu::GruResetBeforeStep, T>::forward(s, training, blocks);
    case Cell::RNN_TANH: return Dispatch<RnnTanhStep, T>::forward(s, training, blocks);
    case Cell::RNN_RELU: return Dispatch<RnnReluStep, T>::forward(s, training, blocks);
  }
}

template <typename T, typename Blocks = cpu::AllBlocks>
void step_backward(Cell cell, const cpu::BackStepIO<T>& s, const Blocks& blocks = {}) {
  switch (cell) {
    case Cell::LSTM: return Dispatch<cpu::LstmStep, T>::backward(s, blocks);
    case Cell::GRU: return Dispatch<cpu::GruStep, T>::backward(s, blocks);
    case Cell::GRU_RESET_BEFORE:
      if constexpr (Blocks::one) detail::fail("step_backward: GRU_RESET_BEFORE steps in passes");
      else return Dispatch<cpu::GruResetBeforeStep, T>::backward(s, blocks);
    case Cell::RNN_TANH: return Dispatch<RnnTanhStep, T>::backward(s, blocks);
    case Cell::RNN_RELU: return Dispatch<RnnReluStep, T>::backward(s, blocks);
  }
}

}  // namespace

template <typename T>
Tape<T>::Tape(Cell cell, const Dims& dims, bool reverse, const int64_t* lengths)
    : cell_(cell), dims_(dims), reverse_(reverse) {
  check_cell(cell);
  check_dims(cell, dims);
  check_lengths(lengths, dims);
  if (lengths) lengths_.assign(lengths, lengths + dims.B);
  const int64_t slots = (dims.T + 1) * dims.B * dims.H;
  const int64_t c_slots = has_cell_state(cell) ? slots : 0;
  const int64_t gate_values = dims.T * dims.B * tape_gate_width(cell) * dims.H;
  const int64_t values = slots + c_slots + gate_values;
  owned_ = cpu::KeptMemory::tapes().take(sizeof(T) * static_cast<std::size_t>(values),
                                         &owned_bytes_);
  T* const block = reinterpret_cast<T*>(owned_.get());  // new[]'s alignment suits any T
  buffers_.h_states = block;
  buffers_.c_states = c_slots ? block + slots : nullptr;
  buffers_.gates = gate_values ? block + slots + c_slots : nullptr;
}

template <typename T>
Tape<T>::~Tape() {
  if (owned_) cpu::KeptMemory::tapes().give_back(std::move(owned_), owned_bytes_);
}

OutputBuffer::OutputBuffer(std::size_t bytes)
    : block_(cpu::KeptMemory::outputs().take(bytes + kAlignment - 1, &capacity_)) {}

OutputBuffer::~OutputBuffer() {
  cpu::KeptMemory::outputs().give_back(std::move(block_), capacity_);
}

template <typename T>
Tape<T>::Tape(Cell cell, const Dims& dims, bool reverse, const int64_t* lengths,
              const TapeBuffers<T>& buffers)
    : cell_(cell), dims_(dims), reverse_(reverse), buffers_(buffers) {
  check_cell(cell);
  check_dims(cell, dims);
  check_lengths(lengths, dims);
  if (lengths) lengths_.assign(lengths, lengths + dims.B);
  check_tape_buffers(cell, buffers.h_states, buffers.c_states, buffers.gates);
}

template <typename T>
std::size_t Tape<T>::bytes_for(Cell cell, const Dims& d, bool with_lengths) {
  return detail::tape_bytes(cell, d, with_lengths, sizeof(T));
}

template <typename T>
std::size_t Tape<T>::bytes() const {
  return bytes_for(cell_, dims_, !lengths_.empty());
}

// The sizes of a backward's scratch (elements), by the call's sizes alone.
template <typename Real>
struct BackwardScratch {
  BackwardScratch(Cell cell, const Dims& d, bool has_dy, bool has_dx) {
    using Products = cpu::StepProducts<Real>;
    const int64_t B = d.B, H = d.H;
    const int64_t rows = chunks_of<Real>(cell, d, false).steps() * B;
    ldg = cpu::pre_activation_stride<Real>(dgx_blocks(cell) * H);
    chunk = rows * ldg;
    // GRU's recurrent gate gradients differ from the input side's (n's reset): its steps write
    // them to two alternating step buffers too (see backward).
    dgh_steps = cell == Cell::GRU ? 2 * B * ldg : 0;
    carry = B * ldg;
    state = B * H;
    no_dy = has_dy ? 0 : B * H;
    main_packing = Products::main_packing(cell, H, B, d.T, false);
    n_gate_packing = Products::n_gate_packing(cell, H, B, d.T, false);
    const bool row_parts = takes_row_parts<Real>(cell, d);
    dx_packing = has_dx ? cpu::ChunkProduct<Real>::packing_size(dx_shape(cell, d),
                                                                dx_reading(cell, d, row_parts))
                        : 0;
    if (!row_parts) {
      // The weight gradients' M, x or h of a chunk, packed by groups for each product in turn.
      m_packing = std::max(cpu::ChunkProduct<Real>::packing_size({false, rows, 1, d.I}),
                           cpu::ChunkProduct<Real>::packing_size({false, rows, 1, H}));
    } else {
      // The sums of dW_ih, dW_hh and db of each part but the first (which sums into the
      // gradients), and each part's own packing of its x or h over the chunk (dx's W_ih is
      // packed whole, dx_reading, read by every part at once).
      part_sums = (kRowParts - 1) * part_elements(cell, d);
      const int64_t part_rows = rows / B * ((B + kRowParts - 1) / kRowParts);  // all steps'
      part_packing = kRowParts *
                     std::max(cpu::ChunkProduct<Real>::packing_size({false, part_rows, 1, d.I}),
                              cpu::ChunkProduct<Real>::packing_size({false, part_rows, 1, H}));
    }
  }
  // Blocks of H in a row of the chunk's gate gradients: GRU's rows hold n's recurrent side too.
  static int dgx_blocks(Cell cell) {
    return cell == Cell::GRU ? cpu::GruStep<Real, true>::kDgxBlocks : gate_count(cell);
  }
  // dx by rows_axpys where a chunk has few rows (ChunkProduct::axpys_pay; the same bits).
  static typename cpu::ChunkProduct<Real>::Reading dx_reading(Cell cell, const Dims& d,
                                                              bool row_parts) {
    using Product = cpu::ChunkProduct<Real>;
    const int64_t rows = chunks_of<Real>(cell, d, false).steps() * d.B;
    if (row_parts) return Product::Reading::whole;
    return Product::axpys_pay(dx_shape(cell, d), rows) ? Product::Reading::axpys
                                                       : Product::Reading::groups;
  }
  static cpu::ProductShape dx_shape(Cell cell, const Dims& d) {  // dG·W_ih
    return {false, gate_count(cell) * d.H, 1, d.I};
  }
  std::size_t bytes() const {
    return cpu::Workspace::bytes_for<Real>({chunk, dgh_steps, carry, state, no_dy, main_packing,
                                            n_gate_packing, dx_packing, m_packing, part_sums,
                                            part_packing});
  }
  int64_t ldg, chunk, dgh_steps, carry, state, no_dy, main_packing, n_gate_packing, dx_packing,
      m_packing = 0, part_sums = 0, part_packing = 0;
};

template <typename Real>
void forward(const ForwardArgs<Real>& a) {
  check_forward_args(a, a.lengths);
  const Dims& d = a.dims;
  const bool has_c = has_cell_state(a.cell);

  const int64_t T = d.T, B = d.B, H = d.H, G = gate_count(a.cell), GH = G * H, BH = B * H;
  const bool training = a.tape != nullptr;
  // LSTM and RNN add both biases to one pre-activation: their rows take the sum (StepIO::b).
  const int64_t b_sum_size = a.cell == Cell::GRU || a.cell == Cell::GRU_RESET_BEFORE ? 0 : GH;

  // Training walks the tape's state slots; inference alternates between two scratch slots (a
  // step never writes the slot it reads, which the restrict row loops rely on).
  const int64_t width = tape_gate_width(a.cell) * H;
  const int64_t gates_scratch = !training && a.cell == Cell::GRU_RESET_BEFORE ? B * width : 0;
  const int64_t states_scratch = training ? 0 : (has_c ? 4 : 2) * BH;
  using Products = cpu::StepProducts<Real>;
  // A small LSTM or RNN takes x's product in each step's (StepProducts::stacks_input): no
  // projection, and no xproj.
  const bool stacked = Products::stacks_input(a.cell, d.I, H, B);
  const int64_t main_packing =
      stacked ? cpu::packed_elements<Real>(Products::stacked_shape(a.cell, d.I, H))
              : Products::main_packing(a.cell, H, B, T, true);
  const int64_t n_gate_packing = Products::n_gate_packing(a.cell, H, B, T, true);
  const cpu::ProductShape projection_shape{true, d.I, G, H};  // x·W_ihᵀ
  const Chunks chunks = chunks_of<Real>(a.cell, d, a.reverse);
  const double recurrent_flops = 2.0 * double(B) * double(GH) * double(H);  // a step's
  // Where the walk splits the batch rows (small W_hh: StepProducts::walk_row_blocks), each row
  // block goes through the whole sequence on one thread, projecting its own rows of x a step at
  // a time (W_ih packed once, as W_hh; or in the step's product, stacked): one fork-join a
  // call, where a projection and a walk fork-joined at every chunk. While this machine ran slow
  // (fork-joins dear), LSTM inference T=200 B=128 H=32 took 2.85-2.92 ms that way and 2.34-2.42
  // this way, T=20 B=128 H=128 2.10-2.17 against 1.65-1.87; when it ran fast, both ways took the
  // same.
  // A W_hh read from L3 is walked by rows in inference, or where the step's product takes x's
  // too (stacked): else its walk packs W_ih whole, which training's peak memory has no room for
  // (see chunk_product.h). Only with the kernel that also runs the chunks' projections, so that
  // the cut changes no bit.
  const bool walk_from_l3 = (!training || stacked) && cpu::packed_kernel_beats_blas();
  const int64_t walk_blocks = Products::walk_row_blocks(
      a.cell, H, B, T, true, chunks.steps() * recurrent_flops, walk_from_l3);
  const bool rows_walk_alone = walk_blocks > 1;
  // Training packs W_ih a group of panels at a time for each chunk, which keeps its peak under
  // torch's (chunk_product.h); inference has no such target and packs it whole, once: LSTM
  // T=200 B=16 H=512 31.7 -> 31.2 ms, GRU 23.3 -> 23.0 (alternated in one process).
  // A batch of one over a few steps reads W_ih by dot products rather than packing it (see
  // ChunkProduct::dots_pay). Only B=1, whose shorter calls' steps (row_dots) have bits of their
  // own already: the rows of a batch of two or more keep the bits the same rows get in any
  // other such batch (test_kernels), which dots, summed in an order of their own, would not.
  using ProjectionProduct = cpu::ChunkProduct<Real>;
  const auto projection_reading =
      !training && chunks.count() > 1 ? ProjectionProduct::Reading::whole
      : B == 1 && ProjectionProduct::dots_pay(projection_shape, chunks.steps())
          ? ProjectionProduct::Reading::dots
          : ProjectionProduct::Reading::groups;
  const int64_t projection_packing =
      stacked ? 0
      : rows_walk_alone
          ? cpu::RecurrentProduct<Real>::packing_size(projection_shape, B / walk_blocks, T)
          : ProjectionProduct::packing_size(projection_shape, projection_reading);
  const int64_t ldg = cpu::pre_activation_stride<Real>(GH);
  const int64_t xproj_size = stacked ? 0 : chunks.steps() * B * ldg;
  // Room for h_prev transposed, where the steps' products read it so (cells_cpu.h's
  // forward_pass; the walk's row blocks take their rows' share).
  const bool h_transposed = !stacked && cpu::RecurrentProduct<Real>::reads_a_transposed(
                                            Products::main_shape(a.cell, H, true),
                                            main_packing > 0, H, B);
  const int64_t h_t_size = h_transposed ? BH : 0;
  // Training reserves its backward's scratch too: the scratch block then need not grow between
  // the two while the tape is held (the freed block often stays with malloc), and pages the
  // forward never touches cost nothing. LSTM T=20 B=16 H=128, whose forward stacks its
  // products and asks for less than its backward, peaked at 2.6 MB without it (torch 2.4).
  const std::size_t forward_bytes = cpu::Workspace::bytes_for<Real>(
      {xproj_size, B * ldg, a.weights.b_ih ? 0 : GH, b_sum_size, gates_scratch, states_scratch,
       main_packing, n_gate_packing, projection_packing, h_t_size});
  const std::size_t backward_bytes =
      training ? BackwardScratch<Real>(a.cell, d, false, true).bytes() : std::size_t{0};
  cpu::Workspace ws(std::max(forward_bytes, backward_bytes));
  Real* xproj = take_or_null<Real>(ws, xproj_size);
  Real* rec = ws.take<Real>(B * ldg);
  Real* no_bias = a.weights.b_ih ? nullptr : ws.take<Real>(GH);
  if (no_bias) std::fill(no_bias, no_bias + GH, Real(0));
  Real* b_sum = take_or_null<Real>(ws, b_sum_size);
  Real* scratch_gates = ws.take<Real>(gates_scratch);
  Real* scratch_states = ws.take<Real>(states_scratch);
  Real* const packing = take_or_null<Real>(ws, main_packing);
  const Products products =
      stacked ? Products(a.cell, d.I, H, a.weights.w_ih, a.weights.w_hh, packing)
              : Products(a.cell, H, true, a.weights.w_hh, packing,
                         take_or_null<Real>(ws, n_gate_packing));
  Real* w_ih_packing = take_or_null<Real>(ws, projection_packing);
  Real* h_t = take_or_null<Real>(ws, h_t_size);

  const Real* b_ih = a.weights.b_ih ? a.weights.b_ih : no_bias;
  const Real* b_hh = a.weights.b_hh ? a.weights.b_hh : no_bias;
  for (int64_t i = 0; i < b_sum_size; ++i) b_sum[i] = b_ih[i] + b_hh[i];
  Real* hs = training ? a.tape->h_states() : scratch_states;
  Real* cs = training ? a.tape->c_states() : has_c ? scratch_states + 2 * BH : nullptr;
  const auto slots = [&](int64_t s) {
    const StepPlan p(s, T, a.reverse);
    return training ? p : StepPlan{p.t, s % 2, (s + 1) % 2};
  };
  copy_or_zero(hs + slots(0).read * BH, a.h0, BH);
  if (has_c) copy_or_zero(cs + slots(0).read * BH, a.c0, BH);

  const auto step_io = [&](int64_t s, const Chunk& k) {
    const StepPlan p = slots(s);
    return cpu::StepIO<Real>{B, H, p.t, a.lengths,
                             stacked ? nullptr : xproj + (p.t - k.t0) * B * ldg,
                             stacked ? a.x + p.t * B * d.I : nullptr, d.I, &products,
                             b_ih, b_hh, b_sum, hs + p.read * BH,
                             has_c ? cs + p.read * BH : nullptr, hs + p.write * BH,
                             has_c ? cs + p.write * BH : nullptr,
                             training ? a.tape->gates() + p.t * B * width : scratch_gates,
                             a.y + p.t * B * a.ldy, a.ldy, rec, ldg, h_t};
  };
  // A stacked product's tiles read x a k at a time across 10-12 rows, and an x from beyond L2
  // reached them late: each row block asks for its rows of the next step's x before a step.
  // Alternated in one process on a Zen 5, T=200 B=128: inference ran 7-10% faster for RNN
  // H=128, 9-11% for LSTM H=32 and 2% for LSTM H=128; training 5% for LSTM H=32, 1-6% for RNN
  // H=128; level at B=16 H=512, at T=20 and bidirectional. An x that stays in L2 (B=16 H=32)
  // is not asked for. Asking for the next step's rows of x before a walk's projection too ran
  // GRU inference B=128 H=128 1-3% faster but H=512 3% slower; for the tape's and dy's rows of
  // the backward's next step (into L2 or L1), training at H=128 2-4% slower.
  const bool prefetch_x =
      stacked && T * B * d.I * int64_t{sizeof(Real)} > cpu::l2_cache_bytes() / 2;
  if (rows_walk_alone) {
    const auto project = stacked ? cpu::RecurrentProduct<Real>()
                                 : cpu::RecurrentProduct<Real>(projection_shape, a.weights.w_ih,
                                                               d.I, w_ih_packing);
    cpu::parallel_for(walk_blocks, [&](int64_t i) {
      const int64_t r0 = B * i / walk_blocks, r1 = B * (i + 1) / walk_blocks;
      for (int64_t c = 0; c < chunks.count(); ++c) {
        const Chunk k = chunks[c];
        if (!stacked)
          for (int64_t t = k.t0; t < k.t0 + k.steps; ++t)
            project.multiply(a.x + (t * B + r0) * d.I, d.I, r1 - r0, 0, H,
                             xproj + ((t - k.t0) * B + r0) * ldg, ldg, false);
        for (int64_t s = k.s0; s < k.s1; ++s) {
          if (prefetch_x && s + 1 < T)
            prefetch(a.x + (slots(s + 1).t * B + r0) * d.I, (r1 - r0) * d.I);
          step_forward(a.cell, cpu::rows_of(step_io(s, k), r0, r1, width), training);
        }
      }
    });
  } else {
    // Steps [s0, s1) of chunk k, their blocks in one job where they can be (steps_in_one_job).
    const cpu::StepCut cut = cpu::step_cut(products.main, B, H, recurrent_flops);
    const bool one_job = steps_in_one_job(a.cell, cut,
                                          !stacked && products.main.reads_a_transposed(H, B));
    const auto walk = [&](const Chunk& k, int64_t s0, int64_t s1) {
      if (one_job)
        cpu::parallel_steps(s1 - s0, cut.blocks, [&](int64_t i, int64_t block) {
          step_forward(a.cell, step_io(s0 + i, k), training, cpu::OneBlock{cut, block});
        });
      else
        for (int64_t s = s0; s < s1; ++s) step_forward(a.cell, step_io(s, k), training);
    };
    if (stacked) {
      walk(chunks[0], 0, T);
    } else {
      const ProjectionProduct project(projection_shape, a.weights.w_ih, d.I, w_ih_packing,
                                      projection_reading);
      for (int64_t c = 0; c < chunks.count(); ++c) {
        const Chunk k = chunks[c];
        project(a.x + k.t0 * B * d.I, d.I, false, k.steps * B, xproj, ldg, false);
        walk(k, k.s0, k.s1);
      }
    }
  }

  const int64_t last = slots(T - 1).write;
  std::memcpy(a.h_n, hs + last * BH, sizeof(Real) * BH);
  if (has_c) std::memcpy(a.c_n, cs + last * BH, sizeof(Real) * BH);
}

template <typename Real>
void backward(const BackwardArgs<Real>& a) {
  check_backward_args(a);
  const Tape<Real>& tape = *a.tape;
  const Cell cell = tape.cell();
  const Dims& d = tape.dims();
  const bool has_c = has_cell_state(cell), has_bias = a.weights.b_ih != nullptr;

  const int64_t T = d.T, B = d.B, I = d.I, H = d.H, G = gate_count(cell), GH = G * H, BH = B * H;
  const int64_t width = tape_gate_width(cell) * H;
  // GRU's recurrent gate gradients differ from the input side's (n's reset): its steps write
  // them to two alternating step buffers, for the next step's product, and n's to a fourth
  // block of the chunk's rows too, for dW_hn (GruStep). The other cells' are the input side's.
  const bool own_dgh = cell == Cell::GRU;
  const int64_t n_recurrent = 3 * H;  // that block's first column in GRU's rows
  const Chunks chunks = chunks_of<Real>(cell, d, tape.reverse());
  const BackwardScratch<Real> sizes(cell, d, a.dy != nullptr, a.dx != nullptr);
  const int64_t ldg = sizes.ldg;
  using Products = cpu::StepProducts<Real>;
  cpu::Workspace ws(sizes.bytes());
  Real* dgx = ws.take<Real>(sizes.chunk);
  Real* dgh_steps = take_or_null<Real>(ws, sizes.dgh_steps);  // GRU's only
  // The recurrent gate gradients of the last step walked in a chunk, which the first step of the
  // next chunk multiplies by W_hh after the chunk's buffers are reused.
  Real* dg_carry = ws.take<Real>(sizes.carry);
  Real* scratch = ws.take<Real>(sizes.state);
  // No dy means zeros: one zero row block read at every step keeps the row loops branch-free.
  Real* no_dy = take_or_null<Real>(ws, sizes.no_dy);
  if (no_dy) std::fill(no_dy, no_dy + BH, Real(0));
  const Products products(cell, H, false, a.weights.w_hh,
                          take_or_null<Real>(ws, sizes.main_packing),
                          take_or_null<Real>(ws, sizes.n_gate_packing));
  // Without dx (an input that needs no gradient) a quarter of the backward's flops go.
  const bool row_parts = takes_row_parts<Real>(cell, d);
  std::optional<cpu::ChunkProduct<Real>> input_grads;
  if (a.dx)
    input_grads.emplace(BackwardScratch<Real>::dx_shape(cell, d), a.weights.w_ih, I,
                        take_or_null<Real>(ws, sizes.dx_packing),
                        BackwardScratch<Real>::dx_reading(cell, d, row_parts));
  Real* m_packed = take_or_null<Real>(ws, sizes.m_packing);
  Real* part_sums = take_or_null<Real>(ws, sizes.part_sums);
  Real* part_packing = take_or_null<Real>(ws, sizes.part_packing);
  // Where each part's sums go: dW_ih, dW_hh, db_ih, GRU's db_hn (the first part's, the gradients).
  struct PartSums {
    Real *dw_ih, *dw_hh, *db, *db_hn;
  };
  const auto part_sums_of = [&](int64_t part) {
    if (part == 0) return PartSums{a.dw_ih, a.dw_hh, a.db_ih, own_dgh ? a.db_hh + 2 * H : nullptr};
    Real* const dw_ih = part_sums + (part - 1) * part_elements(cell, d);
    return PartSums{dw_ih, dw_ih + GH * I, dw_ih + GH * I + GH * H, dw_ih + GH * I + GH * H + GH};
  };
  if (row_parts) {
    std::fill(part_sums, part_sums + sizes.part_sums, Real(0));
    std::fill(a.dw_ih, a.dw_ih + GH * I, Real(0));
    std::fill(a.dw_hh, a.dw_hh + GH * H, Real(0));
    if (has_bias) std::fill(a.db_ih, a.db_ih + GH, Real(0));
    if (has_bias && own_dgh) std::fill(a.db_hh + 2 * H, a.db_hh + 3 * H, Real(0));
  }
  const double recurrent_flops = 2.0 * double(B) * double(GH) * double(H);  // a step's
  copy_or_zero(a.dh0, a.dh_n, BH);  // dh0/dc0 carry the running gradient through the walk
  if (has_c) copy_or_zero(a.dc0, a.dc_n, BH);

  const Real* hs = tape.h_states();
  const Real* cs = tape.c_states();
  // The state entering time t sits in slot t (forward) or t+1 (reverse).
  const Real* h_read = hs + (tape.reverse() ? BH : 0);
  // Each step first adds the recurrent gradient of the step walked before it (cells_cpu.h).
  const Real* dg_next = nullptr;
  // Step s's arrays, its gate gradients left null (walk_rows sets them, by their layout).
  const auto step_io = [&](int64_t s, const Real* dg_prior) {
    const StepPlan p(std::max<int64_t>(s, 0), T, tape.reverse());
    return cpu::BackStepIO<Real>{B, H, p.t, tape.lengths(), &products, dg_prior, s >= 0,
                                 hs + p.read * BH, has_c ? cs + p.read * BH : nullptr,
                                 hs + p.write * BH, has_c ? cs + p.write * BH : nullptr,
                                 width ? tape.gates() + p.t * B * width : nullptr,
                                 a.dy ? a.dy + p.t * B * a.lddy : no_dy, a.dy ? a.lddy : H, a.dh0,
                                 has_c ? a.dc0 : nullptr, nullptr, nullptr, scratch, ldg};
  };
  // The batch rows' parts (see kRowParts): [part_begin(p), part_begin(p + 1)); one part, the
  // whole batch, without them.
  const int64_t parts = row_parts ? kRowParts : 1;
  const auto part_begin = [&](int64_t p) { return B * p / parts; };
  // Row b of time t among chunk k's gate gradients (the input side's): each part's rows of all
  // the chunk's steps together, a step's rows after the step before's.
  const auto gate_row = [&](const Chunk& k, int64_t t, int64_t b) {
    int64_t p = parts - 1;
    while (part_begin(p) > b) --p;
    const int64_t r0 = part_begin(p), rows = part_begin(p + 1) - r0;
    return dgx + (k.steps * r0 + (t - k.t0) * rows + b - r0) * ldg;
  };
  // Row b of the recurrent side's gradients of walk step s: GRU's in its two step buffers, the
  // other cells' the input side's.
  const auto recurrent_row = [&](const Chunk& k, int64_t s, int64_t b) {
    return own_dgh ? dgh_steps + ((s % 2) * B + b) * ldg
                   : gate_row(k, StepPlan(s, T, tape.reverse()).t, b);
  };
  // Step s of chunk k over rows [b0, b1) of one part, the first step walked from dg_next.
  const auto walk_io = [&](const Chunk& k, int64_t s, int64_t b0, int64_t b1) {
    cpu::BackStepIO<Real> io = cpu::rows_of(step_io(s, nullptr), b0, b1, width);
    io.dg_next = s == k.s1 - 1 ? (dg_next ? dg_next + b0 * ldg : nullptr)
                               : recurrent_row(k, s + 1, b0);
    io.dgx = gate_row(k, StepPlan(s, T, tape.reverse()).t, b0);
    io.dgh = recurrent_row(k, s, b0);
    return io;
  };
  // Chunk k's steps walked backwards over batch rows [r0, r1); each step a part's rows at a
  // time, which lie together.
  const auto walk_rows = [&](const Chunk& k, int64_t r0, int64_t r1) {
    for (int64_t s = k.s1 - 1; s >= k.s0; --s) {
      for (int64_t b0 = r0; b0 < r1;) {
        int64_t b1 = r1;
        for (int64_t p = 1; p < parts; ++p)
          if (part_begin(p) > b0) b1 = std::min(b1, part_begin(p));
        step_backward(cell, walk_io(k, s, b0, b1));
        b0 = b1;
      }
    }
  };
  // A walk of the whole batch whose steps are cut (the walk's one row block) runs its steps'
  // blocks in one job where it can (steps_in_one_job).
  const cpu::StepCut cut = cpu::step_cut(products.main, B, H, recurrent_flops);
  const bool one_job = parts == 1 && steps_in_one_job(cell, cut, false);

  // The weight gradients' sums over parts of k (where parallel_gemm cuts a small dW that way),
  // kept over all chunks and added once at the end. GRU_RESET_BEFORE's n gate has its own.
  const bool n_apart = cell == Cell::GRU_RESET_BEFORE || own_dgh;  // dW_hn its own product
  const int64_t hh_rows = n_apart ? 2 * H : GH;
  cpu::KPartSums<Real> ih_parts(GH, I), hh_parts(hh_rows, H), hn_parts(H, H);
  for (int64_t c = chunks.count() - 1; c >= 0; --c) {
    const Chunk k = chunks[c];
    const double chunk_flops = k.steps * recurrent_flops;
    if (one_job && products.walk_row_blocks(B, k.steps, chunk_flops,
                                            cpu::packed_kernel_beats_blas()) == 1)
      cpu::parallel_steps(k.steps, cut.blocks, [&](int64_t i, int64_t block) {
        step_backward(cell, walk_io(k, k.s1 - 1 - i, 0, B), cpu::OneBlock{cut, block});
      });
    else
      products.for_walk_rows(B, k.steps, chunk_flops, cpu::packed_kernel_beats_blas(),
                             [&](int64_t r0, int64_t r1) { walk_rows(k, r0, r1); });
    for (int64_t p = 0; p < parts; ++p) {
      const int64_t r0 = part_begin(p), rows = part_begin(p + 1) - r0;
      std::memcpy(dg_carry + r0 * ldg, recurrent_row(k, k.s0, r0), sizeof(Real) * rows * ldg);
    }
    dg_next = dg_carry;

    if (row_parts) {
      // The chunk's weight gradients, bias sums and dx, part by part (see kRowParts).
      const int64_t packing_size = sizes.part_packing / kRowParts;
      const Real* x = a.x + k.t0 * B * I;
      const Real* h = h_read + k.t0 * BH;
      cpu::parallel_for(kRowParts, [&](int64_t part) {
        const int64_t r0 = part_begin(part), rows = part_begin(part + 1) - r0;
        const int64_t k_rows = k.steps * rows;  // the products' k: the part's rows of all steps
        const PartSums sums = part_sums_of(part);
        Real* const packing = part_packing ? part_packing + part * packing_size : nullptr;
        const Real* dg = gate_row(k, k.t0, r0);
        // x's and h's rows of the part: runs of `rows` rows, a step's run B rows after the last.
        using Reading = typename cpu::ChunkProduct<Real>::Reading;
        const cpu::ChunkProduct<Real> by_x({false, k_rows, 1, I}, x + r0 * I, I, packing,
                                           Reading::groups, {rows, B * I});
        by_x(dg, ldg, true, GH, sums.dw_ih, I, true);
        const cpu::ChunkProduct<Real> by_h({false, k_rows, 1, H}, h + r0 * H, H, packing,
                                           Reading::groups, {rows, BH});
        by_h(dg, ldg, true, hh_rows, sums.dw_hh, H, true);
        if (own_dgh) by_h(dg + n_recurrent, ldg, true, H, sums.dw_hh + 2 * H * H, H, true);
        if (has_bias) sum_rows(dg, k_rows, ldg, 0, GH, Real(1), sums.db);
        if (has_bias && own_dgh)
          sum_rows(dg + n_recurrent, k_rows, ldg, 0, H, Real(1), sums.db_hn);
        // dx's rows lie a step apart: a product for each step.
        if (input_grads)
          for (int64_t s = 0; s < k.steps; ++s)
            (*input_grads)(dg + s * rows * ldg, ldg, false, rows,
                           a.dx + ((k.t0 + s) * B + r0) * I, I, false);
      });
      continue;
    }

    // The chunk's weight gradients, added to the later chunks' (taken first), and its dx. A
    // walk's threads taking their rows' dx right after each step, while those rows' gate
    // gradients are in cache, ran GRU training T=200 B=128 H=32 5% faster but LSTM T=200 B=16
    // H=128 1-10% slower, and LSTM B=128 H=32 level to 2% slower (alternated in one process).
    const int64_t rows = k.steps * B;
    const Real beta = c == chunks.count() - 1 ? Real(0) : Real(1);
    const Real* x = a.x + k.t0 * B * I;
    const Real* h = h_read + k.t0 * BH;
    const Real* gates = width ? tape.gates() + k.t0 * B * width : nullptr;
    // The product by m[rows, columns] (rows ldm apart) that weight_grads takes.
    const auto by = [&](const Real* m, int64_t ldm, int64_t columns) {
      return cpu::ChunkProduct<Real>({false, rows, 1, columns}, m, ldm, m_packed);
    };
    // dw[gate_rows, columns] (+)= dgx[:, first gate row...]ᵀ · m, m the product's.
    const auto weight_grads = [&](const cpu::ChunkProduct<Real>& product, int64_t gate_rows,
                                  int64_t first, Real* dw, int64_t columns,
                                  cpu::KPartSums<Real>& parts) {
      product(dgx + first, ldg, true, gate_rows, dw, columns, beta != Real(0), &parts);
    };
    weight_grads(by(x, I, I), GH, 0, a.dw_ih, I, ih_parts);
    if (has_bias) column_sums(dgx, rows, GH, ldg, beta, a.db_ih);
    if (input_grads) (*input_grads)(dgx, ldg, false, rows, a.dx + k.t0 * B * I, I, false);
    const auto by_h = by(h, H, H);
    weight_grads(by_h, hh_rows, 0, a.dw_hh, H, hh_parts);
    // n's recurrent side: GRU's from its rows' fourth block, by h; reset-before's by r⊙h (the
    // tape's fourth block), from the rows' n.
    if (own_dgh) weight_grads(by_h, H, n_recurrent, a.dw_hh + 2 * H * H, H, hn_parts);
    if (cell == Cell::GRU_RESET_BEFORE)
      weight_grads(by(gates + 3 * H, width, H), H, 2 * H, a.dw_hh + 2 * H * H, H, hn_parts);
    // Both biases enter the same pre-activation except in GRU's n gate: db_hh's other sums
    // are db_ih's, copied at the end (the same columns summed in the same order).
    if (has_bias && own_dgh) column_sums(dgx + n_recurrent, rows, H, ldg, beta, a.db_hh + 2 * H);
  }
  // The other parts' sums added to the first's, in order.
  for (int64_t part = 1; row_parts && part < kRowParts; ++part) {
    const PartSums first = part_sums_of(0), sums = part_sums_of(part);
    const auto add = [](const Real* from, int64_t n, Real* to) {
      for (int64_t i = 0; i < n; ++i) to[i] += from[i];
    };
    add(sums.dw_ih, GH * I, first.dw_ih);
    add(sums.dw_hh, GH * H, first.dw_hh);
    if (has_bias) add(sums.db, GH, first.db);
    if (has_bias && own_dgh) add(sums.db_hn, H, first.db_hn);
  }
  ih_parts.add_to(a.dw_ih, I);
  hh_parts.add_to(a.dw_hh, H);
  if (n_apart) hn_parts.add_to(a.dw_hh + 2 * H * H, H);
  // Step 0's recurrent gradient, with no pointwise pass.
  step_backward(cell, step_io(-1, dg_next));
  if (has_bias) std::memcpy(a.db_hh, a.db_ih, sizeof(Real) * (own_dgh ? 2 * H : GH));
}

BuildInfo build_info() {
  BuildInfo info{};
#if defined(__clang__)
  info.compiler = "clang " __clang_version__;
#elif defined(__GNUC__)
  info.compiler = "gcc " __VERSION__;
#else
  info.compiler = "unknown";
#endif
  info.simd = cpu::pointwise_isa_name();  // what the pointwise rows run (pointwise.h)
  info.recurrent = cpu::recurrent_kernel_isa();
  info.blas = scipy_openblas_get_config();
  info.threads = cpu::pool_threads();
  info.openmp_threads = cpu::sharing_openmp_threads();
  return info;
}

void set_num_threads(int threads) { cpu::set_pool_threads(threads); }

bool share_openmp_threads(const char* library_path) {
  return cpu::share_openmp_threads(library_path);
}

void release_memory() {
  cpu::Workspace::release(cpu::this_thread_block());
  for (int call : {0, 1}) cpu::Workspace::release(cpu::side_block(call));
  cpu::KeptMemory::tapes().release_all();
  cpu::KeptMemory::outputs().release_all();
}

KeptMemoryNow kept_memory() {
  KeptMemoryNow now;
  cpu::KeptMemory::tapes().count(&now.tape_blocks, &now.tape_bytes, &now.tape_fresh);
  cpu::KeptMemory::outputs().count(&now.output_blocks, &now.output_bytes, &now.output_fresh);
  return now;
}

template class Tape<float>;
template class Tape<double>;
template void forward<float>(const ForwardArgs<float>&);
template void forward<double>(const ForwardArgs<double>&);
template void backward<float>(const BackwardArgs<float>&);
template void backward<double>(const BackwardArgs<double>&);

}  // namespace fusedrnn
