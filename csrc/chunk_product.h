// The products over all rows of a chunk of steps: the forward's input projection x·W_ihᵀ, the
// backward's dx = dG·W_ih, and its weight gradients dGᵀ·x and dGᵀ·h, whose sum over the chunk's
// rows is the product's k. Where fusedrnn's own kernel is faster than the BLAS (AVX-512, see
// packed_kernel_beats_blas), float M is packed into the kernel's panels (W once per call, as
// W_hh is in recurrent_product.h; x and h once per chunk) and C's rows go to the threads in
// blocks; otherwise each product is one parallel_gemm.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "parallel_gemm.h"
#include "recurrent_product.h"

namespace fusedrnn {
namespace cpu {

template <typename T>
class ChunkProduct {
 public:
  // Elements of packing a product of `shape` needs (0: BLAS).
  static int64_t packing_size(const ProductShape& shape) {
    if constexpr (std::is_same<T, float>::value) {
      if (packed_kernel_beats_blas()) return packed_floats(shape);
    }
    return 0;
  }

  // C = A·M with M read from w as recurrent_product.h's ProductShape says; `packing` holds
  // packing_size(shape) elements (null where that is 0).
  ChunkProduct(const ProductShape& shape, const T* w, int64_t ldw, T* packing)
      : shape_(shape), w_(w), ldw_(ldw), packed_(packing) {
    if constexpr (std::is_same<T, float>::value) {
      if (packed_) pack_panels(shape_, w_, ldw_, packed_);
    }
  }

  // c[rows, columns] (+)= A[rows, k]·M, A[r][k] = a[r·lda + k] or, a_transposed, a[k·lda + r].
  void operator()(const T* a, int64_t lda, bool a_transposed, int64_t rows, T* c, int64_t ldc,
                  bool accumulate) const {
    const int64_t k = shape_.k, columns = shape_.segments * shape_.width;
    if constexpr (std::is_same<T, float>::value) {
      if (packed_) {
        // Blocks of rows whose A (at most 256 KB) stays in L2 while every panel passes over it.
        const int64_t per_block = std::max<int64_t>(16, (int64_t{1} << 16) / k);
        const int64_t blocks = even_blocks((rows + per_block - 1) / per_block, kMaxBlocks);
        const int64_t panels = packed_panels(shape_);
        return parallel_for(blocks, [&](int64_t i) {
          const int64_t r0 = rows * i / blocks, r1 = rows * (i + 1) / blocks;
          packed_multiply(shape_, packed_, 0, panels, a + (a_transposed ? r0 : r0 * lda), lda,
                          r1 - r0, c + r0 * ldc, ldc, accumulate, a_transposed);
        });
      }
    }
    parallel_gemm(a_transposed ? Op::T : Op::N, shape_.transposed ? Op::T : Op::N, rows, columns,
                  k, T(1), a, lda, w_, ldw_, accumulate ? T(1) : T(0), c, ldc);
  }

 private:
  ProductShape shape_;
  const T* w_;
  int64_t ldw_;
  T* packed_;
};

}  // namespace cpu
}  // namespace fusedrnn
