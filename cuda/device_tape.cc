// DeviceTape: rnn.h's Tape in device memory, with the same validation and size.
#include "fusedrnn/rnn_cuda.h"
#include "rnn_common.h"

namespace fusedrnn {
namespace cuda {

template <typename T>
DeviceTape<T>::DeviceTape(Cell cell, const Dims& dims, bool reverse, const int64_t* lengths)
    : cell_(cell), dims_(dims), reverse_(reverse), device_(current_device()) {
  detail::check_cell(cell);
  detail::check_dims(cell, dims);
  detail::check_lengths(lengths, dims);
  if (lengths) lengths_ = DeviceMemory::from_host(lengths, sizeof(int64_t) * dims.B);
  // One allocation: h states, then c states (LSTM), then the gates, each starting on 256 bytes
  // as a buffer of its own would (what DLPack asks of the views that arrays() exports).
  const auto aligned = [](std::size_t values) {
    constexpr std::size_t kValues = 256 / sizeof(T);
    return (values + kValues - 1) / kValues * kValues;
  };
  const std::size_t slots = std::size_t(dims.T + 1) * dims.B * dims.H;
  const std::size_t c_slots = has_cell_state(cell) ? aligned(slots) : 0;
  const std::size_t gates = std::size_t(dims.T) * dims.B * tape_gate_width(cell) * dims.H;
  owned_ = DeviceMemory(sizeof(T) * (aligned(slots) + c_slots + gates));
  buffers_.h_states = owned_.as<T>();
  if (c_slots) buffers_.c_states = buffers_.h_states + aligned(slots);
  if (gates) buffers_.gates = buffers_.h_states + aligned(slots) + c_slots;
}

template <typename T>
DeviceTape<T>::DeviceTape(Cell cell, const Dims& dims, bool reverse, const int64_t* lengths,
                          const TapeBuffers<T>& buffers)
    : cell_(cell), dims_(dims), reverse_(reverse), device_(current_device()), buffers_(buffers) {
  detail::check_cell(cell);
  detail::check_dims(cell, dims);
  detail::check_lengths(lengths, dims);
  detail::check_tape_buffers(cell, buffers.h_states, buffers.c_states, buffers.gates);
  if (lengths) lengths_ = DeviceMemory::from_host(lengths, sizeof(int64_t) * dims.B);
}

template <typename T>
std::size_t DeviceTape<T>::bytes() const {
  return detail::tape_bytes(cell_, dims_, lengths_.get() != nullptr, sizeof(T));
}

template class DeviceTape<float>;
template class DeviceTape<double>;

}  // namespace cuda
}  // namespace fusedrnn
