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
  const std::size_t slots = std::size_t(dims.T + 1) * dims.B * dims.H;
  h_states_ = DeviceMemory(sizeof(T) * slots);
  if (has_cell_state(cell)) c_states_ = DeviceMemory(sizeof(T) * slots);
  const std::size_t width = tape_gate_width(cell);
  if (width) gates_ = DeviceMemory(sizeof(T) * dims.T * dims.B * width * dims.H);
}

template <typename T>
std::size_t DeviceTape<T>::bytes() const {
  return detail::tape_bytes(cell_, dims_, lengths_.get() != nullptr, sizeof(T));
}

template class DeviceTape<float>;
template class DeviceTape<double>;

}  // namespace cuda
}  // namespace fusedrnn
