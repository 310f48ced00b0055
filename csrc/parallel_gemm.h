// GEMMs and row loops spread over the kernels' threads (thread_pool.h). A product is cut into
// blocks of C's rows or columns, each one single-threaded OpenBLAS call, or, when C is too small
// for that, into parts of k whose sums are added in a fixed order. The cut depends on the sizes
// only, so every element of C is computed the same way whatever the thread count.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>

#include "blas.h"
#include "rnn_common.h"
#include "thread_pool.h"

namespace fusedrnn {
namespace cpu {

// A block of ~2 MFLOP takes ~25 µs on one core: enough to amortise handing it out. Each block
// is its own BLAS call and packs the operand it shares with the other blocks again. Measured on
// one core (Zen 2, OpenBLAS 0.3.34): that costs about 46/edge of the work when the shared
// operand is out of cache (a 6400x1024x256 product cut into 200-row blocks: +23%), and little
// when it is small and cached (a 64x1024x256 step in 128-column blocks ran faster than whole).
// 16-row blocks once spent a third of a training step packing.
constexpr double kBlockFlops = 2e6;
constexpr int64_t kMinBlockEdge = 128;
constexpr int64_t kMinBlockEdgeUncached = 512;  // shared operand of 1 MB of floats or more
constexpr int64_t kUncachedElements = int64_t{1} << 18;
constexpr int64_t kMaxBlocks = 64;
constexpr int64_t kAlign = 16;  // block edges on 64-byte boundaries of float rows
constexpr double kSplitAlwaysFlops = 5e7;  // ~0.7 ms on one core
constexpr int64_t kSplitAlwaysBlocks = 4;
// Parts of k for a product whose C is too small to cut: each holds a C-sized partial sum.
constexpr int64_t kMaxKParts = 8;

// OpenBLAS must not start threads of its own under ours (see thread_pool.h). Checked at every
// product: another library in the process (threadpoolctl, say) may have set it since.
inline void make_blas_single_threaded() {
  if (scipy_openblas_get_num_threads() != 1) scipy_openblas_set_num_threads(1);
}

// Edges of `blocks` near-equal parts of [0, extent), each a multiple of kAlign but the last.
struct Split {
  int64_t extent, step, count;
  Split(int64_t extent_, int64_t blocks) : extent(extent_) {
    step = (extent + blocks - 1) / blocks;
    step = std::min(extent, (step + kAlign - 1) / kAlign * kAlign);
    count = (extent + step - 1) / step;
  }
  int64_t begin(int64_t i) const { return i * step; }
  int64_t size(int64_t i) const { return std::min(step, extent - i * step); }
};

// A power of two near `wanted` blocks, at most `most` (and at least 1): blocks then spread
// evenly over 2, 4 or 8 threads, where 3 blocks kept one of two threads waiting a third of the
// time. Up to the next power of two where `most` allows, else down.
inline int64_t even_blocks(int64_t wanted, int64_t most) {
  int64_t count = 1;
  while (count < wanted && count * 2 <= most) count *= 2;
  return count;
}

// Blocks along a dimension of `extent`, the other operand (`shared` elements) packed by each.
inline int64_t block_count(double flops, int64_t extent, int64_t shared) {
  const auto wanted = static_cast<int64_t>(flops / kBlockFlops);
  const int64_t edge = shared >= kUncachedElements ? kMinBlockEdgeUncached : kMinBlockEdge;
  int64_t most = std::min(kMaxBlocks, extent / edge);
  // A big product is never left to one thread for want of 512-row blocks: packing the shared
  // operand again costs a few tenths of a block, an idle core all of it (a 512x512 weight
  // gradient over 2560 rows was one block).
  if (flops >= kSplitAlwaysFlops)
    most = std::max(most, std::min(kSplitAlwaysBlocks, extent / kMinBlockEdge));
  return even_blocks(wanted, most);
}

// One block: a GEMM, or for a single row of C (a batch of one) the matrix-vector product, which
// OpenBLAS's GEMM would run after packing the whole weight matrix at every step.
template <typename T>
void gemm_block(Op ta, Op tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
                const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m != 1) return gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  const int64_t inc_a = ta == Op::N ? 1 : lda;  // the row of op(A)
  if (tb == Op::T) gemv(Op::N, n, k, alpha, b, ldb, a, inc_a, beta, c, 1);  // B is [n, k]
  else gemv(Op::T, k, n, alpha, b, ldb, a, inc_a, beta, c, 1);              // B is [k, n]
}

// row(b) for b in [0, rows), in blocks of rows holding at least ~16K values of `row_width`.
template <typename F>
void parallel_rows(int64_t rows, int64_t row_width, const F& row) {
  const int64_t per_block = std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(1, row_width));
  const int64_t blocks = (rows + per_block - 1) / per_block;
  parallel_for(blocks, [&](int64_t i) {
    const int64_t end = std::min(rows, (i + 1) * per_block);
    for (int64_t r = i * per_block; r < end; ++r) row(r);
  });
}

