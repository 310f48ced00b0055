// fusedrnn's own kernel for the recurrent product, float and double (see recurrent_product.h).
//
// M is packed once per call into panels, each the columns of `units` consecutive hidden units of
// every segment, k rows of 32-byte vectors (8 floats, 4 doubles): [panel][k][segment·units +
// unit], zero past the last unit. A double panel has half a float one's units, so the tiles
// below hold the same registers for either. A tile of rows of A against one panel keeps its
// sums in registers, adding one k at a time: every element is summed in k order by fused
// multiply-adds from zero, whichever tile or thread computes it, so the AVX2 and AVX-512
// kernels give the same bits. The portable one, for
// CPUs without FMA, rounds each product and each sum apart: bits of its own.
// AVX2 (16 registers): tiles of 3 rows by a 4-vector panel, 12 accumulators (with the 3 A
// broadcasts and one panel vector, all 16; a last four rows go as two tiles over half the
// panel, 8 each); GRU's three segments make a 3-vector panel, in tiles of 4 rows. AVX-512 (32
// registers): each 64-byte register holds two of the panel's vectors, and a tile has up to 24
// accumulators (12 rows of a 2-register panel, 8 of a 3-register one). A block's rows are cut
// into near-equal tiles, none under layout.rows.
// A panel outer loop keeps one panel (k·vectors·32 bytes) in L2 while all rows of A pass over
// it; panels that fit in half of L2 together go in a loop inside the rows' (rows_outer_fits).
// A batch of one's step, W_hh not packed, reads W_hh where it lies: forward by row_dots (dot
// products of h with W_hh's rows; AVX-512), backward by row_axpys (every row of W_hh across a
// block of units; AVX2 or AVX-512); its input projection over a few steps by rows_dots
// (row_dots for several rows of x).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <utility>

#include "cpu_isa.h"
#include "recurrent_product.h"
#include "rnn_common.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define FR_AVX2_KERNEL 1
#endif

