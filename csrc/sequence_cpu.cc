// The CPU sequence driver: validation, the input projection, the time loop over cells_cpu.h's
// steps, and the weight gradients as single GEMMs over all T·B rows after the reverse walk.
#include <algorithm>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

#include "blas.h"
#include "cells_cpu.h"
#include "fusedrnn/rnn.h"

namespace fusedrnn {

const char* cell_name(Cell cell) {
  switch (cell) {
    case Cell::LSTM: return "lstm";
    case Cell::GRU: return "gru";
    case Cell::GRU_RESET_BEFORE: return "gru_reset_before";
    case Cell::RNN_TANH: return "rnn_tanh";
    case Cell::RNN_RELU: return "rnn_relu";
  }
  return "unknown";
}

int gate_count(Cell cell) {
  switch (cell) {
    case Cell::LSTM: return 4;
    case Cell::GRU:
    case Cell::GRU_RESET_BEFORE: return 3;
    case Cell::RNN_TANH:
    case Cell::RNN_RELU: return 1;
  }
  return 0;
}

bool has_cell_state(Cell cell) { return cell == Cell::LSTM; }

int tape_gate_width(Cell cell) {
  switch (cell) {
    case Cell::LSTM:
    case Cell::GRU:
    case Cell::GRU_RESET_BEFORE: return 4;
    case Cell::RNN_TANH:
    case Cell::RNN_RELU: return 0;
  }
  return 0;
}

namespace {

[[noreturn]] void fail(const std::string& msg) { throw std::invalid_argument(msg); }

void check_cell(Cell cell) {
  const int c = static_cast<int>(cell);
  if (c < 0 || c > 4) fail("cell: expected one of 0..4 (lstm, gru, gru_reset_before, rnn_tanh, "
                           "rnn_relu), got " + std::to_string(c));
}

// BLAS takes 32-bit sizes and every buffer size must fit in 64 bits: check both once, up front.
void check_dims(Cell cell, const Dims& d) {
  const int64_t limit = std::numeric_limits<int32_t>::max();
  const auto positive = [&](int64_t v, const char* name) {
    if (v <= 0 || v > limit)
      fail(std::string(name) + ": expected 1.." + std::to_string(limit) + ", got " +
           std::to_string(v));
  };
  positive(d.T, "T (sequence length)");
  positive(d.B, "B (batch size)");
  positive(d.I, "I (input size)");
  positive(d.H, "H (hidden size)");
  const int64_t G = gate_count(cell);
  if (d.T * d.B > limit)
    fail("T*B: expected at most " + std::to_string(limit) + " rows, got " +
         std::to_string(d.T * d.B));
  if (G * d.H > limit / 4 + 1)
    fail("H: gates*H exceeds the BLAS integer range for H=" + std::to_string(d.H));
  const int64_t widest = std::max<int64_t>({d.I, 4 * d.H, G * d.H});
  if (d.T * d.B > std::numeric_limits<int64_t>::max() / widest / 8)
    fail("sizes: T*B*max(I, 4H) overflows a 64-bit byte count");
}

void check_lengths(const int64_t* lengths, const Dims& d) {
  if (!lengths) return;
  for (int64_t b = 0; b < d.B; ++b)
    if (lengths[b] < 1 || lengths[b] > d.T)
      fail("lengths[" + std::to_string(b) + "]: expected 1.." + std::to_string(d.T) + ", got " +
           std::to_string(lengths[b]));
}

template <typename T>
void check_weights(const Weights<T>& w) {
  if (!w.w_ih) fail("w_ih: expected a [G*H, I] array, got null");
  if (!w.w_hh) fail("w_hh: expected a [G*H, H] array, got null");
  if ((w.b_ih == nullptr) != (w.b_hh == nullptr))
    fail("b_ih, b_hh: expected both or neither, got only one");
}

template <typename T>
std::unique_ptr<T[]> uninitialized(int64_t n) {
  return std::unique_ptr<T[]>(new T[static_cast<std::size_t>(n)]);
}

template <typename T>
std::unique_ptr<T[]> zeros(int64_t n) {
  return std::unique_ptr<T[]>(new T[static_cast<std::size_t>(n)]());
}

// memmove: a caller may pass the same array as source and destination.
template <typename T>
void copy_or_zero(T* dst, const T* src, int64_t n) {
  if (src) std::memmove(dst, src, sizeof(T) * n);
  else std::memset(dst, 0, sizeof(T) * n);
}

// db[k] = Σ_rows dg[row, k]
template <typename T>
void column_sums(const T* dg, int64_t rows, int64_t cols, T* db) {
  std::fill(db, db + cols, T(0));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < cols; ++k) db[k] += dg[r * cols + k];
}

template <template <typename, bool> class Step, typename T>
struct Dispatch {
  static void forward(const cpu::StepIO<T>& s, bool training) {
    training ? Step<T, true>::forward(s) : Step<T, false>::forward(s);
  }
  static void backward(const cpu::BackStepIO<T>& s) { Step<T, true>::backward(s); }
};

template <typename T, bool Training>
using RnnTanhStep = cpu::RnnStep<T, Training, false>;
template <typename T, bool Training>
using RnnReluStep = cpu::RnnStep<T, Training, true>;

template <typename T>
void step_forward(Cell cell, const cpu::StepIO<T>& s, bool training) {
  switch (cell) {
    case Cell::LSTM: return Dispatch<cpu::LstmStep, T>::forward(s, training);
    case Cell::GRU: return Dispatch<cpu::GruStep, T>::forward(s, training);
    case Cell::GRU_RESET_BEFORE: return Dispatch<cpu::GruResetBeforeStep, T>::forward(s, training);
    case Cell::RNN_TANH: return Dispatch<RnnTanhStep, T>::forward(s, training);
    case Cell::RNN_RELU: return Dispatch<RnnReluStep, T>::forward(s, training);
  }
}

template <typename T>
void step_backward(Cell cell, const cpu::BackStepIO<T>& s) {
  switch (cell) {
    case Cell::LSTM: return Dispatch<cpu::LstmStep, T>::backward(s);
    case Cell::GRU: return Dispatch<cpu::GruStep, T>::backward(s);
    case Cell::GRU_RESET_BEFORE: return Dispatch<cpu::GruResetBeforeStep, T>::backward(s);
    case Cell::RNN_TANH: return Dispatch<RnnTanhStep, T>::backward(s);
    case Cell::RNN_RELU: return Dispatch<RnnReluStep, T>::backward(s);
  }
}

// Time position of the s-th step, and the h_states slots it reads and writes (see Tape).
struct StepPlan {
  int64_t t, read, write;
  StepPlan(int64_t t_, int64_t read_, int64_t write_) : t(t_), read(read_), write(write_) {}
  StepPlan(int64_t s, int64_t T, bool reverse)
      : t(reverse ? T - 1 - s : s), read(reverse ? t + 1 : t), write(reverse ? t : t + 1) {}
};

}  // namespace

