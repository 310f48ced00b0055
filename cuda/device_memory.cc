// DeviceMemory: stream-ordered allocations on the legacy default stream, from the device's
// default memory pool; and DeviceGuard.
//
// The pool keeps what was freed until the next synchronization (its release threshold is left at
// CUDA's default, so memory is not held back from other libraries), and forward()/backward()
// free their workspaces after their final synchronization: a call reuses what the previous one
// freed without mapping memory afresh.
#include <atomic>
#include <string>
#include <utility>

#include "cuda_check.h"
#include "fusedrnn/rnn_cuda.h"

namespace fusedrnn {
namespace cuda {
namespace {

std::atomic<bool> poison_allocations{false};

// Allocates from the pool; when the device is out of memory, gives the pool's cached blocks
// back to the driver and tries once more before failing.
void* allocate(std::size_t bytes, int device) {
  void* ptr = nullptr;
  cudaError_t err = cudaMallocAsync(&ptr, bytes, 0);
  if (err == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    cudaMemPool_t pool;
    FR_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
    FR_CUDA_CHECK(cudaStreamSynchronize(0));  // pending frees reach the pool first
    FR_CUDA_CHECK(cudaMemPoolTrimTo(pool, 0));
    err = cudaMallocAsync(&ptr, bytes, 0);
  }
  if (err != cudaSuccess) {
    const std::string call = "cudaMallocAsync of " + std::to_string(bytes) + " bytes";
    throw_cuda_error(err, call.c_str(), __FILE__, __LINE__);
  }
  return ptr;
}

}  // namespace

DeviceGuard::DeviceGuard(int device) {
  FR_CUDA_CHECK(cudaGetDevice(&previous_));
  if (device != previous_) FR_CUDA_CHECK(cudaSetDevice(device));
}

DeviceGuard::~DeviceGuard() { (void)cudaSetDevice(previous_); }

DeviceMemory::DeviceMemory(std::size_t bytes) : bytes_(bytes) {
  FR_CUDA_CHECK(cudaGetDevice(&device_));
  if (bytes == 0) return;
  ptr_ = allocate(bytes, device_);
  if (poison_allocations.load(std::memory_order_relaxed)) {
    const cudaError_t err = cudaMemsetAsync(ptr_, 0xFF, bytes, 0);
    if (err != cudaSuccess) {
      release();
      throw_cuda_error(err, "cudaMemsetAsync (poison)", __FILE__, __LINE__);
    }
  }
}

void set_poison_allocations(bool on) { poison_allocations.store(on); }

DeviceMemory DeviceMemory::from_host(const void* src, std::size_t bytes) {
  DeviceMemory memory(bytes);
  if (bytes) FR_CUDA_CHECK(cudaMemcpy(memory.ptr_, src, bytes, cudaMemcpyHostToDevice));
  return memory;
}

DeviceMemory::~DeviceMemory() { release(); }

DeviceMemory::DeviceMemory(DeviceMemory&& other) noexcept
    : ptr_(std::exchange(other.ptr_, nullptr)),
      bytes_(std::exchange(other.bytes_, 0)),
      device_(other.device_) {}

DeviceMemory& DeviceMemory::operator=(DeviceMemory&& other) noexcept {
  if (this != &other) {
    release();
    ptr_ = std::exchange(other.ptr_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
    device_ = other.device_;
  }
  return *this;
}

// No error can be reported from here (destructors are noexcept). A failed free means the
// context is already broken or the runtime is shutting down; the error is cleared so that it
// does not surface at an unrelated later check. The owner may release the memory on a thread
// whose current device is another one (a DLPack consumer freeing a result). The free is ordered
// on the legacy default stream, after all work queued there and on blocking streams.
void DeviceMemory::release() noexcept {
  if (!ptr_) return;
  int current = device_;
  const bool switch_device = cudaGetDevice(&current) == cudaSuccess && current != device_;
  if (switch_device) (void)cudaSetDevice(device_);
  if (cudaFreeAsync(ptr_, 0) != cudaSuccess) (void)cudaGetLastError();
  if (switch_device) (void)cudaSetDevice(current);
  ptr_ = nullptr;
  bytes_ = 0;
}

}  // namespace cuda
}  // namespace fusedrnn
