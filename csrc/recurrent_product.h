// The recurrent products of one time step, h·W_hhᵀ forward and dG·W_hh backward, computed for a
// block of rows and hidden units at a time. A step hands each thread such a block: the thread
// computes that block's share of the product and then the block's pointwise math at once,
// while the values it just wrote are in its cache, the steps of a walk in one job of the pool
// (thread_pool.h's parallel_steps), or the threads walk batch rows of their own through a chunk
// of steps (cells_cpu.h's walk_row_blocks).
//
// W_hh is packed once per call into column panels for fusedrnn's own register-blocked kernel
// (recurrent_product.cc), float or double. OpenBLAS packs its operand again at every call, which
// for a step's small product (a 16x128 h against a 512x128 W_hh, say) costs about as much as
// the product. A batch of one in a short call (a matrix-vector product), and an RNN's forward
// at a batch of one, read W_hh where it lies: forward by row_dots where the CPU has AVX-512,
// else through BLAS on each block; backward by row_axpys where it has AVX2 or AVX-512.
#pragma once

#include <cstdint>

#include "parallel_gemm.h"
#include "rnn_common.h"

namespace fusedrnn {
namespace cpu {

// A product C[rows, columns] = A[rows, k] · M, where M is read from the row-major W (leading
// dimension ldw): transposed (forward, h·W_hhᵀ) M[k][col] = W[col][k]; else (backward, dG·W_hh)
// M[k][col] = W[k][col]. The columns are `segments` segments of `width` (the gates forward, one
// segment backward); the units [u0, u1) of a product are the columns s·width + u of every segment
// s for u in [u0, u1).
struct ProductShape {
  bool transposed;
  int64_t k, segments, width;
};

// The kernel's panel for elements T: `units` units of every segment, in 32-byte vectors (8
// floats or 4 doubles); and its tiles, by the instruction set the CPU runs (see the .cc). A
// double panel has half a float one's units, and so the same vectors and tiles.
struct PanelLayout {
  int64_t units;    // per segment
  int vectors;      // 32-byte vectors across a panel: segments·units·sizeof(T)/32
  int rows;         // rows of A a tile needs to keep the FMA units busy
  int max_rows;     // rows of A a tile holds at most
};
template <typename T>
PanelLayout panel_layout(int64_t segments);

// "avx512f", "avx2+fma" or "portable": what this CPU runs, capped by FUSEDRNN_KERNEL_ISA.
const char* recurrent_kernel_isa();

// Whether the kernel runs the products over a chunk's rows (chunk_product.h) faster than the
// BLAS: with
// AVX-512, which the kernel uses and OpenBLAS may not (OPENBLAS_CORETYPE=Haswell, or a CPU it
// does not know): one Zen 5 core ran it at 230-250 GFLOP/s, OpenBLAS's AVX2 kernels at 129.
// With AVX2 the two were level (86 and 87.5 on a Zen 3 core), and BLAS keeps the job.
bool packed_kernel_beats_blas();

// c[u] = Σ_k a[k]·w[u·ldw + k] for u < n (+= with accumulate): one row of A against rows of W
// read where they lie, for a batch of one's forward step (M = W_hhᵀ, not packed) where
// packed_kernel_beats_blas(). Each dot is summed in an order of its own, whatever the threads.
// On two Zen 4 cores OpenBLAS's matrix-vector product read a 16 MB W_hh from L3 at 69-103 GB/s,
// these dots at 92-126; alternated in one process, LSTM inference T=20 B=1 ran 7-9% faster at
// H=1024 and 9-11% at H=512, GRU at H=1024 1-11%. The dots read W four rows at a time, and ask
// for the lines they will read: with asks_in_rows (dots_ask_in_rows) those a kilobyte on in the
// same rows, into L1; else those of the next four rows at the same k, into L2.
template <typename T>
void row_dots(const T* a, const T* w, int64_t ldw, int64_t k, int64_t n, T* c, bool accumulate,
              bool asks_in_rows);
// Whether a step's row_dots over a W of `w_bytes` in all ask in their rows: everywhere but on
// AMD's family 25 past 8 MB. Alternated in one process on a Zen 4, both orders of the builds
// (the geometric mean of the two), a batch of one at T=20 ran faster asking for the next rows:
// LSTM inference at H=1024 (a 16 MB W_hh) 13-23% (four runs), GRU (12 MB) 2-14%, LSTM training
// 5-6%, GRU training 3-4%, float64 LSTM inference at H=1024 (32 MB) 29%, GRU 10%. Level at LSTM
// H=768 (9.4 MB; 1.000), GRU H=768 (7 MB; 0.990) and RNN H=1024 (4 MB; 0.997); but slower at
// float64 LSTM H=512 (8 MB; 1.050), GRU H=512 (1.054), LSTM H=256 (1.039), float64 LSTM H=256
// (1.094) and LSTM H=128 (a W_hh of 256 KB, which stays in L2 and needs asking into L1; 1.181).
// Asking for nothing ran LSTM inference at H=1024 7% faster than asking in rows, GRU 2% slower.
bool dots_ask_in_rows(int64_t w_bytes);
// c[r·ldc + u] (+)= Σ_k a[r·lda + k]·w[u·ldw + k] for r < rows, u < n: row_dots for several
// rows of A (a batch of one's input projection over a few steps, chunk_product.h), each dot
// with row_dots's bits.
template <typename T>
void rows_dots(const T* a, int64_t lda, int64_t rows, const T* w, int64_t ldw, int64_t k,
               int64_t n, T* c, int64_t ldc, bool accumulate);
// c[u] = Σ_k a[k]·w[k·ldw + u] for u < n (+= with accumulate): the same for a backward step
// (M = W_hh, not transposed), every row of W_hh read across a block of units, where
// row_axpys_runs() (AVX-512 or AVX2). The bits are the packed kernel's. OpenBLAS's
// matrix-vector product read W_hh in strips of 128 units, a few cache lines of every row at a
// time; two Zen 4 cores ran a 4096x1024 W_hh at 41 GB/s that way, at 68 (91) by this in blocks
// of 256 (512) units; 1024x1024 at 68, and 90 (107). On two Zen 3 cores (AVX2) in LSTM
// training T=20 B=1 H=1024, OpenBLAS's read its W_hh at 41 GB/s, these at 54; alternated in one
// process (both builds first in turn), training with a batch of one ran 2-9% faster at H=512
// and 1024 (calls of 16 steps and more now pack instead: packs_one_row). Several rows
// of A at once this way (their sums in L1, four rows of A against four of W), with the same
// bits, ran a batch of one's dx over 20 steps (a 16 MB W_ih) in 4.2 ms, 40 GFLOP/s, where
// packing W_ih and multiplying took 2.2-3.3: the sums' loads and stores bound it. rows_axpys
// keeps its sums in registers.
template <typename T>
void row_axpys(const T* a, const T* w, int64_t ldw, int64_t k, int64_t n, T* c, bool accumulate);
// c[r·ldc + u] = Σ_k a[r·lda + k]·w[k·ldw + u] for r < rows, u < n: a few rows of A against W
// (M = W, not transposed) read where it lies, for a backward's dx = dG·W_ih over a few steps
// (chunk_product.h), where packed_kernel_beats_blas(); n a multiple of rows_axpys_units<T>().
// Each sum is taken in k order by fused multiply-adds from zero, so the bits are the packed
// kernel's. Five rows of A against four registers (256 bytes) of each row of W, k in blocks of
// kAxpysBlockK (their lines asked for a block ahead): on two Zen 4 cores, 20 rows against a
// 16 MB W_ih not in cache ran at 137-146 GFLOP/s (1.15-1.22 ms); without the requests at
// 105-115. In LSTM training T=20 B=1 H=1024, dx took 1.2 ms this way (the step with it against
// without), 1.8-2.4 packing W_ih by groups and multiplying.
template <typename T>
void rows_axpys(const T* a, int64_t lda, int64_t rows, const T* w, int64_t ldw, int64_t k,
                int64_t n, T* c, int64_t ldc);
template <typename T>
constexpr int64_t rows_axpys_units() { return 4 * 64 / int64_t{sizeof(T)}; }
bool row_axpys_runs();
// Whether the kernel runs vector code (AVX2 and FMA, or AVX-512), not its portable loops.
bool kernel_vectorised();

template <typename T>
int64_t packed_elements(const ProductShape& shape);
template <typename T>
int64_t packed_panels(const ProductShape& shape);
template <typename T>
int64_t panel_elements(const ProductShape& shape);  // one panel's
template <typename T>
void pack_panels(const ProductShape& shape, const T* w, int64_t ldw, T* packed);
// Where the rows of an M not transposed lie: row k at w + (k / run)·stride + (k % run)·ldw,
// runs of `run` rows ldw apart, the runs `stride` apart (a part of the batch over a chunk's
// steps: sequence_cpu.cc's kRowParts). run 0: every row ldw apart.
struct RowRuns {
  int64_t run = 0, stride = 0;
};
// Panels [p0, p1) only, (p1 - p0)·panel_elements(shape) elements at `packed`.
template <typename T>
void pack_panels(const ProductShape& shape, const T* w, int64_t ldw, int64_t p0, int64_t p1,
                 T* packed, const RowRuns& runs = {});
// The panels of a stacked M, [W; W_right] along k: its first shape.k - k_right k from w, the
// last k_right from w_right (each read as `shape` says).
template <typename T>
void pack_stacked_panels(const ProductShape& shape, const T* w, int64_t ldw, const T* w_right,
                         int64_t ldw_right, int64_t k_right, T* packed);
// Packed panels [first, ...) at base, panel_elements apart: a whole packing (first 0), or a
// group.
template <typename T>
struct Panels {
  const T* base;
  int64_t first, panel_elements;
};
// The panels from p0 on that pack_panels wrote to `packed`.
template <typename T>
Panels<T> packed_at(const ProductShape& shape, const T* packed, int64_t p0 = 0) {
  return {packed, p0, panel_elements<T>(shape)};
}

// A's last `k` k in a second array: A[r][shape.k - k + i] is a[r·lda + i] (a stacked product,
// [x | h]·[W_ih; W_hh]ᵀ, reads its rows from x and h where they are).
template <typename T>
struct RightA {
  const T* a = nullptr;
  int64_t lda = 0, k = 0;
};

// C[:, units of panels [p0, p1)] (+)= A · M. A[r][k] is a[r·lda + k] (up to k = shape.k -
// right.k, then from `right`), or, a_transposed (with the AVX-512 kernel only, and no right
// part), a[k·lda + r]. With `stream` (C overwritten, streams_whole_lines: chunk_product.h's
// streams_c), the AVX-512 tiles write C's whole lines by non-temporal stores.
template <typename T>
void packed_multiply(const ProductShape& shape, const Panels<T>& panels, int64_t p0, int64_t p1,
                     const T* a, int64_t lda, int64_t rows, T* c, int64_t ldc, bool accumulate,
                     bool a_transposed = false, const RightA<T>& right = {},
                     bool stream = false);

// Whether packed_multiply may stream C (its `stream`): C of one segment, its rows on cache lines,
// so that each register's two halves make one whole line (a half alone has memory read the line
// after all, and a non-temporal store off 32 bytes faults).
template <typename T>
bool streams_whole_lines(const ProductShape& shape, const T* c, int64_t ldc) {
  return shape.segments == 1 && reinterpret_cast<std::uintptr_t>(c) % 64 == 0 &&
         ldc * int64_t{sizeof(T)} % 64 == 0;
}

// Whether rows of A lda elements apart fall into the same one of L1's 64 sets of lines: rows
// 4 KB apart (h at H = 1024 floats, 512 doubles) do (see RecurrentProduct::reads_a_transposed).
template <typename T>
bool rows_share_a_cache_set(int64_t lda) {
  return lda * int64_t{sizeof(T)} % 4096 == 0;
}
// dst[j·rows + r] = a[r·lda + j] for r < rows and j < k, in blocks of rows over the threads.
template <typename T>
void transpose_rows(const T* a, int64_t lda, int64_t rows, int64_t k, T* dst);

template <typename T>
class RecurrentProduct {
 public:
  RecurrentProduct() = default;
  // `packing` holds packing_size(shape, rows, steps) elements.
  RecurrentProduct(const ProductShape& shape, const T* w, int64_t ldw, T* packing)
      : shape_(shape), w_(w), ldw_(ldw), packed_(packing) {
    if (packed_) {
      pack_panels(shape_, w_, ldw_, packed_);
      return;
    }
    make_blas_single_threaded();  // once per call, not at every block of every step
  }
  // A stacked product, packed: M is [W; W_right] along k, its last k_right k from w_right, and
  // A's rows are [a | a_right] (multiply with a_right). `packing` holds packed_elements(shape)
  // elements.
  RecurrentProduct(const ProductShape& shape, const T* w, int64_t ldw, const T* w_right,
                   int64_t ldw_right, int64_t k_right, T* packing)
      : shape_(shape), w_(w), ldw_(ldw), packed_(packing), k_right_(k_right) {
    if (!packed_ || k_right <= 0 || k_right >= shape.k)
      detail::fail("RecurrentProduct: a stacked product is packed and has two parts");
    pack_stacked_panels(shape_, w_, ldw_, w_right, ldw_right, k_right_, packed_);
  }

