// The cell tables and argument checks of rnn_common.h, compiled once for both backends.
#include "rnn_common.h"

#include <algorithm>
#include <limits>
#include <stdexcept>

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

namespace detail {

void fail(const std::string& msg) { throw std::invalid_argument(msg); }

void check_cell(Cell cell) {
  const int c = static_cast<int>(cell);
  if (c < 0 || c > 4) fail("cell: expected one of 0..4 (lstm, gru, gru_reset_before, rnn_tanh, "
                           "rnn_relu), got " + std::to_string(c));
}

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

void check_tape_buffers(Cell cell, const void* h_states, const void* c_states, const void* gates) {
  if (!h_states) fail("h_states: expected a [T+1, B, H] buffer, got null");
  if (has_cell_state(cell) != (c_states != nullptr))
    fail(std::string("c_states: expected ") +
         (has_cell_state(cell) ? "a [T+1, B, H] buffer for LSTM, got null"
                               : "null for a cell without c state, got a buffer"));
  if ((tape_gate_width(cell) != 0) != (gates != nullptr))
    fail(std::string("gates: expected ") +
         (tape_gate_width(cell) ? "a [T, B, 4H] buffer for this cell, got null"
                                : "null for an RNN cell, got a buffer"));
}

std::size_t tape_bytes(Cell cell, const Dims& d, bool with_lengths, std::size_t value_bytes) {
  const std::size_t slots = std::size_t(d.T + 1) * d.B * d.H;
  const std::size_t states = slots * (has_cell_state(cell) ? 2 : 1);
  const std::size_t gates = std::size_t(d.T) * d.B * d.H * tape_gate_width(cell);
  return value_bytes * (states + gates) + (with_lengths ? sizeof(int64_t) * d.B : 0);
}

}  // namespace detail
}  // namespace fusedrnn
