// Row-major GEMM over cuBLAS (column-major), typed like csrc/blas.h so that the CUDA driver is
// written once for float and double, and the per-device cuBLAS handle it runs on.
#pragma once

#include <cublas_v2.h>

#include <cstdint>

#include "cuda_check.h"

namespace fusedrnn {
namespace cuda {

enum class Op { N, T };

// A handle of the current device, created on first use and kept for the life of the process,
// bound to the legacy default stream. tf32=false: full FP32/FP64 products; tf32=true: float
// products may use TF32 tensor cores.
cublasHandle_t cublas_handle(bool tf32);

// C[m, n] = alpha · op(A)[m, k] · op(B)[k, n] + beta · C, all row-major. A row-major matrix is
// its column-major transpose with the same leading dimension, so this is the column-major
// Cᵀ = op(B)ᵀ · op(A)ᵀ: the operands swap places and keep their op flags. The callers have checked
// that every size and leading dimension fits cuBLAS's int (check_dims in rnn_common.h).
inline cublasOperation_t to_cublas(Op op) { return op == Op::N ? CUBLAS_OP_N : CUBLAS_OP_T; }

inline void gemm(cublasHandle_t h, Op ta, Op tb, int64_t m, int64_t n, int64_t k, float alpha,
                 const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                 int64_t ldc) {
  FR_CUBLAS_CHECK(cublasSgemm(h, to_cublas(tb), to_cublas(ta), int(n), int(m), int(k), &alpha, b,
                              int(ldb), a, int(lda), &beta, c, int(ldc)));
}

inline void gemm(cublasHandle_t h, Op ta, Op tb, int64_t m, int64_t n, int64_t k, double alpha,
                 const double* a, int64_t lda, const double* b, int64_t ldb, double beta,
                 double* c, int64_t ldc) {
  FR_CUBLAS_CHECK(cublasDgemm(h, to_cublas(tb), to_cublas(ta), int(n), int(m), int(k), &alpha, b,
                              int(ldb), a, int(lda), &beta, c, int(ldc)));
}

}  // namespace cuda
}  // namespace fusedrnn