template <typename T>
Tape<T>::Tape(Cell cell, const Dims& dims, bool reverse, const int64_t* lengths)
    : cell_(cell), dims_(dims), reverse_(reverse) {
  check_cell(cell);
  check_dims(cell, dims);
  check_lengths(lengths, dims);
  if (lengths) lengths_.assign(lengths, lengths + dims.B);
  const int64_t slots = (dims.T + 1) * dims.B * dims.H;
  h_states_ = uninitialized<T>(slots);
  if (has_cell_state(cell)) c_states_ = uninitialized<T>(slots);
  const int64_t width = tape_gate_width(cell);
  if (width) gates_ = uninitialized<T>(dims.T * dims.B * width * dims.H);
}

template <typename T>
std::size_t Tape<T>::bytes_for(Cell cell, const Dims& d, bool with_lengths) {
  const std::size_t slots = std::size_t(d.T + 1) * d.B * d.H;
  const std::size_t states = slots * (has_cell_state(cell) ? 2 : 1);
  const std::size_t gates = std::size_t(d.T) * d.B * d.H * tape_gate_width(cell);
  return sizeof(T) * (states + gates) + (with_lengths ? sizeof(int64_t) * d.B : 0);
}

template <typename T>
std::size_t Tape<T>::bytes() const {
  return bytes_for(cell_, dims_, !lengths_.empty());
}

