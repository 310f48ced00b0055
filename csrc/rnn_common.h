// What the CPU and CUDA drivers share besides the cell math: argument validation, the tape's
// size and the StepPlan slot convention. One copy, so both backends reject the same arguments
// with the same messages and lay out the same tape.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "fusedrnn/rnn.h"

namespace fusedrnn {
namespace detail {

[[noreturn]] void fail(const std::string& msg);  // throws std::invalid_argument

void check_cell(Cell cell);
// BLAS (OpenBLAS and cuBLAS alike) takes 32-bit sizes and every buffer size must fit in 64 bits.
void check_dims(Cell cell, const Dims& d);
// lengths: [B] in host memory, or nullptr.
void check_lengths(const int64_t* lengths, const Dims& d);
// The buffers of a tape that views its caller's memory (TapeBuffers, in host or device memory):
// those the cell needs are given, the others are null.
void check_tape_buffers(Cell cell, const void* h_states, const void* c_states, const void* gates);

std::size_t tape_bytes(Cell cell, const Dims& d, bool with_lengths, std::size_t value_bytes);

template <typename T>
void check_weights(const Weights<T>& w) {
  if (!w.w_ih) fail("w_ih: expected a [G*H, I] array, got null");
  if (!w.w_hh) fail("w_hh: expected a [G*H, H] array, got null");
  if ((w.b_ih == nullptr) != (w.b_hh == nullptr))
    fail("b_ih, b_hh: expected both or neither, got only one");
}

// The checks of forward(), for fusedrnn::ForwardArgs and fusedrnn::cuda::ForwardArgs alike (same
// field names). host_lengths is a.lengths as a host array: the CUDA driver passes a copy.
template <typename Args>
void check_forward_args(const Args& a, const int64_t* host_lengths) {
  check_cell(a.cell);
  const Dims& d = a.dims;
  check_dims(a.cell, d);
  check_weights(a.weights);
  check_lengths(host_lengths, d);
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
}

// The checks of backward(), for fusedrnn::BackwardArgs and fusedrnn::cuda::BackwardArgs alike.
template <typename Args>
void check_backward_args(const Args& a) {
  if (!a.tape) fail("tape: expected a tape from a training forward, got null");
  const Cell cell = a.tape->cell();
  const Dims& d = a.tape->dims();
  check_weights(a.weights);
  const bool has_c = has_cell_state(cell), has_bias = a.weights.b_ih != nullptr;
  if (!a.x) fail("x: expected the [T, B, I] input of the forward, got null");
  if (a.dy && a.lddy < d.H)
    fail("lddy: expected >= H=" + std::to_string(d.H) + ", got " + std::to_string(a.lddy));
  if (!a.dh0 || !a.dw_ih || !a.dw_hh)
    fail("dh0, dw_ih, dw_hh: expected output arrays, got null");
  if (has_c && !a.dc0) fail("dc0: expected a [B, H] output array for LSTM, got null");
  if (has_bias && (!a.db_ih || !a.db_hh))
    fail("db_ih, db_hh: expected output arrays for a layer with biases, got null");
}

// Time position of the s-th step, and the h_states slots it reads and writes (see Tape).
struct StepPlan {
  int64_t t, read, write;
  StepPlan(int64_t t_, int64_t read_, int64_t write_) : t(t_), read(read_), write(write_) {}
  StepPlan(int64_t s, int64_t T, bool reverse)
      : t(reverse ? T - 1 - s : s), read(reverse ? t + 1 : t), write(reverse ? t : t + 1) {}
};

}  // namespace detail
}  // namespace fusedrnn
