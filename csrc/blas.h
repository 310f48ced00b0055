// Row-major GEMM over the scipy-openblas32 build of OpenBLAS (symbols prefixed scipy_), typed so
// that the driver is written once for float and double.
#pragma once

#include <cblas.h>

#include <cstdint>

namespace fusedrnn {

enum class Op { N, T };

inline CBLAS_TRANSPOSE to_cblas(Op op) { return op == Op::N ? CblasNoTrans : CblasTrans; }

// C[m, n] = alpha · op(A)[m, k] · op(B)[k, n] + beta · C. The callers have checked that every
// size and leading dimension fits the 32-bit BLAS integer (check_blas_int in sequence_cpu.cc).
inline void gemm(Op ta, Op tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                 int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  scipy_cblas_sgemm(CblasRowMajor, to_cblas(ta), to_cblas(tb), blasint(m), blasint(n), blasint(k),
                    alpha, a, blasint(lda), b, blasint(ldb), beta, c, blasint(ldc));
}

inline void gemm(Op ta, Op tb, int64_t m, int64_t n, int64_t k, double alpha, const double* a,
                 int64_t lda, const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  scipy_cblas_dgemm(CblasRowMajor, to_cblas(ta), to_cblas(tb), blasint(m), blasint(n), blasint(k),
                    alpha, a, blasint(lda), b, blasint(ldb), beta, c, blasint(ldc));
}

// y = alpha · op(A) · x + beta · y for a row-major A[rows, cols] (op(A) is A or Aᵀ).
inline void gemv(Op ta, int64_t rows, int64_t cols, float alpha, const float* a, int64_t lda,
                 const float* x, int64_t incx, float beta, float* y, int64_t incy) {
  scipy_cblas_sgemv(CblasRowMajor, to_cblas(ta), blasint(rows), blasint(cols), alpha, a,
                    blasint(lda), x, blasint(incx), beta, y, blasint(incy));
}

inline void gemv(Op ta, int64_t rows, int64_t cols, double alpha, const double* a, int64_t lda,
                 const double* x, int64_t incx, double beta, double* y, int64_t incy) {
  scipy_cblas_dgemv(CblasRowMajor, to_cblas(ta), blasint(rows), blasint(cols), alpha, a,
                    blasint(lda), x, blasint(incx), beta, y, blasint(incy));
}

}  // namespace fusedrnn
