// The current device, what it is, whether the kernels can run on it, and what they were built
// with.
#include <string>

#include "cublas_gemm.h"
#include "cuda_check.h"
#include "fusedrnn/rnn_cuda.h"

// nvcc lists the architectures this file is compiled for (all files of the library share them).
// The list has commas, hence the variadic form.
#define FR_STRINGIFY_(...) #__VA_ARGS__
#define FR_STRINGIFY(...) FR_STRINGIFY_(__VA_ARGS__)

namespace fusedrnn {
namespace cuda {
namespace {

// Loads only if the fatbinary has code this device can run.
__global__ void probe_kernel() {}

int cublas_property(libraryPropertyType type) {
  int value = 0;
  FR_CUBLAS_CHECK(cublasGetProperty(type, &value));
  return value;
}

}  // namespace

int current_device() {
  int device = 0;
  FR_CUDA_CHECK(cudaGetDevice(&device));
  return device;
}

DeviceInfo device_info() {
  DeviceInfo info{};
  info.device = current_device();
  cudaDeviceProp prop{};
  FR_CUDA_CHECK(cudaGetDeviceProperties(&prop, info.device));
  info.name = prop.name;
  info.compute_capability_major = prop.major;
  info.compute_capability_minor = prop.minor;
  info.multiprocessors = prop.multiProcessorCount;
  info.total_memory = prop.totalGlobalMem;
  FR_CUDA_CHECK(cudaDriverGetVersion(&info.driver_version));
  FR_CUDA_CHECK(cudaRuntimeGetVersion(&info.runtime_version));
  info.cublas_version = cublas_property(MAJOR_VERSION) * 10000 +
                        cublas_property(MINOR_VERSION) * 100 + cublas_property(PATCH_LEVEL);
  return info;
}

BuildInfo build_info() {
  BuildInfo info{};
  info.cuda_version = CUDART_VERSION;
  info.cublas_version = CUBLAS_VERSION;
#if defined(__CUDA_ARCH_LIST__)
  info.architectures = FR_STRINGIFY(__CUDA_ARCH_LIST__);
#else
  info.architectures = "unknown";
#endif
  return info;
}

Availability availability() noexcept {
  try {
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) {
      (void)cudaGetLastError();
      return {false, std::string("no usable CUDA device: ") + cudaGetErrorName(err) + ": " +
                         cudaGetErrorString(err)};
    }
    if (count == 0) return {false, "no CUDA device"};
    const DeviceInfo info = device_info();
    const std::string device = "device " + std::to_string(info.device) + " (" + info.name +
                               ", compute capability " +
                               std::to_string(info.compute_capability_major) + "." +
                               std::to_string(info.compute_capability_minor) + ")";
    cudaFuncAttributes attributes{};
    const cudaError_t image = cudaFuncGetAttributes(&attributes, probe_kernel);
    if (image != cudaSuccess) {
      (void)cudaGetLastError();
      return {false, device + ": the kernels were compiled for architectures " +
                         build_info().architectures + " and cannot run on it (" +
                         cudaGetErrorString(image) + "); rebuild with "
                         "FUSEDRNN_CUDA_ARCHITECTURES including it"};
    }
    cublas_handle(false);
    return {true, device};
  } catch (const std::exception& e) {
    return {false, e.what()};
  } catch (...) {
    return {false, "unknown error while probing the CUDA device"};
  }
}

}  // namespace cuda
}  // namespace fusedrnn
