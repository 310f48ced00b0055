// The products over all rows of a chunk of steps: the forward's input projection x·W_ihᵀ, the
// backward's dx = dG·W_ih, and its weight gradients dGᵀ·x and dGᵀ·h, whose sum over the chunk's
// rows is the product's k. Where fusedrnn's own kernel is faster than the BLAS (AVX-512, see
// packed_kernel_beats_blas), M is packed a group of panels at a time, each group multiplied by
// all of C's rows (in blocks over the threads) before the next is packed into the same scratch.
// A whole packed W_ih (12 MB for GRU I = H = 1024) doubled a training step's peak memory over
// torch's; packing a group again for each chunk costs ~3% of the chunk's product; and M read in
// place, a panel's k-th row a run of a row of W_ih or x, ran LSTM training T=20 B=128 H=1024 at
// 510 against 355 ms (rows 4 KB apart share cache sets), and x and h read in place at H=128
// (rows 512 bytes apart) ran training T=200 B=16 and B=128 1-3% slower on a Zen 5, T=20 3%
// faster; but a batch of one's projection over a few steps reads W_ih's rows where they lie by
// dot products (Reading::dots), and a dx over a few rows reads them by rows_axpys
// (Reading::axpys). Otherwise each product is one parallel_gemm.
#pragma once

#include <algorithm>
#include <cstdint>

#include "parallel_gemm.h"
#include "recurrent_product.h"

namespace fusedrnn {
namespace cpu {

template <typename T>
class ChunkProduct {
 public:
  // How the products read M: packed a group of panels at a time in every call, packed whole
  // once, or where it lies for few rows of A: by dot products of A's rows with W's rows (M
  // transposed: dots_pay), or by W's rows scaled by A's and summed (M not: axpys_pay).
  enum class Reading { groups, whole, dots, axpys };

  // Elements of scratch a product of `shape` needs: a group of panels, or all of M, or none.
  static int64_t packing_size(const ProductShape& shape, Reading reading = Reading::groups) {
    if (!uses_kernel() || reading == Reading::dots || reading == Reading::axpys) return 0;
    const int64_t panels =
        reading == Reading::whole ? packed_panels<T>(shape) : group_panels(shape);
    return panels * panel_elements<T>(shape);
  }

  // Whether products of at most `rows` rows read a transposed M (x·W_ihᵀ) by rows_dots faster
  // than packing it: W is read once either way, but packing it costs about as much as a
  // product of a hundred rows. Alternated in one process on a Zen 4, inference with a batch
  // of one at H=1024 ran 4-6% faster at T=20 (GRU 6-11%, RNN 13-15%) and 7-14% at T=64,
  // training T=20 level to 4% faster and T=64 3-9%. Reading by dots at any rows, LSTM
  // inference ran 5-7% faster at T=96, level at T=128 and 3-8% slower at T=200, and at H=128
  // (a W_ih of 256 KB, one group) T=64 0-4% slower.
  static bool dots_pay(const ProductShape& shape, int64_t rows) {
    const int64_t bytes = RecurrentProduct<T>::weight_bytes(shape, false);  // W where it lies
    return uses_kernel() && shape.transposed && rows <= kMaxDotRows && bytes > kGroupBytes;
  }
  // Whether products of at most `rows` rows read M = W (not transposed, one segment: dx =
  // dG·W_ih) by rows_axpys rather than packing it, with the packed kernel's bits. Alternated in
  // one process on a Zen 4 (both orders of the builds), training with a batch of one ran 4%
  // faster at T=20 H=1024 (GRU 10%, RNN 6%), 9% at H=512 (float64 11%), 4% at T=96 H=512 and
  // 3% at T=200 H=1024 (GRU T=200 H=512 level); a batch of four 10% at T=20 H=1024, GRU T=24
  // H=512 3%. Up to dots' kMaxDotRows rows (not measured past them).
  static bool axpys_pay(const ProductShape& shape, int64_t rows) {
    const int64_t bytes = RecurrentProduct<T>::weight_bytes(shape, false);
    return uses_kernel() && !shape.transposed && shape.segments == 1 &&
           shape.width % rows_axpys_units<T>() == 0 && rows <= kMaxDotRows && bytes > kGroupBytes;
  }