  // Packed panels for products of several rows, in a call of `steps` steps; 0 for none (W read
  // where it lies): a batch of one unless the kernel runs it over enough steps (steps 0:
  // never). A matrix-vector product reads W once per step either way, and packing costs ~10
  // steps; but one float row against a panel in L2 ran at 79 GFLOP/s on a Zen 5 core, OpenBLAS's
  // AVX2 gemv at 42 (from L3, both 48).
  static int64_t packing_size(const ProductShape& shape, int64_t rows, int64_t steps) {
    const bool packs =
        rows > 1 || (packs_one_row(shape) && steps >= min_steps_packing_one_row(shape));
    return packs ? packed_elements<T>(shape) : 0;
  }
  // Whether a batch of one's products may run packed: with AVX2 or AVX-512, forward and
  // backward. The backward's panels one row reads in order, where row_axpys reads strips of
  // every row of W: alternated in one process on a Zen 3 (2 cores), training with a batch of one
  // and the backward packed ran 16-19% faster at H=1024 (LSTM T=200, GRU T=20, RNN T=200), 8.5%
  // for LSTM T=200 H=512, 5% for LSTM T=20 H=1024, level at H=32 and 128 (against row_axpys;
  // with each build loaded first in turn, LSTM T=200 22% faster at H=1024 and 14% at H=512, GRU
  // T=20 H=1024 10.5%). The forward's, where BLAS would run a matrix-vector product for each
  // gate (an RNN's single one stays with BLAS: StepProducts::main_packing), in one pass over the
  // panels instead: on the same Zen 3 from 32 steps, both builds loaded first in turn (the
  // geometric mean of the two orders), LSTM inference T=200 B=1 ran 23% faster at H=32, 15% at
  // H=128 and 256, 4% at H=512, 8% at H=1024; GRU 15%, 7%, 11%, 2% and 7%; LSTM training 4.5%
  // at H=128, 1-2% at H=512 and 1024, GRU level at H=128 and 1.5-2.5% faster at H=512 and 1024.
  // At T=32 the packing's cost ate the gain (LSTM and GRU level at H=128 and 512; at T=64 LSTM
  // H=128 13% faster, GRU 4%, both level at H=512); at T=20 GRU H=128 and 512 ran 6% slower.
  static bool packs_one_row(const ProductShape&) { return kernel_vectorised(); }
  // The backward's products (M not transposed) by BLAS read W in strips of columns, a block of
  // units each, every row of W a few cache lines at a time; from 8 MB on, packed panels repay
  // their packing sooner. Alternated in one process on a Zen 4, training with a batch of one
  // and the backward packed from 16 steps: LSTM T=20 H=1024 (16 MB) 9-21% faster, T=16
  // 11-15%, H=768 (9.4 MB) 3-9%, float64 H=512 (8 MB) 4-13%, GRU H=1024 13-18%; but LSTM
  // H=512 (4 MB) 3-6% slower, GRU H=512 3-7%, and LSTM T=4 H=1024 5-7%. The forward's products
  // by BLAS read whole rows of W: packed from 16 steps, LSTM T=20 H=1024 trained 4-8% slower.
  // (Both measured against BLAS. Against row_dots and row_axpys, which read an unpacked W
  // faster: packing in every call ran LSTM and GRU at T=20 4-22% slower, at T=4 16-49%; packing
  // in none ran T=200 inference 0-8% slower, training's backward 11-28%, at T=20 H=1024 2-15%.)
  // With AVX2 the backward from 16 steps at any size: alternated in one process on a Zen 3
  // against packing from 32 (16 from 8 MB), LSTM training T=20 B=1 ran 14% faster at H=256 and
  // 2-4% at H=512, GRU H=512 7%, RNN H=1024 12%; from 4 steps, LSTM T=4 H=1024 ran 14% slower,
  // from 8, T=8 H=512 6% slower. The forward from 32 (packs_one_row).
  static int64_t min_steps_packing_one_row(const ProductShape& shape) {
    const bool strips = !shape.transposed && weight_bytes(shape, false) >= kStripsBytes;
    if (!packed_kernel_beats_blas())  // AVX2: see above
      return shape.transposed ? kMinStepsPackingOneRow : kMinStepsPackingOneRow / 2;
    return strips ? kMinStepsPackingOneRow / 2 : kMinStepsPackingOneRow;
  }