namespace fusedrnn {
namespace cpu {
namespace {

// Elements in one of a panel's 32-byte vectors.
template <typename T>
constexpr int kLanes = 32 / sizeof(T);
constexpr int kMaxRows = 12;  // AVX-512's 2-register panels
constexpr int kMaxVectors = 6;
constexpr int kAvx512Accumulators = 24;

// What a tile reads: `rows` of A, and for each k the tile's vectors at panel + k·stride. A
// stacked product's A is two arrays side by side: the first k_count k of row r from rows[r], the
// next k_right from right_rows[r].
template <typename T>
struct TileIn {
  const T* const* rows;
  const T* panel;
  int64_t stride;  // elements from one k of the panel to the next
  int64_t k_count;
  // A transposed (AVX-512 tiles only): row r's k at rows[0] + k·lda_t + r.
  int64_t lda_t;
  const T* const* right_rows;
  int64_t k_right;
};

// Where a tile's sums go: vector v of row r to rows[r] + columns[v], added to what is there when
// `accumulate` (as dst + sum, the same bits as the sum added to dst).
template <typename T>
struct TileOut {
  T* rows[kMaxRows];
  int64_t columns[kMaxVectors];
  bool accumulate;
  bool stream = false;  // by non-temporal stores, not added (packed_multiply's stream)
};

template <typename T, int Rows, int Vectors, bool Stacked>
void tile_portable(const TileIn<T>& in, const TileOut<T>& out) {
  constexpr int kWidth = Vectors * kLanes<T>;
  T acc[Rows][kWidth] = {};
  for (int part = 0; part < (Stacked ? 2 : 1); ++part) {  // A's arrays
    const T* const* rows = part ? in.right_rows : in.rows;
    const T* const panel = in.panel + (part ? in.k_count * in.stride : 0);
    const int64_t k_count = part ? in.k_right : in.k_count;
    for (int64_t k = 0; k < k_count; ++k) {
      const T* m = panel + k * in.stride;
      for (int r = 0; r < Rows; ++r) {
        const T ar = rows[r][k];
        for (int j = 0; j < kWidth; ++j) acc[r][j] += ar * m[j];
      }
    }
  }
  for (int r = 0; r < Rows; ++r)
    for (int v = 0; v < Vectors; ++v) {
      T* dst = out.rows[r] + out.columns[v];
      const T* sum = acc[r] + v * kLanes<T>;
      for (int j = 0; j < kLanes<T>; ++j) dst[j] = out.accumulate ? dst[j] + sum[j] : sum[j];
    }
}

#if FR_AVX2_KERNEL
#define FR_AVX2_INLINE __attribute__((target("avx2,fma"), always_inline)) inline
#define FR_AVX512_INLINE __attribute__((target("avx512f"), always_inline)) inline

// The intrinsics the tiles use, by element type T, whose intrinsics end in P (ps for float, pd
// for double) and broadcast one element with B (ss, sd): a 32-byte vector V (AVX2) ...
template <typename T>
struct Avx2;
#define FR_AVX2_OPS(T, V, P, B)                                                               \
  template <>                                                                               \
  struct Avx2<T> {                                                                          \
    using Vector = V;                                                                       \
    FR_AVX2_INLINE static V zero() { return _mm256_setzero_##P(); }                         \
    FR_AVX2_INLINE static V broadcast(const T* p) { return _mm256_broadcast_##B(p); }       \
    FR_AVX2_INLINE static V load(const T* p) { return _mm256_loadu_##P(p); }                \
    FR_AVX2_INLINE static V fmadd(V a, V b, V c) { return _mm256_fmadd_##P(a, b, c); }      \
    /* dst = v, or dst + v */                                                               \
    FR_AVX2_INLINE static void store(T* dst, V v, bool accumulate) {                        \
      _mm256_storeu_##P(dst, accumulate ? _mm256_add_##P(_mm256_loadu_##P(dst), v) : v);    \
    }                                                                                       \
  };
FR_AVX2_OPS(float, __m256, ps, ss)
FR_AVX2_OPS(double, __m256d, pd, sd)
#undef FR_AVX2_OPS

// ... and a 64-byte one (AVX-512), which holds two of the panel's vectors.
template <typename T>
struct Avx512;
#define FR_AVX512_OPS(T, V, P, Mask)                                                          \
  template <>                                                                               \
  struct Avx512<T> {                                                                        \
    using Vector = V;                                                                       \
    FR_AVX512_INLINE static V zero() { return _mm512_setzero_##P(); }                       \
    FR_AVX512_INLINE static V set1(T a) { return _mm512_set1_##P(a); }                      \
    FR_AVX512_INLINE static V load(const T* p) { return _mm512_loadu_##P(p); }              \
    FR_AVX512_INLINE static void store(T* p, V v) { _mm512_storeu_##P(p, v); }             \
    FR_AVX512_INLINE static V fmadd(V a, V b, V c) { return _mm512_fmadd_##P(a, b, c); }    \
    /* p[0, count), zeros past them (count below the register's lanes) */                  \
    FR_AVX512_INLINE static V load_first(const T* p, int64_t count) {                       \
      return _mm512_maskz_loadu_##P(static_cast<Mask>((1u << count) - 1), p);               \
    }                                                                                       \
  };
FR_AVX512_OPS(float, __m512, ps, __mmask16)
FR_AVX512_OPS(double, __m512d, pd, __mmask8)
#undef FR_AVX512_OPS

// A 64-byte register's bits as doubles, for AVX-512F's 64x4 extract of each half (the 32x8 one
// needs DQ): through a store and two loads, k=32 float tiles ran 4% slower on a Zen 5 core.
FR_AVX512_INLINE __m512d as_doubles(__m512 v) { return _mm512_castps_pd(v); }
FR_AVX512_INLINE __m512d as_doubles(__m512d v) { return v; }

// Half h of a 64-byte register (the masked form, all lanes kept: GCC 12's unmasked one, and
// the cast to the low half made of it, warn of their own undefined source, bug 105593) to dst,
// or added to dst.
template <int Half>
FR_AVX512_INLINE void store_half(float* dst, __m512d v, bool accumulate) {
  const __m256 h = _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xFF, v, Half));
  _mm256_storeu_ps(dst, accumulate ? _mm256_add_ps(_mm256_loadu_ps(dst), h) : h);
}
template <int Half>
FR_AVX512_INLINE void store_half(double* dst, __m512d v, bool accumulate) {
  const __m256d h = _mm512_maskz_extractf64x4_pd(0xFF, v, Half);
  _mm256_storeu_pd(dst, accumulate ? _mm256_add_pd(_mm256_loadu_pd(dst), h) : h);
}
// store_half by a non-temporal store, to a dst on 32 bytes.
template <int Half>
FR_AVX512_INLINE void stream_half(float* dst, __m512d v) {
  _mm256_stream_ps(dst, _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xFF, v, Half)));
}
template <int Half>
FR_AVX512_INLINE void stream_half(double* dst, __m512d v) {
  _mm256_stream_pd(dst, _mm512_maskz_extractf64x4_pd(0xFF, v, Half));
}

// The sum of a register's lanes, each half's lane i added to the other's, then again in halves
// (extracted masked, as in store_half; GCC 12's _mm512_reduce_add warns the same way).
FR_AVX512_INLINE float lanes_sum(__m512 v) {
  const __m512d d = as_doubles(v);
  const __m256 x = _mm256_add_ps(_mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xFF, d, 0)),
                                 _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xFF, d, 1)));
  __m128 y = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  y = _mm_add_ps(y, _mm_movehl_ps(y, y));
  return _mm_cvtss_f32(_mm_add_ss(y, _mm_shuffle_ps(y, y, 1)));
}
FR_AVX512_INLINE double lanes_sum(__m512d v) {
  const __m256d x = _mm256_add_pd(_mm512_maskz_extractf64x4_pd(0xFF, v, 0),
                                  _mm512_maskz_extractf64x4_pd(0xFF, v, 1));
  const __m128d y = _mm_add_pd(_mm256_castpd256_pd128(x), _mm256_extractf128_pd(x, 1));
  return _mm_cvtsd_f64(_mm_add_sd(y, _mm_unpackhi_pd(y, y)));
}

// acc += the k_count k of A's `rows` times the panel from `panel` on (for tile_avx2, once for
// each of A's arrays, as add_products_avx512 for tile_avx512).
template <typename T, int Rows, int Vectors>
FR_AVX2_INLINE void add_products_avx2(typename Avx2<T>::Vector (&acc)[Rows][Vectors],
                                      const T* const* rows, const T* panel, int64_t stride,
                                      int64_t k_count) {
  using S = Avx2<T>;
  const T* a[Rows];
#pragma GCC unroll 4
  for (int r = 0; r < Rows; ++r) a[r] = rows[r];
  for (int64_t k = 0; k < k_count; ++k) {
    const T* m = panel + k * stride;
    if constexpr (Rows > Vectors) {
      // The panel's vectors held, one row's broadcast at a time: 12 accumulators, 3 vectors
      // and a broadcast fill the 16 registers a 4x3 tile has (its 4 broadcasts held would not).
      typename S::Vector mv[Vectors];
#pragma GCC unroll 8
      for (int v = 0; v < Vectors; ++v) mv[v] = S::load(m + v * kLanes<T>);
#pragma GCC unroll 4
      for (int r = 0; r < Rows; ++r) {
        const typename S::Vector ar = S::broadcast(a[r] + k);
#pragma GCC unroll 8
        for (int v = 0; v < Vectors; ++v) acc[r][v] = S::fmadd(ar, mv[v], acc[r][v]);
      }
    } else {
      typename S::Vector ar[Rows];
#pragma GCC unroll 4
      for (int r = 0; r < Rows; ++r) ar[r] = S::broadcast(a[r] + k);
#pragma GCC unroll 8
      for (int v = 0; v < Vectors; ++v) {
        // Loaded once into a register: GCC otherwise folds the load into each row's FMA, and
        // a 2x4 tile then reads 8 vectors a k for its 8 FMAs, at two loads a cycle on a Zen 3
        // all its FMAs' time. One core ran 2-row LSTM products at k = 128 at 72 GFLOP/s held,
        // 51 folded; LSTM inference T=200 B=16 H=128 (walk blocks of 8 rows: 3 + 3 + 2) ran
        // 3-4% faster, alternated in one process. 3 rows (12 FMAs a k) leave no register free.
        typename S::Vector mv = S::load(m + v * kLanes<T>);
        if constexpr (Rows < 3) __asm__("" : "+x"(mv));
#pragma GCC unroll 4
        for (int r = 0; r < Rows; ++r) acc[r][v] = S::fmadd(ar[r], mv, acc[r][v]);
      }
    }
  }
}

template <typename T, int Rows, int Vectors, bool Stacked>
__attribute__((target("avx2,fma"))) void tile_avx2(const TileIn<T>& in, const TileOut<T>& out) {
  using S = Avx2<T>;
  typename S::Vector acc[Rows][Vectors];
#pragma GCC unroll 4
  for (int r = 0; r < Rows; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < Vectors; ++v) acc[r][v] = S::zero();
  add_products_avx2<T, Rows, Vectors>(acc, in.rows, in.panel, in.stride, in.k_count);
  if constexpr (Stacked)
    add_products_avx2<T, Rows, Vectors>(acc, in.right_rows, in.panel + in.k_count * in.stride,
                                        in.stride, in.k_right);
  // out's fields are read once: the stores go through a type that may alias anything, and
  // would make GCC read them again after each (k=32 tiles ran 3% faster reading them once).
  const TileOut<T> o = out;
#pragma GCC unroll 4
  for (int r = 0; r < Rows; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < Vectors; ++v) S::store(o.rows[r] + o.columns[v], acc[r][v], o.accumulate);
}

// How far ahead (in k) a streaming tile asks for its panel's lines: 2 KB of a 2-register panel.
// 8 k ahead ran LSTM inference T=200 B=1 H=1024 2% slower than 16; 48 timed as 16.
constexpr int64_t kPrefetchK = 16;

// acc += the k_count k of A's `rows` times the panel from `panel` on: tile_avx512 inlines it
// once for each of A's arrays (a lambda would drop the target). Only tiles of stacked products
// have the second: the mere chance of one cost every k=32 tile 5%, k=512 2%. With Prefetch, the
// panel's lines kPrefetchK k ahead are asked for at each k (see streams_panels).
template <typename T, int Rows, int Registers, bool ATransposed, bool Prefetch>
FR_AVX512_INLINE void add_products_avx512(typename Avx512<T>::Vector (&acc)[Rows][Registers],
                                          const T* const* rows, const T* panel, int64_t stride,
                                          int64_t k_count, int64_t lda_t) {
  using S = Avx512<T>;
  const T* a[Rows];
#pragma GCC unroll 12
  for (int r = 0; r < Rows; ++r) a[r] = rows[r];
  for (int64_t k = 0; k < k_count; ++k) {
    const T* m = panel + k * stride;
    if constexpr (Prefetch)
#pragma GCC unroll 3
      for (int z = 0; z < Registers; ++z)
        _mm_prefetch(reinterpret_cast<const char*>(m + kPrefetchK * stride + z * 2 * kLanes<T>),
                     _MM_HINT_T0);
    typename S::Vector mv[Registers];
#pragma GCC unroll 3
    for (int z = 0; z < Registers; ++z) mv[z] = S::load(m + z * 2 * kLanes<T>);
#pragma GCC unroll 12
    for (int r = 0; r < Rows; ++r) {
      // A transposed: the tile's rows lie side by side in A's k-th row.
      const typename S::Vector ar = S::set1(ATransposed ? a[0][k * lda_t + r] : a[r][k]);
#pragma GCC unroll 3
      for (int z = 0; z < Registers; ++z) acc[r][z] = S::fmadd(ar, mv[z], acc[r][z]);
    }
  }
}

// Register z holds the panel's vectors 2z (low half) and 2z + 1.
template <typename T, int Rows, int Registers, bool ATransposed, bool Stacked,
          bool Prefetch = false>
__attribute__((target("avx512f"))) void tile_avx512(const TileIn<T>& in, const TileOut<T>& out) {
  static_assert(!(ATransposed && Stacked), "a stacked product's A is not transposed");
  using S = Avx512<T>;
  typename S::Vector acc[Rows][Registers];
#pragma GCC unroll 12
  for (int r = 0; r < Rows; ++r)
#pragma GCC unroll 3
    for (int z = 0; z < Registers; ++z) acc[r][z] = S::zero();
  add_products_avx512<T, Rows, Registers, ATransposed, Prefetch>(acc, in.rows, in.panel,
                                                                 in.stride, in.k_count, in.lda_t);
  if constexpr (Stacked)
    add_products_avx512<T, Rows, Registers, false, Prefetch>(
        acc, in.right_rows, in.panel + in.k_count * in.stride, in.stride, in.k_right, 0);
  const TileOut<T> o = out;  // read once, as in tile_avx2
#pragma GCC unroll 12
  for (int r = 0; r < Rows; ++r)
#pragma GCC unroll 3
    for (int z = 0; z < Registers; ++z) {
      const __m512d sums = as_doubles(acc[r][z]);
      if (o.stream) {
        stream_half<0>(o.rows[r] + o.columns[2 * z], sums);
        stream_half<1>(o.rows[r] + o.columns[2 * z + 1], sums);
      } else {
        store_half<0>(o.rows[r] + o.columns[2 * z], sums, o.accumulate);
        store_half<1>(o.rows[r] + o.columns[2 * z + 1], sums, o.accumulate);
      }
    }
}

// Rows of A against rows of W where they lie (rows_dots): c[r·ldc + u] (+)= Σ_k a[r·lda + k] ·
// w[u·ldw + k] for r < rows, u < units.
template <typename T>
struct Dots {
  const T* a;
  int64_t lda, rows;
  const T* w;
  int64_t ldw, k_count, units;
  T* c;
  int64_t ldc;
  bool accumulate;
  bool asks_in_rows;  // one row of A: asks kDotPrefetchLines ahead in W's rows (dots_ask_in_rows)
};

// How far ahead a lone row's dots ask for the lines of W's rows: 16 lines (1 KB).
//
// With one row of A (row_dots: a batch of one's step), each line of W makes one FMA and W streams
// once a step. Alternated in one process on a Zen 5, a batch of one at T=20 ran faster with the
// requests: LSTM inference at H=1024 14-20%, at H=128 8%, RNN inference at H=1024 7-10%, LSTM
// training 3%; but GRU inference at H=1024 2-3% slower, and GRU training and LSTM at H=512
// within 3% either way from run to run. 8 lines ahead ran LSTM and GRU H=1024 level to 9%
// slower than 16, 32 lines 5-7% slower. Not on AMD's family 25 past kDotsInRowsBytes of W
// (dots_ask_in_rows), where one row asks for the next group's lines as several do.
constexpr int64_t kDotPrefetchLines = 16;

// Several rows of A (an input projection over a few steps) read each line of W once for all of
// them, in groups of four of W's rows (rows_dots_avx512). Such a W is read cold, from memory
// (a W_ih of 16 MB at H=1024, which the steps' W_hh has pushed out of L3 by the next call), and
// the first tile of a group asks, at each of its k, for the lines of the next group's rows into
// L2: memory then streams the next group while the FMAs run on this one. Alternated in one
// process on a Zen 4, both orders of the builds (the geometric mean of the two), LSTM inference
// T=20 B=1 H=1024 ran 4% faster (10 runs: 0.91-1.01, geometric mean 0.963), GRU 4.5%, float64
// LSTM T=20 B=1 H=512 5% (with the two orders 8% apart), LSTM T=96 B=1 H=512 5%, LSTM training
// T=20 B=1 H=1024 4%; level (within 1.5%) LSTM T=20 B=1 H=512 inference and training, GRU
// training T=20 B=1 H=1024, RNN inference T=20 B=1 H=1024, LSTM inference T=20 B=4 H=1024 and
// training T=64 B=1 H=1024. Asking two groups ahead, or into L1, ran level with this.
constexpr _mm_hint kDotsNextGroupHint = _MM_HINT_T1;

// acc[r][u] += a's row r times w's row u at k [k, k + count), lane by lane: count is a whole
// register's lanes but at the end of the rows. With one row of A that asks in its rows, the
// lines kDotPrefetchLines on in w's rows are asked for; else, with `next` (the next group's first
// row, or null), the lines of the next group's rows at these k.
template <typename T, int Units, int ARows>
FR_AVX512_INLINE void add_dots_avx512(typename Avx512<T>::Vector (&acc)[ARows][Units],
                                      const Dots<T>& d, const T* a, const T* w, int64_t k,
                                      int64_t count, const T* next) {
  using S = Avx512<T>;
  const bool whole = count == 64 / int64_t{sizeof(T)};
  typename S::Vector wv[Units];
#pragma GCC unroll 4
  for (int u = 0; u < Units; ++u) {
    const T* row = w + u * d.ldw + k;
    if (ARows == 1 && d.asks_in_rows)
      _mm_prefetch(reinterpret_cast<const char*>(row + kDotPrefetchLines * 64 / sizeof(T)),
                   _MM_HINT_T0);
    else if (next)
      _mm_prefetch(reinterpret_cast<const char*>(next + u * d.ldw + k), kDotsNextGroupHint);
    wv[u] = whole ? S::load(row) : S::load_first(row, count);
  }
#pragma GCC unroll 6
  for (int r = 0; r < ARows; ++r) {
    const T* row = a + r * d.lda + k;
    const typename S::Vector av = whole ? S::load(row) : S::load_first(row, count);
#pragma GCC unroll 4
    for (int u = 0; u < Units; ++u) acc[r][u] = S::fmadd(wv[u], av, acc[r][u]);
  }
}

// The dots of ARows rows of A and Units rows of W, each in a register of partial sums (the k
// of one lane apart by the register's lanes) added up by lanes_sum at its end. A dot's bits
// depend on its two rows alone, not on the tile that computes it.
template <typename T, int Units, int ARows>
FR_AVX512_INLINE void dots_tile_avx512(const Dots<T>& d, const T* a, const T* w, T* c,
                                       const T* next) {
  using S = Avx512<T>;
  constexpr int64_t kLanes64 = 64 / sizeof(T);
  typename S::Vector acc[ARows][Units];
#pragma GCC unroll 6
  for (int r = 0; r < ARows; ++r)
#pragma GCC unroll 4
    for (int u = 0; u < Units; ++u) acc[r][u] = S::zero();
  int64_t k = 0;
  for (; k + kLanes64 <= d.k_count; k += kLanes64)
    add_dots_avx512<T, Units, ARows>(acc, d, a, w, k, kLanes64, next);
  if (k < d.k_count) add_dots_avx512<T, Units, ARows>(acc, d, a, w, k, d.k_count - k, next);
#pragma GCC unroll 6
  for (int r = 0; r < ARows; ++r)
#pragma GCC unroll 4
    for (int u = 0; u < Units; ++u) {
      T* dst = c + r * d.ldc + u;
      *dst = d.accumulate ? *dst + lanes_sum(acc[r][u]) : lanes_sum(acc[r][u]);
    }
}

// ARows rows of A (from a) against rows [u0, u1) of W, at most four: a tile of all four (which
// asks for `next`'s lines), or one at a time at W's end. Six rows of A keep 24 sums, four rows
// of W and a row of A in registers.
template <typename T, int ARows>
FR_AVX512_INLINE void dots_rows_avx512(const Dots<T>& d, const T* a, int64_t u0, int64_t u1,
                                       T* c, const T* next) {
  if (u1 - u0 == 4) return dots_tile_avx512<T, 4, ARows>(d, a, d.w + u0 * d.ldw, c + u0, next);
  for (int64_t u = u0; u < u1; ++u)
    dots_tile_avx512<T, 1, ARows>(d, a, d.w + u * d.ldw, c + u, nullptr);
}

// Four rows of W at a time (with one row of A, eight ran no faster in a microbenchmark and
// sixteen at half the speed), each four against all rows of A in near-equal tiles of at most
// six while those four stay in L1: W is read from beyond L1 once, and A (a batch of one's steps
// of x, 80 KB at T=20, I=1024) from L2 once for every four rows of W.
template <typename T>
__attribute__((target("avx512f"))) void rows_dots_avx512(const Dots<T>& d) {
  constexpr int64_t kUnits = 4, kMaxTileRows = 6;
  const int64_t tiles = (d.rows + kMaxTileRows - 1) / kMaxTileRows;
  for (int64_t u0 = 0; u0 < d.units; u0 += kUnits) {
    const int64_t u1 = std::min(d.units, u0 + kUnits);
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t r0 = d.rows * t / tiles, r1 = d.rows * (t + 1) / tiles;
      const T* a = d.a + r0 * d.lda;
      T* c = d.c + r0 * d.ldc;
      // The first tile asks for the next group, where that is a whole one (kDotsNextGroupHint).
      const T* next = t == 0 && u1 + kUnits <= d.units ? d.w + u1 * d.ldw : nullptr;
      switch (r1 - r0) {
        case 1: dots_rows_avx512<T, 1>(d, a, u0, u1, c, next); break;
        case 2: dots_rows_avx512<T, 2>(d, a, u0, u1, c, next); break;
        case 3: dots_rows_avx512<T, 3>(d, a, u0, u1, c, next); break;
        case 4: dots_rows_avx512<T, 4>(d, a, u0, u1, c, next); break;
        case 5: dots_rows_avx512<T, 5>(d, a, u0, u1, c, next); break;
        default: dots_rows_avx512<T, 6>(d, a, u0, u1, c, next);
      }
    }
  }
}

// sums[u] += Σ_{q < Rows} a[q]·w[q·ldw + u] for u < units, q in order by fused multiply-adds:
// Rows rows of W against the sums of a block of units (a multiple of the register's lanes
// past `units`, past which W is read as zeros).
template <typename T, int Rows>
FR_AVX512_INLINE void add_rows_avx512(const T* a, const T* w, int64_t ldw, int64_t units,
                                      T* sums) {
  using S = Avx512<T>;
  constexpr int64_t kLanes64 = 64 / sizeof(T);
  typename S::Vector aq[Rows];
#pragma GCC unroll 4
  for (int q = 0; q < Rows; ++q) aq[q] = S::set1(a[q]);
  for (int64_t u = 0; u < units; u += kLanes64) {
    typename S::Vector acc = S::load(sums + u);
    const bool whole = u + kLanes64 <= units;
#pragma GCC unroll 4
    for (int q = 0; q < Rows; ++q) {
      const T* row = w + q * ldw + u;
      acc = S::fmadd(aq[q], whole ? S::load(row) : S::load_first(row, units - u), acc);
    }
    S::store(sums + u, acc);
  }
}

// add_rows_avx512 with 32-byte vectors; a last vector's lanes past units go one by one, by
// std::fma (the same rounding).
template <typename T, int Rows>
FR_AVX2_INLINE void add_rows_avx2(const T* a, const T* w, int64_t ldw, int64_t units, T* sums) {
  using S = Avx2<T>;
  typename S::Vector aq[Rows];
#pragma GCC unroll 4
  for (int q = 0; q < Rows; ++q) aq[q] = S::broadcast(a + q);
  int64_t u = 0;
  for (; u + kLanes<T> <= units; u += kLanes<T>) {
    typename S::Vector acc = S::load(sums + u);
#pragma GCC unroll 4
    for (int q = 0; q < Rows; ++q) acc = S::fmadd(aq[q], S::load(w + q * ldw + u), acc);
    S::store(sums + u, acc, false);
  }
  for (; u < units; ++u)
#pragma GCC unroll 4
    for (int q = 0; q < Rows; ++q) sums[u] = std::fma(a[q], w[q * ldw + u], sums[u]);
}

// add_all_rows_*: the k loop of row_axpys over one block of units by an instruction set's
// add_rows, four rows of W at a time. Written once here: a template can't take a target
// attribute of its own, and a lambda would drop its function's.
#define FR_ADD_ALL_ROWS(NAME, TARGET, ADD_ROWS)                                               \
  template <typename T>                                                                     \
  __attribute__((target(TARGET))) void NAME(const T* a, const T* w, int64_t ldw,            \
                                            int64_t k_count, int64_t units, T* sums) {      \
    int64_t k = 0;                                                                          \
    for (; k + 4 <= k_count; k += 4) ADD_ROWS<T, 4>(a + k, w + k * ldw, ldw, units, sums);  \
    for (; k < k_count; ++k) ADD_ROWS<T, 1>(a + k, w + k * ldw, ldw, units, sums);          \
  }
FR_ADD_ALL_ROWS(add_all_rows_avx512, "avx512f", add_rows_avx512)
FR_ADD_ALL_ROWS(add_all_rows_avx2, "avx2,fma", add_rows_avx2)
#undef FR_ADD_ALL_ROWS

// c[u] (+)= Σ_k a[k]·w[k·ldw + u] for u < n: one row of A against M = W (not transposed) where
// it lies, every row of W read across a block of units at a time, four rows at once. Each sum
// starts from zero and adds the k in order by fused multiply-adds, as the packed tiles do, and
// so has their bits, with AVX-512 or AVX2; the block's sums (4 KB) stay in L1.
template <typename T>
void row_axpys_blocks(const T* a, const T* w, int64_t ldw, int64_t k_count, int64_t n, T* c,
                      bool accumulate) {
  constexpr int64_t kLanes64 = 64 / sizeof(T), kBlock = 4096 / sizeof(T);
  const auto add_all_rows =
      cpu_isa() == Isa::avx512 ? add_all_rows_avx512<T> : add_all_rows_avx2<T>;
  alignas(64) T sums[kBlock];
  for (int64_t u0 = 0; u0 < n; u0 += kBlock) {
    const int64_t units = std::min(kBlock, n - u0);
    std::fill(sums, sums + (units + kLanes64 - 1) / kLanes64 * kLanes64, T(0));
    add_all_rows(a, w + u0, ldw, k_count, units, sums);
    for (int64_t u = 0; u < units; ++u) c[u0 + u] = accumulate ? c[u0 + u] + sums[u] : sums[u];
  }
}

#endif

bool use_avx2_fma() { return cpu_isa() != Isa::portable; }

template <typename T>
using TileFn = void (*)(const TileIn<T>&, const TileOut<T>&);

template <typename T, int Rows, int Vectors, bool Stacked>
TileFn<T> tile_for_cpu() {
#if FR_AVX2_KERNEL
  if (use_avx2_fma()) return tile_avx2<T, Rows, Vectors, Stacked>;
#endif
  return tile_portable<T, Rows, Vectors, Stacked>;
}

#if FR_AVX2_KERNEL
template <typename T, int Vectors, bool ATransposed, bool Stacked, int... Rows>
const TileFn<T>* avx512_tiles(std::integer_sequence<int, Rows...>) {
  static const TileFn<T> tiles[] = {tile_avx512<T, Rows + 1, Vectors / 2, ATransposed, Stacked>...};
  return tiles;
}

template <typename T, bool ATransposed, bool Stacked>
const TileFn<T>* avx512_tiles_for(int vectors) {
  static const TileFn<T>* const four = avx512_tiles<T, 4, ATransposed, Stacked>(
      std::make_integer_sequence<int, kAvx512Accumulators / 2>());
  static const TileFn<T>* const six = avx512_tiles<T, 6, ATransposed, Stacked>(
      std::make_integer_sequence<int, kAvx512Accumulators / 3>());
  return vectors == 4 ? four : six;
}
#endif

template <typename T, bool Stacked>
const TileFn<T>* tiles_for_cpu(int vectors) {
  static const TileFn<T> four[3] = {tile_for_cpu<T, 1, 4, Stacked>(),
                                    tile_for_cpu<T, 2, 4, Stacked>(),
                                    tile_for_cpu<T, 3, 4, Stacked>()};
  static const TileFn<T> three[4] = {
      tile_for_cpu<T, 1, 3, Stacked>(), tile_for_cpu<T, 2, 3, Stacked>(),
      tile_for_cpu<T, 3, 3, Stacked>(), tile_for_cpu<T, 4, 3, Stacked>()};
  return vectors == 4 ? four : three;
}

// The one-row kernel of a layout of `vectors` vectors whose panels stream from beyond L2
// (streams_panels), or null where the CPU runs no such kernel.
template <typename T>
TileFn<T> streaming_row_kernel(int vectors, bool stacked) {
#if FR_AVX2_KERNEL
  if (cpu_isa() == Isa::avx512) {
    if (vectors == 4)
      return stacked ? tile_avx512<T, 1, 2, false, true, true>
                     : tile_avx512<T, 1, 2, false, false, true>;
    return stacked ? tile_avx512<T, 1, 3, false, true, true>
                   : tile_avx512<T, 1, 3, false, false, true>;
  }
#endif
  static_cast<void>(vectors), static_cast<void>(stacked);
  return nullptr;
}

// The kernels for 1..layout.max_rows rows of a layout of `vectors` vectors, at rows - 1. Looked
// up once a product: at every tile, the lookups took 2% of LSTM inference T=20 B=128 H=128,
// whose tiles are short (k = 128).
template <typename T>
const TileFn<T>* tile_kernels(int vectors, bool a_transposed, bool stacked) {
#if FR_AVX2_KERNEL
  if (cpu_isa() == Isa::avx512) {
    if (a_transposed) return avx512_tiles_for<T, true, false>(vectors);
    return stacked ? avx512_tiles_for<T, false, true>(vectors)
                   : avx512_tiles_for<T, false, false>(vectors);
  }
#endif
  return stacked ? tiles_for_cpu<T, true>(vectors) : tiles_for_cpu<T, false>(vectors);
}

// Four rows against half of a 4-vector panel: a 3-row layout's last four rows go as two of these
// (8 accumulators each) rather than as 3 + 1, whose lone row has only 4 accumulators, half of
// what covers the FMA latency. B=16 LSTM products ran 3 to 5% faster on one core, and LSTM
// inference at B=16 (T=200 H=512, T=20 H=1024) 2% faster on two.
template <typename T>
TileFn<T> four_rows_half_panel(bool stacked) {
  static const TileFn<T> tile = tile_for_cpu<T, 4, 2, false>();
  static const TileFn<T> stacked_tile = tile_for_cpu<T, 4, 2, true>();
  return stacked ? stacked_tile : tile;
}

}  // namespace

const char* recurrent_kernel_isa() {
  switch (cpu_isa()) {
    case Isa::avx512: return "avx512f";
    case Isa::avx2: return "avx2+fma";
    default: return "portable";
  }
}

template <typename T>
PanelLayout panel_layout(int64_t segments) {
  if (segments < 1 || segments > 4)
    detail::fail("panel_layout: expected 1 to 4 segments, got " + std::to_string(segments));
  if (cpu_isa() == Isa::avx512) {
    const int vectors = segments == 3 ? 6 : 4;
    const int64_t units = vectors * kLanes<T> / segments;  // float: 32, 16, 16, 8
    // At least 8 accumulators (two FMA pipes, four cycles each) in a tile of layout.rows.
    const int registers = vectors / 2;
    return {units, vectors, (8 + registers - 1) / registers, kAvx512Accumulators / registers};
  }
  // AVX2: three segments (GRU) make a 3-vector panel, in tiles of 4 rows (12 accumulators,
  // the panel's 3 vectors and one row's broadcast at a time), not a 6-vector one in tiles of 2:
  // 2x6 reads 192 bytes of its panel a k for 12 FMAs, all a Zen 3 core's L2 gives in the 6
  // cycles they take where the panel outgrows L1 (k > 128); 4x3 reads 96. Alternated in one
  // process on a Zen 3 (with rows_outer_fits), GRU inference ran 11-21% faster, training 3-8%.
  const int vectors = segments == 3 ? 3 : 4;
  const int rows = segments == 3 ? 4 : 3;
  return {vectors * kLanes<T> / segments, vectors, rows, rows};  // float: 32, 16, 8, 8 units
}

bool packed_kernel_beats_blas() { return cpu_isa() == Isa::avx512; }

bool kernel_vectorised() { return use_avx2_fma(); }

bool row_axpys_runs() { return kernel_vectorised(); }  // its AVX2 and AVX-512 versions

// Past this many bytes of W a Zen 4's lone row asks for the next group's lines (dots_ask_in_rows).
constexpr int64_t kDotsInRowsBytes = int64_t{8} << 20;

bool dots_ask_in_rows(int64_t w_bytes) { return !(amd_family_25() && w_bytes > kDotsInRowsBytes); }

namespace {

// rows_dots, with asks_in_rows for a lone row of A.
template <typename T>
void dots(const T* a, int64_t lda, int64_t rows, const T* w, int64_t ldw, int64_t k, int64_t n,
          T* c, int64_t ldc, bool accumulate, bool asks_in_rows) {
#if FR_AVX2_KERNEL
  if (cpu_isa() == Isa::avx512)
    return rows_dots_avx512(Dots<T>{a, lda, rows, w, ldw, k, n, c, ldc, accumulate, asks_in_rows});
#endif
  detail::fail("rows_dots: expected a CPU with AVX-512 (packed_kernel_beats_blas)");
}

}  // namespace

template <typename T>
void row_dots(const T* a, const T* w, int64_t ldw, int64_t k, int64_t n, T* c, bool accumulate,
              bool asks_in_rows) {
  dots(a, k, 1, w, ldw, k, n, c, n, accumulate, asks_in_rows);
}

template <typename T>
void rows_dots(const T* a, int64_t lda, int64_t rows, const T* w, int64_t ldw, int64_t k,
               int64_t n, T* c, int64_t ldc, bool accumulate) {
  dots(a, lda, rows, w, ldw, k, n, c, ldc, accumulate, false);
}

// rows_axpys's k block, and the rows of A it takes at once (20 accumulators of 4 registers).
constexpr int64_t kAxpysBlockK = 128;
constexpr int kAxpysRows = 5;

#if FR_AVX2_KERNEL
// c[r·ldc + u] for r < Rows and the rows_axpys_units<T>() units from u = 0: the sums over k in
// [k0, k1) added to those of the k before (from zero where k0 = 0). With `ahead`, the lines of
// W's rows `ahead` k on are asked for into L2, up to row k_count - 1.
template <typename T, int Rows>
FR_AVX512_INLINE void axpys_rows_avx512(const T* a, int64_t lda, const T* w, int64_t ldw,
                                        int64_t k0, int64_t k1, int64_t k_count, int64_t ahead,
                                        T* c, int64_t ldc) {
  using S = Avx512<T>;
  constexpr int64_t kLanes64 = 64 / int64_t{sizeof(T)};
  constexpr int kRegisters = static_cast<int>(rows_axpys_units<T>() / kLanes64);
  typename S::Vector acc[Rows][kRegisters];
#pragma GCC unroll 5
  for (int r = 0; r < Rows; ++r)
#pragma GCC unroll 4
    for (int z = 0; z < kRegisters; ++z)
      acc[r][z] = k0 == 0 ? S::zero() : S::load(c + r * ldc + z * kLanes64);
  for (int64_t k = k0; k < k1; ++k) {
    const T* row = w + k * ldw;
    if (ahead) {
      const T* next = w + std::min(k + ahead, k_count - 1) * ldw;
#pragma GCC unroll 4
      for (int z = 0; z < kRegisters; ++z)
        _mm_prefetch(reinterpret_cast<const char*>(next + z * kLanes64), _MM_HINT_T1);
    }
    typename S::Vector wv[kRegisters];
#pragma GCC unroll 4
    for (int z = 0; z < kRegisters; ++z) wv[z] = S::load(row + z * kLanes64);
#pragma GCC unroll 5
    for (int r = 0; r < Rows; ++r) {
      const typename S::Vector ar = S::set1(a[r * lda + k]);
#pragma GCC unroll 4
      for (int z = 0; z < kRegisters; ++z) acc[r][z] = S::fmadd(ar, wv[z], acc[r][z]);
    }
  }
#pragma GCC unroll 5
  for (int r = 0; r < Rows; ++r)
#pragma GCC unroll 4
    for (int z = 0; z < kRegisters; ++z) S::store(c + r * ldc + z * kLanes64, acc[r][z]);
}

// k in blocks, within each every block of units and then every kAxpysRows rows of A, so that a
// block of W's rows (128 rows of the thread's units) is read from beyond L2 once and from L2 for
// the other rows of A; the first rows of A ask for the next block's lines.
template <typename T>
__attribute__((target("avx512f"))) void rows_axpys_avx512(const T* a, int64_t lda, int64_t rows,
                                                          const T* w, int64_t ldw, int64_t k,
                                                          int64_t n, T* c, int64_t ldc) {
  for (int64_t k0 = 0; k0 < k; k0 += kAxpysBlockK) {
    const int64_t k1 = std::min(k, k0 + kAxpysBlockK);
    for (int64_t u = 0; u < n; u += rows_axpys_units<T>())
      for (int64_t r0 = 0; r0 < rows; r0 += kAxpysRows) {
        const T* ar = a + r0 * lda;
        T* cr = c + r0 * ldc + u;
        const int64_t ahead = r0 == 0 && k1 < k ? kAxpysBlockK : 0;
        switch (std::min<int64_t>(kAxpysRows, rows - r0)) {
          case 1: axpys_rows_avx512<T, 1>(ar, lda, w + u, ldw, k0, k1, k, ahead, cr, ldc); break;
          case 2: axpys_rows_avx512<T, 2>(ar, lda, w + u, ldw, k0, k1, k, ahead, cr, ldc); break;
          case 3: axpys_rows_avx512<T, 3>(ar, lda, w + u, ldw, k0, k1, k, ahead, cr, ldc); break;
          case 4: axpys_rows_avx512<T, 4>(ar, lda, w + u, ldw, k0, k1, k, ahead, cr, ldc); break;
          default: axpys_rows_avx512<T, 5>(ar, lda, w + u, ldw, k0, k1, k, ahead, cr, ldc);
        }
      }
  }
}
#endif

template <typename T>
void rows_axpys(const T* a, int64_t lda, int64_t rows, const T* w, int64_t ldw, int64_t k,
                int64_t n, T* c, int64_t ldc) {
  if (n % rows_axpys_units<T>() != 0)
    detail::fail("rows_axpys: expected units in multiples of " +
                 std::to_string(rows_axpys_units<T>()) + ", got " + std::to_string(n));
#if FR_AVX2_KERNEL
  if (cpu_isa() == Isa::avx512) return rows_axpys_avx512(a, lda, rows, w, ldw, k, n, c, ldc);
#endif
  detail::fail("rows_axpys: expected a CPU with AVX-512 (packed_kernel_beats_blas)");
}

template <typename T>
void row_axpys(const T* a, const T* w, int64_t ldw, int64_t k, int64_t n, T* c,
               bool accumulate) {
#if FR_AVX2_KERNEL
  if (row_axpys_runs()) return row_axpys_blocks(a, w, ldw, k, n, c, accumulate);
#endif
  detail::fail("row_axpys: expected a CPU with AVX2 and FMA (row_axpys_runs)");
}

template <typename T>
int64_t packed_panels(const ProductShape& shape) {
  const int64_t units = panel_layout<T>(shape.segments).units;
  return (shape.width + units - 1) / units;
}

template <typename T>
int64_t panel_elements(const ProductShape& shape) {
  return shape.k * panel_layout<T>(shape.segments).vectors * kLanes<T>;
}

template <typename T>
int64_t packed_elements(const ProductShape& shape) {
  return packed_panels<T>(shape) * panel_elements<T>(shape);
}

namespace {

#if FR_AVX2_KERNEL
// dst[j·ld_dst + i] = src[i·ld_src + j] for i, j < 8.
__attribute__((target("avx2"))) void transpose_block(const float* src, int64_t ld_src,
                                                     float* dst, int64_t ld_dst) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * ld_src);
  for (int i = 0; i < 8; i += 2) {  // pairs of rows interleaved: (0 1), (2 3), ...
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {  // then fours: each 128-bit lane, rows i..i+3 of one column
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int j = 0; j < 4; ++j) {  // rows 0-3 and 4-7 of column j (low lanes), j+4 (high lanes)
    _mm256_storeu_ps(dst + j * ld_dst, _mm256_permute2f128_ps(r[j], r[j + 4], 0x20));
    _mm256_storeu_ps(dst + (j + 4) * ld_dst, _mm256_permute2f128_ps(r[j], r[j + 4], 0x31));
  }
}

// dst[j·ld_dst + i] = src[i·ld_src + j] for i, j < 4.
__attribute__((target("avx2"))) void transpose_block(const double* src, int64_t ld_src,
                                                     double* dst, int64_t ld_dst) {
  __m256d r[4];
  for (int i = 0; i < 4; ++i) r[i] = _mm256_loadu_pd(src + i * ld_src);
  // (r0[0] r1[0] r0[2] r1[2]), (r0[1] r1[1] r0[3] r1[3]), and the same of rows 2 and 3
  const __m256d t[4] = {_mm256_unpacklo_pd(r[0], r[1]), _mm256_unpackhi_pd(r[0], r[1]),
                        _mm256_unpacklo_pd(r[2], r[3]), _mm256_unpackhi_pd(r[2], r[3])};
  for (int j = 0; j < 2; ++j) {  // columns j (low lanes) and j + 2 (high lanes)
    _mm256_storeu_pd(dst + j * ld_dst, _mm256_permute2f128_pd(t[j], t[j + 2], 0x20));
    _mm256_storeu_pd(dst + (j + 2) * ld_dst, _mm256_permute2f128_pd(t[j], t[j + 2], 0x31));
  }
}
#endif

// A task of the packing: 64 KB. Packing waits on W's cache lines more than it computes, so a
// small W is worth cutting too: in tasks of 256 KB, the 256 KB W_ih and W_hh of LSTM H=128 were
// each packed by one thread while the other waited, and inference T=20 took 1.82 ms at B=128
// (1.75 in 64 KB tasks) and 0.350 at B=16 (0.299). 16 KB tasks timed as 64 KB ones.
constexpr int64_t kPackTaskBytes = int64_t{1} << 16;

// dst[0, n) = src[0, n): a k of a panel's lanes from a row of M. The panel widths are constants
// here, so the copies become inline vector moves, where std::copy called memmove for every 32
// floats: packing x and h for the weight gradients of RNN training T=20 B=16 H=1024 took 4.8%
// of its samples that way, 3.4% this way.
template <typename T>
void copy_lanes(const T* src, int64_t n, T* dst) {
  switch (n * int64_t{sizeof(T)}) {
    case 32: return static_cast<void>(std::memcpy(dst, src, 32));
    case 64: return static_cast<void>(std::memcpy(dst, src, 64));
    case 128: return static_cast<void>(std::memcpy(dst, src, 128));
    default: std::copy(src, src + n, dst);
  }
}

// Panels [p0, p1) of M's k [k_first, k_first + shape.k), in panels of k_total k each: a whole
// M (k_first 0, k_total shape.k), or one of a stacked M's two parts.
template <typename T>
void pack_part(const ProductShape& shape, const T* w, int64_t ldw, int64_t p0, int64_t p1,
               int64_t k_first, int64_t k_total, T* packed, const RowRuns& runs = {}) {
  if (runs.run < 0 || (runs.run > 0 && shape.transposed))
    detail::fail("pack_panels: runs of rows are for an M not transposed, of at least one row");
  const PanelLayout layout = panel_layout<T>(shape.segments);
  const int64_t width = layout.vectors * kLanes<T>, k_count = shape.k;
  const int64_t per_task =
      std::max<int64_t>(1, kPackTaskBytes / (k_count * width * int64_t{sizeof(T)}));
  // A cache line of a row of W, and the square blocks transpose_block moves.
  constexpr int64_t kLine = 64 / sizeof(T), kBlock = kLanes<T>;
  parallel_for((p1 - p0 + per_task - 1) / per_task, [&](int64_t task) {
    const int64_t p_end = std::min(p1, p0 + (task + 1) * per_task);
    for (int64_t p = p0 + task * per_task; p < p_end; ++p) {
      const int64_t first = p * layout.units;
      const int64_t units = std::min(layout.units, shape.width - first);
      T* out = packed + ((p - p0) * k_total + k_first) * width;
      for (int64_t s = 0; s < shape.segments; ++s) {
        const int64_t col = s * shape.width + first;
        T* lanes = out + s * layout.units;
        if (shape.transposed) {
          // The lanes are rows of W, a power of two apart as often as not: read a cache line
          // of k of each before the next, or they evict each other from L1 at every k.
          const T* rows = w + col * ldw;
          for (int64_t k0 = 0; k0 < k_count; k0 += kLine) {
            const int64_t k1 = std::min(k_count, k0 + kLine);
            int64_t u = 0;
#if FR_AVX2_KERNEL
            // Blocks of units at a time in registers: element by element, packing a 4 MB float
            // W_hh took 0.65 ms on its own (0.15 ms this way), a tenth of an LSTM T=20 B=16
            // H=512 inference.
            if (use_avx2_fma() && k1 - k0 == kLine)
              for (; u + kBlock <= units; u += kBlock)
                for (int64_t k = k0; k < k1; k += kBlock)
                  transpose_block(rows + u * ldw + k, ldw, lanes + k * width + u, width);
#endif
            for (; u < units; ++u)
              for (int64_t k = k0; k < k1; ++k) lanes[k * width + u] = rows[u * ldw + k];
          }
        } else {
          const int64_t run = runs.run > 0 ? runs.run : k_count;
          for (int64_t k0 = 0; k0 < k_count; k0 += run) {
            const T* rows = w + k0 / run * runs.stride + col;
            for (int64_t k = k0; k < std::min(k_count, k0 + run); ++k)
              copy_lanes(rows + (k - k0) * ldw, units, lanes + k * width);
          }
        }
        if (units < layout.units)  // past the last unit
          for (int64_t k = 0; k < k_count; ++k)
            std::fill(lanes + k * width + units, lanes + k * width + layout.units, T(0));
      }
    }
  });
}

// Whether a product's panels (`bytes` of them) stay in L2 while a tile of rows passes over them
// all, with room beside them for the tile's rows of A and C: half of L2. Then packed_multiply
// takes the rows outer, and each tile writes its rows of C whole. Panels outer, a product with
// few k and wide rows of C (the weight gradients of a batch of one: k = 20 steps, C = dW_ih with
// rows of 4 KB) wrote C 128 bytes a row at a time down all its rows, once for each panel: one
// Zen 4 core wrote 16 MB that way at 9-12 GB/s, in 12-row tiles across at 20. Alternated in one
// process on a Zen 4 (1 MB L2), LSTM training T=20 B=1 H=1024 ran 10-13% faster rows outer,
// GRU 8-12%, RNN 6-11%, LSTM H=512 9-11%; with half of L2 rather than 128 KB, LSTM T=64 B=1
// H=1024 2-12% faster, T=20 B=4 7-8%. Up to all of L2, LSTM T=200 B=1 H=1024 (800 KB of
// panels) ran 3-4% faster still, which a smaller L2 would pay for in tiles that read their
// panels from L3. The step products of B=16 and 128, H=128 to 1024, timed level either way.
// With AVX2 only for short tiles, k <= 256, whose rows of A and C weigh most beside their FMAs:
// alternated in one process on a Zen 3, inference at T=200 B=128 ran 27% faster rows outer for
// GRU H=32 (k = 32, the walk's 32-row blocks) and 13% for GRU H=128, 6% for LSTM H=32, 5% for
// RNN H=128; training GRU 5-7%, RNN 2%; LSTM T=20 B=128 H=128 (stacked, k = 256) and B=16
// level, H=256 level. At k = 512 and 1024 (a step block's panels) 0.5-1% slower.
bool rows_outer_fits(int64_t bytes, int64_t k) {
  return (packed_kernel_beats_blas() || k <= 256) && bytes <= l2_cache_bytes() / 2;
}

// Whether a product of one row of A reads panels that stream from beyond L2: M (`bytes` in all)
// does not fit in half the L2 of every thread (each thread takes the same units at every step,
// thread_pool.h). One row makes two FMAs of each 64 bytes of panel, and on a Zen 5 the hardware
// prefetcher alone left its tiles waiting on L3. Asking for the lines 16 k ahead (the streaming
// row kernel), alternated in one process on a Zen 5, a batch of one over T=200 ran faster: LSTM
// training 6% at H=512 and 4% at H=1024, inference 7% at H=512 (at H=1024 level within the
// noise), GRU inference H=1024 5%, RNN training H=1024 6%, GRU training 1-2.5%. Where M stays in
// L2 the requests only take issue slots: LSTM inference H=128 ran 7% slower with them, H=256
// (1 MB, half of each of two L2s) 31%. Not on AMD's family 25 (measured on a Zen 4, EPYC
// model 17; Zen 3, the family's other, has no AVX-512 and no such kernel), whose own prefetcher
// keeps up with the stream: alternated in one process there (both orders), without the requests
// LSTM inference at B=1 ran 12% faster at T=200 H=512 and 15% at T=64 H=1024, LSTM training
// T=200 H=1024 12% (T=20 4%), GRU training H=1024 11% (T=20 3%) and inference H=512 10%, float64
// LSTM H=256 2%, RNN inference H=1024 level within the noise (7% slower in one order, 9% faster
// in the other); in a loop of the kernel alone, two of its cores read 2 MB of panels each at
// 170 GB/s without the requests, 130-145 with them.
bool streams_panels(int64_t bytes, int64_t rows) {
  return rows == 1 && !amd_family_25() && bytes > pool_threads() * (l2_cache_bytes() / 2);
}

}  // namespace

template <typename T>
void transpose_rows(const T* a, int64_t lda, int64_t rows, int64_t k, T* dst) {
  constexpr int64_t kBlock = kLanes<T>;  // transpose_block's
  parallel_for((rows + kBlock - 1) / kBlock, [&](int64_t i) {
    const int64_t r0 = i * kBlock, r1 = std::min(rows, r0 + kBlock);
    int64_t j = 0;
#if FR_AVX2_KERNEL
    if (r1 - r0 == kBlock && use_avx2_fma())
      for (; j + kBlock <= k; j += kBlock)
        transpose_block(a + r0 * lda + j, lda, dst + j * rows + r0, rows);
#endif
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t jr = j; jr < k; ++jr) dst[jr * rows + r] = a[r * lda + jr];
  });
}