template <typename Real>
void forward(const ForwardArgs<Real>& a) {
  check_cell(a.cell);
  const Dims& d = a.dims;
  check_dims(a.cell, d);
  check_weights(a.weights);
  check_lengths(a.lengths, d);
  const bool has_c = has_cell_state(a.cell);
  if (!a.x) fail("x: expected a [T, B, I] array, got null");
  if (!a.y) fail("y: expected a [T, B, ldy] output array, got null");
  if (a.ldy < d.H) fail("ldy: expected >= H=" + std::to_string(d.H) + ", got " +
                        std::to_string(a.ldy));
  if (!a.h_n) fail("h_n: expected a [B, H] output array, got null");
  if (has_c && !a.c_n) fail("c_n: expected a [B, H] output array for LSTM, got null");
  if (a.tape) {
    const Dims& td = a.tape->dims();
    if (a.tape->cell() != a.cell || td.T != d.T || td.B != d.B || td.H != d.H || td.I != d.I ||
        a.tape->reverse() != a.reverse)
      fail("tape: expected a tape made for this cell, direction and dims");
  }

  const int64_t T = d.T, B = d.B, H = d.H, G = gate_count(a.cell), GH = G * H, BH = B * H;
  const bool training = a.tape != nullptr;

  auto xproj = uninitialized<Real>(T * B * GH);
  gemm(Op::N, Op::T, T * B, GH, d.I, Real(1), a.x, d.I, a.weights.w_ih, d.I, Real(0), xproj.get(), GH);
  auto rec = uninitialized<Real>(B * GH);
  std::unique_ptr<Real[]> no_bias = a.weights.b_ih ? nullptr : zeros<Real>(GH);
  const Real* b_ih = a.weights.b_ih ? a.weights.b_ih : no_bias.get();
  const Real* b_hh = a.weights.b_hh ? a.weights.b_hh : no_bias.get();

  // Training walks the tape's state slots; inference alternates between two scratch slots (a
  // step never writes the slot it reads, which the restrict row loops rely on).
  const int64_t width = tape_gate_width(a.cell) * H;
  std::unique_ptr<Real[]> scratch_gates, scratch_states;
  if (!training) {
    if (a.cell == Cell::GRU_RESET_BEFORE) scratch_gates = uninitialized<Real>(B * width);
    scratch_states = uninitialized<Real>((has_c ? 4 : 2) * BH);
  }
  Real* hs = training ? a.tape->h_states() : scratch_states.get();
  Real* cs = training ? a.tape->c_states() : has_c ? scratch_states.get() + 2 * BH : nullptr;
  const auto slots = [&](int64_t s) {
    const StepPlan p(s, T, a.reverse);
    return training ? p : StepPlan{p.t, s % 2, (s + 1) % 2};
  };
  copy_or_zero(hs + slots(0).read * BH, a.h0, BH);
  if (has_c) copy_or_zero(cs + slots(0).read * BH, a.c0, BH);

  for (int64_t s = 0; s < T; ++s) {
    const StepPlan p = slots(s);
    cpu::StepIO<Real> io{B, H, p.t, a.lengths, xproj.get() + p.t * B * GH, a.weights.w_hh, b_ih,
                      b_hh, hs + p.read * BH, has_c ? cs + p.read * BH : nullptr, hs + p.write * BH,
                      has_c ? cs + p.write * BH : nullptr,
                      training ? a.tape->gates() + p.t * B * width : scratch_gates.get(),
                      a.y + p.t * B * a.ldy, a.ldy, rec.get()};
    step_forward(a.cell, io, training);
  }

  const int64_t last = slots(T - 1).write;
  std::memcpy(a.h_n, hs + last * BH, sizeof(Real) * BH);
  if (has_c) std::memcpy(a.c_n, cs + last * BH, sizeof(Real) * BH);
}