  // Whether W is packed for fusedrnn's kernel (else BLAS runs the products).
  bool packed() const { return packed_ != nullptr; }

  // Unit blocks handed to threads start on multiples of this.
  int64_t unit_step() const {
    if (packed_) return panel_layout<T>(shape_.segments).units;
    if (!shape_.transposed && row_axpys_runs()) return kMinAxpyUnits;  // row_axpys
    // BLAS blocks of at least 128 units, as parallel_gemm's: backward, a block of a batch of one
    // is a matrix-vector product down all G·H rows of W_hh, which narrower blocks read a
    // fraction of a cache line at a time (LSTM T=200 B=1 H=1024 training: 16-unit blocks took
    // 1.8x as long).
    return kMinBlockEdge;
  }

  // Row blocks handed to threads hold at least this many rows: the kernel's tile rows.
  int64_t row_step() const { return row_step(shape_, packed_ != nullptr); }
  static int64_t row_step(const ProductShape& shape, bool packed) {
    return packed ? panel_layout<T>(shape.segments).rows : 1;
  }

  // Bytes of M that a product over all units reads.
  int64_t weight_bytes() const { return weight_bytes(shape_, packed_ != nullptr); }
  static int64_t weight_bytes(const ProductShape& shape, bool packed) {
    if (packed) return packed_elements<T>(shape) * int64_t{sizeof(T)};
    return shape.k * shape.segments * shape.width * int64_t{sizeof(T)};
  }