template <typename T>
void pack_panels(const ProductShape& shape, const T* w, int64_t ldw, T* packed) {
  pack_panels(shape, w, ldw, 0, packed_panels<T>(shape), packed);
}

template <typename T>
void pack_panels(const ProductShape& shape, const T* w, int64_t ldw, int64_t p0, int64_t p1,
                 T* packed, const RowRuns& runs) {
  pack_part(shape, w, ldw, p0, p1, 0, shape.k, packed, runs);
}

template <typename T>
void pack_stacked_panels(const ProductShape& shape, const T* w, int64_t ldw, const T* w_right,
                         int64_t ldw_right, int64_t k_right, T* packed) {
  const int64_t k_left = shape.k - k_right, panels = packed_panels<T>(shape);
  pack_part({shape.transposed, k_left, shape.segments, shape.width}, w, ldw, 0, panels, 0,
            shape.k, packed);
  pack_part({shape.transposed, k_right, shape.segments, shape.width}, w_right, ldw_right, 0,
            panels, k_left, shape.k, packed);
}

template <typename T>
void packed_multiply(const ProductShape& shape, const Panels<T>& panels, int64_t p0, int64_t p1,
                     const T* a, int64_t lda, int64_t rows, T* c, int64_t ldc, bool accumulate,
                     bool a_transposed, const RightA<T>& right, bool stream) {
  if (a_transposed && !packed_kernel_beats_blas())
    detail::fail("packed_multiply: a transposed A needs the AVX-512 kernel");
  if (right.k < 0 || right.k > shape.k || (right.k > 0 && (a_transposed || !right.a)))
    detail::fail("packed_multiply: A's right part takes 0 to k k of an A not transposed, got " +
                 std::to_string(right.k) + " of " + std::to_string(shape.k));
  if (stream && !streams_whole_lines(shape, c, ldc))
    detail::fail("packed_multiply: streaming C needs one segment and C's rows on cache lines");
  const PanelLayout layout = panel_layout<T>(shape.segments);
  const int64_t width = layout.vectors * kLanes<T>;
  // The rows go in near-equal tiles of at most max_rows; but a 3-row AVX2 layout's last four
  // rows are one step of two half-panel tiles.
  const bool halves = layout.max_rows == 3 && layout.vectors == 4 && rows % 3 == 1 && rows > 1;
  const int64_t row_steps = (rows + layout.max_rows - 1) / layout.max_rows - (halves ? 1 : 0);
  const auto step_end = [&](int64_t step) {
    if (halves) return step == row_steps - 1 ? rows : 3 * (step + 1);
    return rows * (step + 1) / row_steps;
  };
  const bool stacked = right.k > 0;
  const TileFn<T>* const kernels = tile_kernels<T>(layout.vectors, a_transposed, stacked);
  const int64_t m_bytes = packed_panels<T>(shape) * panels.panel_elements * int64_t{sizeof(T)};
  const TileFn<T> streaming_row = !a_transposed && streams_panels(m_bytes, rows)
                                      ? streaming_row_kernel<T>(layout.vectors, stacked)
                                      : nullptr;
  alignas(64) T tile[kMaxRows * kMaxVectors * kLanes<T>];
  // Every tile of rows against every panel, in either order (the bits are the same): panels
  // outer where they are too large to stay in L2 while the rows pass, so that each is read from
  // beyond L2 once; rows outer where they fit (rows_outer_fits), so that each tile writes its
  // rows of C whole, not a panel's width of them at a time down C's rows.
  const int64_t panel_count = p1 - p0;
  const bool rows_outer =
      rows_outer_fits(panel_count * panels.panel_elements * int64_t{sizeof(T)}, shape.k);
  // Where a whole panel's vectors go, from its first unit: each to its segment's columns.
  int64_t vector_columns[kMaxVectors];
  for (int v = 0; v < layout.vectors; ++v) {
    const int64_t lane = v * kLanes<T>;
    vector_columns[v] = lane / layout.units * shape.width + lane % layout.units;
  }
  // The tile of rows [r0, r1) against panel p (step: the rows' step).
  const auto run_tile = [&](int64_t p, int64_t step, int64_t r0, int64_t r1) {
    const T* panel = panels.base + (p - panels.first) * panels.panel_elements;
    const int64_t first = p * layout.units;
    const int64_t units = std::min(layout.units, shape.width - first);
    // A whole panel's sums go straight to C. The last panel's, when it is cut short, go to
    // `tile` first and only its units are copied.
    const bool whole = units == layout.units;
    TileOut<T> out;
    out.accumulate = whole && accumulate;
    out.stream = whole && stream;
    for (int v = 0; v < layout.vectors; ++v)
      out.columns[v] = whole ? first + vector_columns[v] : v * kLanes<T>;
    const int64_t tile_rows = r1 - r0;
    const T* a_rows[kMaxRows];
    const T* right_rows[kMaxRows];
    for (int64_t i = 0; i < tile_rows; ++i) {
      a_rows[i] = a_transposed ? a + r0 + i : a + (r0 + i) * lda;
      if (stacked) right_rows[i] = right.a + (r0 + i) * right.lda;
      out.rows[i] = whole ? c + (r0 + i) * ldc : tile + i * width;
    }
    TileIn<T> in{a_rows,     panel,      width,  shape.k - right.k, a_transposed ? lda : 0,
                 right_rows, right.k};
    if (halves && step == row_steps - 1) {
      four_rows_half_panel<T>(stacked)(in, out);
      TileOut<T> upper = out;
      upper.columns[0] = out.columns[2];
      upper.columns[1] = out.columns[3];
      in.panel += 2 * kLanes<T>;
      four_rows_half_panel<T>(stacked)(in, upper);
    } else {
      (streaming_row ? streaming_row : kernels[tile_rows - 1])(in, out);
    }
    if (!whole) {
      for (int64_t i = 0; i < tile_rows; ++i) {
        for (int64_t s = 0; s < shape.segments; ++s) {
          T* dst = c + (r0 + i) * ldc + s * shape.width + first;
          const T* src = tile + i * width + s * layout.units;
          if (accumulate) for (int64_t u = 0; u < units; ++u) dst[u] += src[u];
          else std::copy(src, src + units, dst);
        }
      }
    }
  };
  if (rows_outer) {
    for (int64_t step = 0, r0 = 0; step < row_steps; ++step) {
      const int64_t r1 = step_end(step);
      for (int64_t p = p0; p < p1; ++p) run_tile(p, step, r0, r1);
      r0 = r1;
    }
  } else {
    for (int64_t p = p0; p < p1; ++p) {
      for (int64_t step = 0, r0 = 0; step < row_steps; ++step) {
        const int64_t r1 = step_end(step);
        run_tile(p, step, r0, r1);
        r0 = r1;
      }
    }
  }
#if FR_AVX2_KERNEL
  // Non-temporal stores are ordered by none of the pool's atomics: fence them before the join
  // tells another thread that C is written.
  if (stream) _mm_sfence();
#endif
}

