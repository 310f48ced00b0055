// The input projection of a chunk of steps, x·W_ihᵀ over all its rows at once. Where fusedrnn's
// own kernel is faster than the BLAS (AVX-512, see packed_kernel_beats_blas), float W_ih is
// packed once per call into the kernel's panels, as W_hh is (recurrent_product.h), and the
// chunk's rows go to the threads in blocks; otherwise one parallel_gemm.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "parallel_gemm.h"
#include "recurrent_product.h"

namespace fusedrnn {
namespace cpu {

template <typename T>
class InputProjection {
 public:
  // Elements of packing the projection of I inputs to `gates`·H outputs needs (0: BLAS).
  static int64_t packing_size(int64_t I, int64_t gates, int64_t H) {
    if constexpr (std::is_same<T, float>::value) {
      if (packed_kernel_beats_blas()) return packed_floats(shape(I, gates, H));
    }
    return 0;
  }

  // `packing` holds packing_size(I, gates, H) elements (null where that is 0).
  InputProjection(int64_t I, int64_t gates, int64_t H, const T* w_ih, T* packing)
      : shape_(shape(I, gates, H)), w_ih_(w_ih), packed_(packing) {
    if constexpr (std::is_same<T, float>::value) {
      if (packed_) pack_panels(shape_, w_ih_, I, packed_);
    }
  }

  // out[rows, gates·H] = x[rows, I]·W_ihᵀ.
  void operator()(const T* x, int64_t rows, T* out) const {
    const int64_t I = shape_.k, GH = shape_.segments * shape_.width;
    if constexpr (std::is_same<T, float>::value) {
      if (packed_) {
        // Blocks of rows whose x (at most 256 KB) stays in L2 while every panel of W_ih
        // passes over it.
        const int64_t per_block = std::max<int64_t>(16, (int64_t{1} << 16) / I);
        const int64_t blocks = even_blocks((rows + per_block - 1) / per_block, kMaxBlocks);
        const int64_t panels = packed_panels(shape_);
        return parallel_for(blocks, [&](int64_t i) {
          const int64_t r0 = rows * i / blocks, r1 = rows * (i + 1) / blocks;
          packed_multiply(shape_, packed_, 0, panels, x + r0 * I, I, r1 - r0, out + r0 * GH, GH,
                          false);
        });
      }
    }
    parallel_gemm(Op::N, Op::T, rows, GH, I, T(1), x, I, w_ih_, I, T(0), out, GH);
  }

 private:
  static ProductShape shape(int64_t I, int64_t gates, int64_t H) {
    return ProductShape{true, I, gates, H};
  }

  ProductShape shape_;
  const T* w_ih_;
  T* packed_;
};

}  // namespace cpu
}  // namespace fusedrnn