  // C[:, units [u0, u1)] = [a | a_right]·M for a stacked product (u0 as below).
  void multiply(const T* a, int64_t lda, const T* a_right, int64_t lda_right, int64_t rows,
                int64_t u0, int64_t u1, T* c, int64_t ldc) const {
    if (k_right_ <= 0) detail::fail("RecurrentProduct: not a stacked product");
    const int64_t units = unit_step();
    packed_multiply(shape_, packed_at(shape_, packed_), u0 / units, (u1 + units - 1) / units, a,
                    lda, rows, c, ldc, false, false, RightA<T>{a_right, lda_right, k_right_});
  }

  // Whether a product over `rows` rows of an A whose rows lie lda elements apart should read a
  // transposed copy of A (transpose_rows, multiply_transposed). Where the rows share a cache
  // set, a tile of more rows than L1 has ways (8 on Zen 4) reads more lines of that set at each
  // k than it holds, and its rows evict one another before their next k. One Zen 4 core ran 128
  // rows at k = 1024 at 70 GFLOP/s from A in place, 97 from A transposed (93 with A's rows a
  // line further apart). Alternated in one process, LSTM inference at H = 1024 ran 5-8% faster
  // at B=128, 10% at B=24, 12% at B=32, float64 11% at B=64; but 1-3% slower at B=16 (tiles of
  // 8 rows) and 0.5-4% at B=8, hence tiles of more than 8.
  bool reads_a_transposed(int64_t lda, int64_t rows) const {
    return reads_a_transposed(shape_, packed_ != nullptr, lda, rows);
  }
  static bool reads_a_transposed(const ProductShape& shape, bool packed, int64_t lda,
                                 int64_t rows) {
    if (!packed || !packed_kernel_beats_blas() || !rows_share_a_cache_set<T>(lda)) return false;
    const int64_t most = panel_layout<T>(shape.segments).max_rows;
    const int64_t tiles = (rows + most - 1) / most;  // packed_multiply's near-equal tiles
    return (rows + tiles - 1) / tiles > kL1Ways;
  }