template <typename Real>
void backward(const BackwardArgs<Real>& a) {
  if (!a.tape) fail("tape: expected a tape from a training forward, got null");
  const Tape<Real>& tape = *a.tape;
  const Cell cell = tape.cell();
  const Dims& d = tape.dims();
  check_weights(a.weights);
  const bool has_c = has_cell_state(cell), has_bias = a.weights.b_ih != nullptr;
  if (!a.x) fail("x: expected the [T, B, I] input of the forward, got null");
  if (a.dy && a.lddy < d.H)
    fail("lddy: expected >= H=" + std::to_string(d.H) + ", got " + std::to_string(a.lddy));
  if (!a.dx || !a.dh0 || !a.dw_ih || !a.dw_hh)
    fail("dx, dh0, dw_ih, dw_hh: expected output arrays, got null");
  if (has_c && !a.dc0) fail("dc0: expected a [B, H] output array for LSTM, got null");
  if (has_bias && (!a.db_ih || !a.db_hh))
    fail("db_ih, db_hh: expected output arrays for a layer with biases, got null");

  const int64_t T = d.T, B = d.B, I = d.I, H = d.H, G = gate_count(cell), GH = G * H, BH = B * H;
  const int64_t width = tape_gate_width(cell) * H;
  auto dgx = uninitialized<Real>(T * B * GH);
  std::unique_ptr<Real[]> dgh_own;
  if (cell == Cell::GRU) dgh_own = uninitialized<Real>(T * B * GH);
  Real* dgh = dgh_own ? dgh_own.get() : dgx.get();
  auto scratch = uninitialized<Real>(BH);
  // No dy means zeros: one zero row block read at every step keeps the row loops branch-free.
  std::unique_ptr<Real[]> no_dy = a.dy ? nullptr : zeros<Real>(BH);
  copy_or_zero(a.dh0, a.dh_n, BH);  // dh0/dc0 carry the running gradient through the walk
  if (has_c) copy_or_zero(a.dc0, a.dc_n, BH);

  const Real* hs = tape.h_states();
  const Real* cs = tape.c_states();
  for (int64_t s = T - 1; s >= 0; --s) {
    const StepPlan p(s, T, tape.reverse());
    cpu::BackStepIO<Real> io{B, H, p.t, tape.lengths(), a.weights.w_hh, hs + p.read * BH,
                          has_c ? cs + p.read * BH : nullptr, hs + p.write * BH,
                          has_c ? cs + p.write * BH : nullptr,
                          width ? tape.gates() + p.t * B * width : nullptr,
                          a.dy ? a.dy + p.t * B * a.lddy : no_dy.get(), a.dy ? a.lddy : H, a.dh0,
                          has_c ? a.dc0 : nullptr, dgx.get() + p.t * B * GH,
                          dgh + p.t * B * GH, scratch.get()};
    step_backward(cell, io);
  }

  // Weight gradients over all T·B rows at once. The state entering time t sits in slot t
  // (forward) or t+1 (reverse), so the T slots that were read are contiguous.
  const int64_t TB = T * B;
  const Real* h_read = hs + (tape.reverse() ? BH : 0);
  gemm(Op::T, Op::N, GH, I, TB, Real(1), dgx.get(), GH, a.x, I, Real(0), a.dw_ih, I);
  if (cell == Cell::GRU_RESET_BEFORE) {
    // n's recurrent product reads r⊙h (the tape's fourth block), not h.
    gemm(Op::T, Op::N, 2 * H, H, TB, Real(1), dgh, GH, h_read, H, Real(0), a.dw_hh, H);
    gemm(Op::T, Op::N, H, H, TB, Real(1), dgh + 2 * H, GH, tape.gates() + 3 * H, width, Real(0),
         a.dw_hh + 2 * H * H, H);
  } else {
    gemm(Op::T, Op::N, GH, H, TB, Real(1), dgh, GH, h_read, H, Real(0), a.dw_hh, H);
  }
  if (has_bias) {
    column_sums(dgx.get(), TB, GH, a.db_ih);
    column_sums(dgh, TB, GH, a.db_hh);
  }
  gemm(Op::N, Op::N, TB, I, GH, Real(1), dgx.get(), GH, a.weights.w_ih, I, Real(0), a.dx, I);
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
#if defined(__AVX512F__)
  info.simd = "avx512f";
#elif defined(__AVX2__)
  info.simd = "avx2";
#elif defined(__SSE2__)
  info.simd = "sse2 (x86-64 baseline)";
#else
  info.simd = "none";
#endif
  info.blas = scipy_openblas_get_config();
  info.blas_threads = scipy_openblas_get_num_threads();
  return info;
}

void set_blas_threads(int threads) {
  if (threads < 1) fail("threads: expected >= 1, got " + std::to_string(threads));
  scipy_openblas_set_num_threads(threads);
}

template class Tape<float>;
template class Tape<double>;
template void forward<float>(const ForwardArgs<float>&);
template void forward<double>(const ForwardArgs<double>&);
template void backward<float>(const BackwardArgs<float>&);
template void backward<double>(const BackwardArgs<double>&);

}  // namespace fusedrnn