#define FR_INSTANTIATE(T)                                                                      \
  template PanelLayout panel_layout<T>(int64_t);                                               \
  template int64_t packed_panels<T>(const ProductShape&);                                      \
  template int64_t panel_elements<T>(const ProductShape&);                                     \
  template int64_t packed_elements<T>(const ProductShape&);                                    \
  template void pack_panels<T>(const ProductShape&, const T*, int64_t, T*);                    \
  template void transpose_rows<T>(const T*, int64_t, int64_t, int64_t, T*);                    \
  template void pack_panels<T>(const ProductShape&, const T*, int64_t, int64_t, int64_t, T*,   \
                               const RowRuns&);                                                \
  template void pack_stacked_panels<T>(const ProductShape&, const T*, int64_t, const T*,       \
                                       int64_t, int64_t, T*);                                  \
  template void row_dots<T>(const T*, const T*, int64_t, int64_t, int64_t, T*, bool, bool);   \
  template void rows_dots<T>(const T*, int64_t, int64_t, const T*, int64_t, int64_t, int64_t, T*, \
                             int64_t, bool);                                                   \
  template void row_axpys<T>(const T*, const T*, int64_t, int64_t, int64_t, T*, bool);        \
  template void rows_axpys<T>(const T*, int64_t, int64_t, const T*, int64_t, int64_t, int64_t,  \
                              T*, int64_t);                                                    \
  template void packed_multiply<T>(const ProductShape&, const Panels<T>&, int64_t, int64_t,    \
                                   const T*, int64_t, int64_t, T*, int64_t, bool, bool,        \
                                   const RightA<T>&, bool);
FR_INSTANTIATE(float)
FR_INSTANTIATE(double)
#undef FR_INSTANTIATE

}  // namespace cpu
}  // namespace fusedrnn