  // C = A·M with M read from w as recurrent_product.h's ProductShape says; `packing` holds
  // packing_size(shape, reading) elements (null where that is 0). Reading whole, or where all
  // of M fits in one group, M is packed here, once for every call, rather than a group at a
  // time in each: the backward's dx = dG·W_ih packed the same W_ih again for every chunk.
  // M's rows may lie in runs (RowRuns, packed by the kernel only).
  ChunkProduct(const ProductShape& shape, const T* w, int64_t ldw, T* packing,
               Reading reading = Reading::groups, const RowRuns& runs = {})
      : shape_(shape),
        w_(w),
        ldw_(ldw),
        packing_(packing),
        runs_(runs),
        dots_(reading == Reading::dots),
        axpys_(reading == Reading::axpys),
        in_place_(uses_kernel() && runs.run == 0 && laid_out_as_panels(shape, ldw)),
        whole_(uses_kernel() && !dots_ && !axpys_ &&
               (reading == Reading::whole || group_panels(shape) == packed_panels<T>(shape))) {
    if (dots_ && !(uses_kernel() && shape.transposed))
      detail::fail("ChunkProduct: reading by dots needs a transposed M and the AVX-512 kernel");
    if (axpys_ && !axpys_pay(shape, 0))
      detail::fail("ChunkProduct: reading by axpys needs an M that axpys_pay takes");
    if (runs.run != 0 && (!uses_kernel() || dots_ || axpys_))
      detail::fail("ChunkProduct: rows in runs are packed, by the AVX-512 kernel");
    if (whole_ && !in_place_)
      pack_panels(shape_, w_, ldw_, 0, packed_panels<T>(shape_), packing_, runs_);
  }

  // c[rows, columns] (+)= A[rows, k]·M, A[r][k] = a[r·lda + k] or, a_transposed, a[k·lda + r].
  // A BLAS product cut along k may leave its parts' sums in `kept` (parallel_gemm).
  void operator()(const T* a, int64_t lda, bool a_transposed, int64_t rows, T* c, int64_t ldc,
                  bool accumulate, KPartSums<T>* kept = nullptr) const {
    const int64_t k = shape_.k, columns = shape_.segments * shape_.width;
    if (dots_) {
      if (a_transposed) detail::fail("ChunkProduct: reading by dots needs A not transposed");
      // M's columns are W's rows: blocks of them over the threads, each streaming its share.
      const Split blocks(columns, std::clamp<int64_t>(columns / kDotBlockColumns, 1, kMaxBlocks));
      parallel_for(blocks.count, [&](int64_t i) {
        const int64_t u0 = blocks.begin(i);
        rows_dots(a, lda, rows, w_ + u0 * ldw_, ldw_, k, blocks.size(i), c + u0, ldc,
                  accumulate);
      });
      return;
    }
    if (axpys_) {
      if (a_transposed || accumulate)
        detail::fail("ChunkProduct: reading by axpys needs A not transposed and C overwritten");
      // A block of M's columns for each thread, each reading its share of every row of W.
      const int64_t units = columns / rows_axpys_units<T>();
      const int64_t blocks = std::min<int64_t>(units, pool_threads());
      parallel_for(blocks, [&](int64_t i) {
        const int64_t u0 = units * i / blocks * rows_axpys_units<T>();
        const int64_t u1 = units * (i + 1) / blocks * rows_axpys_units<T>();
        rows_axpys(a, lda, rows, w_ + u0, ldw_, k, u1 - u0, c + u0, ldc);
      });
      return;
    }
    if (uses_kernel()) {
      // Blocks of rows whose A (at most 256 KB) stays in L2 while every panel passes over it,
      // and of at most ~kBlockFlops: a float projection of I=32 was one block for 1024 rows,
      // and one thread's.
      const int64_t per_block = std::max<int64_t>(16, (int64_t{1} << 18) / (k * sizeof(T)));
      const double flops = 2.0 * double(rows) * double(columns) * double(k);
      const int64_t wanted = std::max((rows + per_block - 1) / per_block,
                                      static_cast<int64_t>(flops / kBlockFlops));
      const int64_t blocks = even_blocks(wanted, std::clamp<int64_t>(rows / 16, 1, kMaxBlocks));
      const int64_t panels = packed_panels<T>(shape_);
      const int64_t group = group_panels(shape_);
      // Too few rows to cut (a batch of one's 20 steps) but work for several threads: each
      // thread packs panels and multiplies every row by them in turn, while they are in its
      // caches. In one block of rows, one thread ran LSTM training T=20 B=1 H=1024's input
      // projection and dx while the other had only packed with it. Of such a dx (LSTM T=20
      // B=1 H=1024), packing takes more than half: a 16 MB W_ih at 6-11 GB/s, the multiply
      // 175-190 GFLOP/s. Packing whole rows of W in each task (k split over the threads, not
      // 128 bytes of every row) ran that training level to 6% slower, and prefetching rows
      // ahead sped the packing alone by 10% at most.
      const bool cut_panels = blocks == 1 && wanted > 1;
      const bool stream = streams_c(a_transposed, accumulate, rows, c, ldc);
      for (int64_t p0 = 0; p0 < panels; p0 += group) {
        const int64_t p1 = std::min(panels, p0 + group);
        const Panels<T> at = in_place_ ? packed_at(shape_, w_)
                                       : packed_at(shape_, packing_, whole_ ? 0 : p0);
        if (cut_panels) {
          parallel_for(p1 - p0, [&](int64_t i) {
            const int64_t p = p0 + i;
            if (!whole_)
              pack_panels(shape_, w_, ldw_, p, p + 1, packing_ + i * at.panel_elements, runs_);
            packed_multiply(shape_, at, p, p + 1, a, lda, rows, c, ldc, accumulate,
                            a_transposed, {}, stream);
          });
          continue;
        }
        if (!whole_) pack_panels(shape_, w_, ldw_, p0, p1, packing_, runs_);
        parallel_for(blocks, [&](int64_t i) {
          const int64_t r0 = rows * i / blocks, r1 = rows * (i + 1) / blocks;
          packed_multiply(shape_, at, p0, p1, a + (a_transposed ? r0 : r0 * lda), lda, r1 - r0,
                          c + r0 * ldc, ldc, accumulate, a_transposed, {}, stream);
        });
      }
      return;
    }
    parallel_gemm(a_transposed ? Op::T : Op::N, shape_.transposed ? Op::T : Op::N, rows, columns,
                  k, T(1), a, lda, w_, ldw_, accumulate ? T(1) : T(0), c, ldc, kept);
  }

