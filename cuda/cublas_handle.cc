// Two cuBLAS handles per device (exact FP32, and TF32 allowed), shared by every thread. cuBLAS
// allows concurrent calls on one handle from several host threads as long as nobody changes its
// configuration afterwards, and nothing here does: stream and math mode are set at creation.
#include <map>
#include <mutex>
#include <utility>

#include "cublas_gemm.h"
#include "cuda_check.h"

namespace fusedrnn {
namespace cuda {

cublasHandle_t cublas_handle(bool tf32) {
  int device = 0;
  FR_CUDA_CHECK(cudaGetDevice(&device));
  static std::mutex mutex;
  // Never destroyed: a static destructor may run after the CUDA runtime has shut down.
  static auto* handles = new std::map<std::pair<int, bool>, cublasHandle_t>();
  std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::make_pair(device, tf32);
  const auto found = handles->find(key);
  if (found != handles->end()) return found->second;
  cublasHandle_t handle = nullptr;
  FR_CUBLAS_CHECK(cublasCreate(&handle));
  FR_CUBLAS_CHECK(cublasSetStream(handle, 0));
  // The CPU kernels are the reference: by default FP32 products stay FP32 (CUBLAS_DEFAULT_MATH
  // never uses TF32 tensor cores). TF32 rounds the products' inputs to a 10-bit mantissa.
  FR_CUBLAS_CHECK(cublasSetMathMode(handle, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH
                                                 : CUBLAS_DEFAULT_MATH));
  handles->emplace(key, handle);
  return handle;
}

}  // namespace cuda
}  // namespace fusedrnn
