// fusedrnn CUDA API: the layer of rnn.h (one layer, one direction, same semantics and tape
// layout) with the arrays — inputs, weights, outputs and the tape — in the memory of the current
// CUDA device. Only `lengths` stays on the host: it is validated there and copied over.
//
// All work runs on the legacy default stream (0), and forward() and backward() return after it
// has completed, so their outputs are ready for any stream and any consumer. Errors: invalid
// arguments throw std::invalid_argument (as rnn.h), CUDA and cuBLAS failures std::runtime_error.
// This header needs no CUDA headers.
//
// float32 products use full FP32 arithmetic unless `tf32` is set: then cuBLAS may round their
// inputs to TF32 (10-bit mantissa) on tensor cores, ~1e-3 relative error for speed. The pointwise
// math is FP32 either way.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "fusedrnn/rnn.h"

namespace fusedrnn {
namespace cuda {

// Memory of one device, allocated and freed stream-ordered on its legacy default stream.
class DeviceMemory {
 public:
  DeviceMemory() = default;
  explicit DeviceMemory(std::size_t bytes);  // on the current device; 0 bytes: no allocation
  static DeviceMemory from_host(const void* src, std::size_t bytes);
  ~DeviceMemory();
  DeviceMemory(DeviceMemory&& other) noexcept;
  DeviceMemory& operator=(DeviceMemory&& other) noexcept;
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;

  void* get() const { return ptr_; }
  template <typename T>
  T* as() const { return static_cast<T*>(ptr_); }
  std::size_t bytes() const { return bytes_; }
  int device() const { return device_; }

 private:
  void release() noexcept;
  void* ptr_ = nullptr;
  std::size_t bytes_ = 0;
  int device_ = -1;
};

// Makes `device` current for its lifetime and restores the previous one after.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_;
};

// Tape<T> of rnn.h in device memory: same buffers, same layout, same slot convention. Like
// Tape<T>, it owns its buffers or views buffers its caller owns.
template <typename T>
class DeviceTape {
 public:
  // lengths: [B] in host memory, or nullptr. Checked and copied to the device.
  DeviceTape(Cell cell, const Dims& dims, bool reverse, const int64_t* lengths);
  // Views `buffers`, in this device's memory, which must outlive the tape; throws
  // std::invalid_argument when a buffer the cell needs is null or one it does not use is given.
  DeviceTape(Cell cell, const Dims& dims, bool reverse, const int64_t* lengths,
             const TapeBuffers<T>& buffers);

  Cell cell() const { return cell_; }
  const Dims& dims() const { return dims_; }
  bool reverse() const { return reverse_; }
  int device() const { return device_; }
  const int64_t* lengths() const { return lengths_.as<const int64_t>(); }  // device, or nullptr
  std::size_t bytes() const;

  T* h_states() { return buffers_.h_states; }
  T* c_states() { return buffers_.c_states; }
  T* gates() { return buffers_.gates; }
  const T* h_states() const { return buffers_.h_states; }
  const T* c_states() const { return buffers_.c_states; }
  const T* gates() const { return buffers_.gates; }

 private:
  Cell cell_;
  Dims dims_;
  bool reverse_;
  int device_;
  DeviceMemory lengths_;
  DeviceMemory owned_;  // the buffers, when the tape allocated them
  TapeBuffers<T> buffers_;
};

// fusedrnn::ForwardArgs with device pointers and a DeviceTape.
template <typename T>
struct ForwardArgs {
  Cell cell = Cell::LSTM;
  Dims dims;
  bool reverse = false;
  const T* x = nullptr;              // [T, B, I]
  const T* h0 = nullptr;             // [B, H], nullptr means zeros
  const T* c0 = nullptr;             // [B, H] (LSTM only), nullptr means zeros
  Weights<T> weights;
  const int64_t* lengths = nullptr;  // HOST [B] in [1, T], or nullptr: every row has length T
  T* y = nullptr;                    // [T, B, *], row stride ldy
  int64_t ldy = 0;
  T* h_n = nullptr;                  // [B, H]
  T* c_n = nullptr;                  // [B, H] (LSTM only)
  DeviceTape<T>* tape = nullptr;     // training: filled for backward; nullptr: inference
  bool tf32 = false;                 // float only: let cuBLAS use TF32 tensor cores
};

// fusedrnn::BackwardArgs with device pointers and a DeviceTape.
template <typename T>
struct BackwardArgs {
  const DeviceTape<T>* tape = nullptr;
  const T* x = nullptr;              // [T, B, I]
  Weights<T> weights;
  const T* dy = nullptr;             // [T, B, *] with row stride lddy, or nullptr (zeros)
  int64_t lddy = 0;
  const T* dh_n = nullptr;           // [B, H], or nullptr (zeros)
  const T* dc_n = nullptr;           // [B, H] (LSTM only), or nullptr (zeros)
  T* dx = nullptr;                   // [T, B, I], or nullptr: not computed (saves a GEMM)
  T* dh0 = nullptr;                  // [B, H]
  T* dc0 = nullptr;                  // [B, H] (LSTM only)
  T* dw_ih = nullptr;                // [G*H, I]
  T* dw_hh = nullptr;                // [G*H, H]
  T* db_ih = nullptr;                // [G*H], required when weights have biases
  T* db_hh = nullptr;                // [G*H], required when weights have biases
  bool tf32 = false;                 // float only: let cuBLAS use TF32 tensor cores
};

// One layer, one direction, on the current device. float and double are instantiated.
template <typename T>
void forward(const ForwardArgs<T>& args);
template <typename T>
void backward(const BackwardArgs<T>& args);

int current_device();  // throws std::runtime_error when there is no usable device

// Tests: when on, every DeviceMemory allocation (workspaces, tapes, results) is filled with
// all-one bytes, a NaN in float and double, so that an element a kernel forgets to write shows
// up as NaN in the results.
void set_poison_allocations(bool on);

struct DeviceInfo {
  int device;
  std::string name;
  int compute_capability_major, compute_capability_minor;
  int multiprocessors;
  std::size_t total_memory;
  int driver_version, runtime_version;  // CUDA's encoding: 13000 = 13.0
  int cublas_version;                   // of the loaded library; cuBLAS's encoding: 131000 = 13.10.0
};
DeviceInfo device_info();  // of the current device

// What this library was compiled with and for; needs no device.
struct BuildInfo {
  int cuda_version;           // the toolkit's CUDART_VERSION, e.g. 13000
  int cublas_version;         // of the cuBLAS headers, CUBLAS_VERSION
  std::string architectures;  // nvcc's __CUDA_ARCH_LIST__, e.g. "800,900"
};
BuildInfo build_info();

// Whether the kernels can run on the current device; never throws.
struct Availability {
  bool ok;
  std::string reason;  // why not, or a one-line description of the device
};
Availability availability() noexcept;

}  // namespace cuda
}  // namespace fusedrnn