 private:
  static bool uses_kernel() { return packed_kernel_beats_blas(); }
  // Whether the kernel writes C by non-temporal stores (packed_multiply's stream): a weight
  // gradient (A transposed, dGᵀ·x over a chunk) of kStreamBytes or more, written rather than
  // added to, in whole lines (streams_whole_lines). Each of its lines is written once,
  // after as few FMAs as the chunk has rows: at a batch of one (20 at T=20) the product waits on
  // memory, which would read each line of C before it is written (a write-allocate) and write it
  // back later; streamed, the lines are only written. C that large would not stay in this VM's
  // share of L3 for its next reader anyway. Alternated in one process on a Zen 4, both orders of
  // the builds, training ran faster: LSTM T=20 B=1 H=1024 5-7% (dW_ih and dW_hh 16 MB each),
  // GRU 5-6.5%, float64 LSTM T=20 B=1 H=512 9%, LSTM T=20 B=16 H=1024 3%, T=200 B=1 H=1024
  // 1.5%; level LSTM T=20 B=4 and B=128 H=1024 and T=200 B=16 H=1024 (whose later chunks add
  // to C). Rows on cache lines alone (the outputs' blocks aligned, rnn.h's OutputBuffer) ran
  // level.
  bool streams_c(bool a_transposed, bool accumulate, int64_t rows, const T* c,
                 int64_t ldc) const {
    const int64_t bytes = rows * shape_.segments * shape_.width * int64_t{sizeof(T)};
    return a_transposed && !accumulate && bytes >= kStreamBytes &&
           streams_whole_lines(shape_, c, ldc);
  }
  static constexpr int64_t kStreamBytes = int64_t{8} << 20;
  // Panels packed at a time: about kGroupBytes.
  static int64_t group_panels(const ProductShape& shape) {
    return std::clamp<int64_t>(kGroupBytes / (panel_elements<T>(shape) * int64_t{sizeof(T)}), 1,
                               packed_panels<T>(shape));
  }
  static constexpr int64_t kGroupBytes = int64_t{2} << 20;
  static constexpr int64_t kMaxDotRows = 96;
  static constexpr int64_t kDotBlockColumns = 64;
  // Whether M, read from w with rows ldw apart, is already one packed panel: not transposed,
  // and its rows exactly a panel's units (float H=32, double H=16). The weight gradients of
  // H=32 then read x and h where they lie: packing them took 3.5% of LSTM training T=200
  // B=128 H=32, on one thread while the other waited.
  static bool laid_out_as_panels(const ProductShape& shape, int64_t ldw) {
    return !shape.transposed && shape.segments == 1 &&
           shape.width == panel_layout<T>(1).units && ldw == shape.width;
  }

  ProductShape shape_;
  const T* w_;
  int64_t ldw_;
  T* packing_;
  RowRuns runs_;
  bool dots_;      // M read by rows_dots (Reading::dots)
  bool axpys_;     // M read by rows_axpys (Reading::axpys)
  bool in_place_;  // M read from w (laid_out_as_panels)
  bool whole_;     // M packed once, in the constructor (or read in place)
};

}  // namespace cpu
}  // namespace fusedrnn
