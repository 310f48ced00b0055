// The DLPack ABI (https://dmlc.github.io/dlpack/latest/c_api.html), version 1: the structs that
// cross library boundaries, declared from the specification so that the build needs no extra
// header. Only what the CUDA glue uses. Layouts must match the specification exactly.
#pragma once

#include <cstdint>

namespace fusedrnn {
namespace dlpack {

constexpr int32_t kDLCPU = 1;
constexpr int32_t kDLCUDA = 2;
constexpr uint8_t kDLFloat = 2;  // DLDataTypeCode
constexpr uint64_t kFlagReadOnly = 1;  // DLPACK_FLAG_BITMASK_READ_ONLY

struct DLDevice {
  int32_t device_type;  // DLDeviceType (a C enum: int-sized)
  int32_t device_id;
};

struct DLDataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};

struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;  // in elements; nullptr means C-contiguous
  uint64_t byte_offset;
};

// Pre-1.0 form: capsule name "dltensor", renamed "used_dltensor" once consumed.
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor* self);
};

struct DLPackVersion {
  uint32_t major;
  uint32_t minor;
};

// 1.0 form: capsule name "dltensor_versioned", renamed "used_dltensor_versioned" once consumed.
struct DLManagedTensorVersioned {
  DLPackVersion version;
  void* manager_ctx;
  void (*deleter)(DLManagedTensorVersioned* self);
  uint64_t flags;
  DLTensor dl_tensor;
};

}  // namespace dlpack
}  // namespace fusedrnn