// The sums of a product's parts of k after the first (which goes into C itself): kept for one
// call and added to C at its end, or (`KPartSums* kept` of parallel_gemm) kept over all the calls
// of a product whose k comes in several, and added once after the last: a backward's weight
// gradients, one call for each chunk of steps. Added at each call, every chunk's parts first
// zeroed their buffers, and one thread then added the seven to a 64 KB C while the other waited:
// kept over the chunks, RNN training T=200 B=128 H=128 ran 6% faster (alternated in one process
// on a Zen 3), B=16 and T=20 B=128 3%, LSTM T=200 B=128 H=32 4%.
template <typename T>
class KPartSums {
 public:
  // Sums of an m x n product's parts 1 to most - 1.
  KPartSums(int64_t m, int64_t n, int64_t most = kMaxKParts) : m_(m), n_(n), most_(most) {}

  // Part i's sum (0 < i < most) of an m x n product, and whether it holds one already.
  T* part(int64_t i, int64_t m, int64_t n) {
    if (m != m_ || n != n_ || i < 1 || i >= most_)
      detail::fail("KPartSums: part " + std::to_string(i) + " of a " + std::to_string(m) + "x" +
                   std::to_string(n) + " product, expected 1 to " + std::to_string(most_ - 1) +
                   " of " + std::to_string(m_) + "x" + std::to_string(n_));
    if (!sums_) sums_.reset(new T[static_cast<std::size_t>((most_ - 1) * m_ * n_)]);
    return sums_.get() + (i - 1) * m_ * n_;
  }
  bool holds(int64_t i) const { return i < parts_; }
  // Parts [1, parts) hold sums from here on.
  void hold(int64_t parts) { parts_ = std::max(parts_, parts); }

  // c[m, n] += the parts' sums, in order of part.
  void add_to(T* c, int64_t ldc) {
    if (parts_ == 1) return;
    parallel_rows(m_, n_ * std::max<int64_t>(1, parts_ - 1), [&](int64_t r) {
      for (int64_t i = 1; i < parts_; ++i) {
        const T* sum = sums_.get() + ((i - 1) * m_ + r) * n_;
        for (int64_t j = 0; j < n_; ++j) c[r * ldc + j] += sum[j];
      }
    });
    parts_ = 1;
  }

 private:
  int64_t m_, n_, most_;
  int64_t parts_ = 1;  // parts [1, parts_) hold sums
  std::unique_ptr<T[]> sums_;
};

// C[m, n] = alpha · op(A) · op(B) + beta · C for k in parts: the first into C, each other added
// to its sum in `sums`.
template <typename T>
void gemm_in_k_parts(Op ta, Op tb, int64_t m, int64_t n, int64_t k, int64_t parts, T alpha,
                     const T* a, int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc,
                     KPartSums<T>& sums) {
  const Split ks(k, parts);
  T* out[kMaxKParts] = {c};
  for (int64_t i = 1; i < ks.count; ++i) out[i] = sums.part(i, m, n);
  parallel_for(ks.count, [&](int64_t i) {
    const int64_t k0 = ks.begin(i);
    const T part_beta = i == 0 ? beta : sums.holds(i) ? T(1) : T(0);
    gemm_block(ta, tb, m, n, ks.size(i), alpha, a + (ta == Op::N ? k0 : k0 * lda), lda,
               b + (tb == Op::N ? k0 * ldb : k0), ldb, part_beta, out[i], i == 0 ? ldc : n);
  });
  sums.hold(ks.count);
}

// C[m, n] = alpha · op(A) · op(B) + beta · C, as blas.h's gemm, in blocks of C's rows (when C
// is at least as tall as it is wide) or columns. A C too small for that (a weight gradient of
// H=32 over a chunk of steps) is cut along k instead, the parts' sums added in order: at the
// end of this call, or with `kept` once its caller has made all the calls that sum into C.
template <typename T>
void parallel_gemm(Op ta, Op tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
                   int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc,
                   KPartSums<T>* kept = nullptr) {
  make_blas_single_threaded();
  const double flops = 2.0 * double(m) * double(n) * double(k);
  const int64_t blocks = m >= n ? block_count(flops, m, k * n) : block_count(flops, n, m * k);
  if (blocks == 1) {
    const int64_t parts = even_blocks(static_cast<int64_t>(flops / kBlockFlops),
                                      std::min(kMaxKParts, k / kMinBlockEdge));
    if (parts > 1) {
      if (kept)
        return gemm_in_k_parts(ta, tb, m, n, k, parts, alpha, a, lda, b, ldb, beta, c, ldc,
                               *kept);
      KPartSums<T> sums(m, n, parts);
      gemm_in_k_parts(ta, tb, m, n, k, parts, alpha, a, lda, b, ldb, beta, c, ldc, sums);
      return sums.add_to(c, ldc);
    }
  }
  if (m >= n) {
    const Split rows(m, blocks);
    parallel_for(rows.count, [&](int64_t i) {
      const int64_t r = rows.begin(i);
      gemm_block(ta, tb, rows.size(i), n, k, alpha, a + (ta == Op::N ? r * lda : r), lda, b, ldb,
                 beta, c + r * ldc, ldc);
    });
  } else {
    const Split cols(n, blocks);
    parallel_for(cols.count, [&](int64_t i) {
      const int64_t col = cols.begin(i);
      gemm_block(ta, tb, m, cols.size(i), k, alpha, a, lda, b + (tb == Op::N ? col : col * ldb),
                 ldb, beta, c + col, ldc);
    });
  }
}

}  // namespace cpu
}  // namespace fusedrnn