  // C[:, units [u0, u1)] = A·M for A transposed, A[r][k] = a_t[k·lda_t + r] (packed only).
  void multiply_transposed(const T* a_t, int64_t lda_t, int64_t rows, int64_t u0, int64_t u1,
                           T* c, int64_t ldc) const {
    if (!packed_) detail::fail("RecurrentProduct: only a packed product reads A transposed");
    const int64_t units = unit_step();
    packed_multiply(shape_, packed_at(shape_, packed_), u0 / units, (u1 + units - 1) / units,
                    a_t, lda_t, rows, c, ldc, false, true);
  }

  // C[:, units [u0, u1)] = A·M, or += when accumulate; u0 is a multiple of unit_step().
  void multiply(const T* a, int64_t lda, int64_t rows, int64_t u0, int64_t u1, T* c, int64_t ldc,
                bool accumulate) const {
    if (packed_) {
      const int64_t units = unit_step();
      return packed_multiply(shape_, packed_at(shape_, packed_), u0 / units,
                             (u1 + units - 1) / units, a, lda, rows, c, ldc, accumulate);
    }
    const int64_t n = u1 - u0;
    if (rows == 1 && !shape_.transposed && row_axpys_runs())
      return row_axpys(a, w_ + u0, ldw_, shape_.k, n, c + u0, accumulate);
    if (rows == 1 && packed_kernel_beats_blas()) {
      const bool asks_in_rows = dots_ask_in_rows(weight_bytes(shape_, false));
      for (int64_t s = 0; s < shape_.segments; ++s) {
        const int64_t col = s * shape_.width + u0;
        row_dots(a, w_ + col * ldw_, ldw_, shape_.k, n, c + col, accumulate, asks_in_rows);
      }
      return;
    }
    const T beta = accumulate ? T(1) : T(0);
    if (!shape_.transposed)
      return gemm_block(Op::N, Op::N, rows, n, shape_.k, T(1), a, lda, w_ + u0, ldw_, beta,
                        c + u0, ldc);
    for (int64_t s = 0; s < shape_.segments; ++s) {
      const int64_t col = s * shape_.width + u0;
      gemm_block(Op::N, Op::T, rows, n, shape_.k, T(1), a, lda, w_ + col * ldw_, ldw_, beta,
                 c + col, ldc);
    }
  }

 private:
  static constexpr int64_t kMinStepsPackingOneRow = 32;
  static constexpr int64_t kMinAxpyUnits = 256;
  static constexpr int64_t kStripsBytes = int64_t{8} << 20;
  static constexpr int64_t kL1Ways = 8;

  ProductShape shape_{};
  const T* w_ = nullptr;
  int64_t ldw_ = 0;
  T* packed_ = nullptr;  // null: BLAS
  int64_t k_right_ = 0;  // a stacked product's k from its second weight
};

}  // namespace cpu
}  // namespace fusedrnn
