// Checked CUDA runtime and cuBLAS calls: a failure throws std::runtime_error naming the call, its
// file:line and the library's error text.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>

namespace fusedrnn {
namespace cuda {

[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* call, const char* file,
                                          int line) {
  // Reset the runtime's last-error slot: a non-sticky error (out of memory, say) would otherwise
  // resurface at the next launch check of a later, healthy call.
  (void)cudaGetLastError();
  throw std::runtime_error(std::string("CUDA error at ") + file + ":" + std::to_string(line) +
                           ": " + call + ": " + cudaGetErrorName(err) + ": " +
                           cudaGetErrorString(err));
}

[[noreturn]] inline void throw_cublas_error(cublasStatus_t status, const char* call,
                                            const char* file, int line) {
  throw std::runtime_error(std::string("cuBLAS error at ") + file + ":" + std::to_string(line) +
                           ": " + call + ": " + cublasGetStatusName(status) + ": " +
                           cublasGetStatusString(status));
}

}  // namespace cuda
}  // namespace fusedrnn

#define FR_CUDA_CHECK(call)                                                            \
  do {                                                                                 \
    const cudaError_t fr_cuda_err_ = (call);                                           \
    if (fr_cuda_err_ != cudaSuccess)                                                   \
      ::fusedrnn::cuda::throw_cuda_error(fr_cuda_err_, #call, __FILE__, __LINE__);     \
  } while (0)

#define FR_CUBLAS_CHECK(call)                                                          \
  do {                                                                                 \
    const cublasStatus_t fr_cublas_status_ = (call);                                   \
    if (fr_cublas_status_ != CUBLAS_STATUS_SUCCESS)                                    \
      ::fusedrnn::cuda::throw_cublas_error(fr_cublas_status_, #call, __FILE__, __LINE__); \
  } while (0)
