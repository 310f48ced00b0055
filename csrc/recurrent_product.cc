// fusedrnn's own kernel for the float recurrent product (see recurrent_product.h).
//
// M is packed once per call into panels, each the columns of `units` consecutive hidden units of
// every segment, k rows of 8-float vectors: [panel][k][segment·units + unit], zero past the last
// unit. A tile of rows of A against one panel keeps its sums in registers, adding one k at a
// time: every element is summed in k order by fused multiply-adds from zero, whichever tile or
// thread computes it, so the AVX2 and AVX-512 kernels give the same bits. The portable one, for
// CPUs without FMA, rounds each product and each sum apart: bits of its own.
// AVX2 (16 registers): tiles of `rows` rows, rows·vectors = 12 accumulators of 8 floats (with
// the A broadcasts and one panel vector, all 16; a last four rows go as two tiles over half the
// panel, 8 each). AVX-512 (32 registers): each 16-float register holds two of the panel's
// vectors, and a tile has up to 24 accumulators (12 rows of a 2-register panel, 8 of a
// 3-register one); a block's rows are cut into near-equal tiles, none under layout.rows.
// The panel outer loop keeps one panel (k·vectors·8 floats) in L2 while all rows of A pass over
// it.
#include <algorithm>
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

constexpr int kLanes = 8;
constexpr int kMaxRows = 12;  // AVX-512's 2-register panels
constexpr int kMaxVectors = 6;
constexpr int kAvx512Accumulators = 24;

// What a tile reads: `rows` of A, and for each k the tile's vectors at panel + k·stride. A
// stacked product's A is two arrays side by side: the first k_count k of row r from rows[r], the
// next k_right from right_rows[r].
struct TileIn {
  const float* const* rows;
  const float* panel;
  int64_t stride;  // floats from one k of the panel to the next
  int64_t k_count;
  // A transposed (AVX-512 tiles only): row r's k at rows[0] + k·lda_t + r.
  int64_t lda_t;
  const float* const* right_rows;
  int64_t k_right;
};

// Where a tile's sums go: vector v of row r to rows[r] + columns[v], added to what is there when
// `accumulate` (as dst + sum, the same bits as the sum added to dst).
struct TileOut {
  float* rows[kMaxRows];
  int64_t columns[kMaxVectors];
  bool accumulate;
};

template <int Rows, int Vectors, bool Stacked>
void tile_portable(const TileIn& in, const TileOut& out) {
  constexpr int kWidth = Vectors * kLanes;
  float acc[Rows][kWidth] = {};
  for (int part = 0; part < (Stacked ? 2 : 1); ++part) {  // A's arrays
    const float* const* rows = part ? in.right_rows : in.rows;
    const float* const panel = in.panel + (part ? in.k_count * in.stride : 0);
    const int64_t k_count = part ? in.k_right : in.k_count;
    for (int64_t k = 0; k < k_count; ++k) {
      const float* m = panel + k * in.stride;
      for (int r = 0; r < Rows; ++r) {
        const float ar = rows[r][k];
        for (int j = 0; j < kWidth; ++j) acc[r][j] += ar * m[j];
      }
    }
  }
  for (int r = 0; r < Rows; ++r)
    for (int v = 0; v < Vectors; ++v) {
      float* dst = out.rows[r] + out.columns[v];
      const float* sum = acc[r] + v * kLanes;
      for (int j = 0; j < kLanes; ++j) dst[j] = out.accumulate ? dst[j] + sum[j] : sum[j];
    }
}

#if FR_AVX2_KERNEL
// acc += the k_count k of A's `rows` times the panel from `panel` on (for tile_avx2, once for
// each of A's arrays, as add_products_avx512 for tile_avx512).
template <int Rows, int Vectors>
__attribute__((target("avx2,fma"), always_inline)) inline void add_products_avx2(
    __m256 (&acc)[Rows][Vectors], const float* const* rows, const float* panel, int64_t stride,
    int64_t k_count) {
  const float* a[Rows];
#pragma GCC unroll 4
  for (int r = 0; r < Rows; ++r) a[r] = rows[r];
  for (int64_t k = 0; k < k_count; ++k) {
    __m256 ar[Rows];
#pragma GCC unroll 4
    for (int r = 0; r < Rows; ++r) ar[r] = _mm256_broadcast_ss(a[r] + k);
    const float* m = panel + k * stride;
#pragma GCC unroll 8
    for (int v = 0; v < Vectors; ++v) {
      const __m256 mv = _mm256_load_ps(m + v * kLanes);
#pragma GCC unroll 4
      for (int r = 0; r < Rows; ++r) acc[r][v] = _mm256_fmadd_ps(ar[r], mv, acc[r][v]);
    }
  }
}

template <int Rows, int Vectors, bool Stacked>
__attribute__((target("avx2,fma"))) void tile_avx2(const TileIn& in, const TileOut& out) {
  __m256 acc[Rows][Vectors];
#pragma GCC unroll 4
  for (int r = 0; r < Rows; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < Vectors; ++v) acc[r][v] = _mm256_setzero_ps();
  add_products_avx2<Rows, Vectors>(acc, in.rows, in.panel, in.stride, in.k_count);
  if constexpr (Stacked)
    add_products_avx2<Rows, Vectors>(acc, in.right_rows, in.panel + in.k_count * in.stride,
                                     in.stride, in.k_right);
  // out's fields are read once: the stores go through a type that may alias anything, and
  // would make GCC read them again after each (k=32 tiles ran 3% faster reading them once).
  const TileOut o = out;
#pragma GCC unroll 4
  for (int r = 0; r < Rows; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < Vectors; ++v) {
      float* dst = o.rows[r] + o.columns[v];
      _mm256_storeu_ps(dst, o.accumulate ? _mm256_add_ps(_mm256_loadu_ps(dst), acc[r][v])
                                         : acc[r][v]);
    }
}

// acc += the k_count k of A's `rows` times the panel from `panel` on: tile_avx512 inlines it
// once for each of A's arrays (a lambda would drop the target). Only tiles of stacked products
// have the second: the mere chance of one cost every k=32 tile 5%, k=512 2%.
template <int Rows, int Registers, bool ATransposed>
__attribute__((target("avx512f"), always_inline)) inline void add_products_avx512(
    __m512 (&acc)[Rows][Registers], const float* const* rows, const float* panel,
    int64_t stride, int64_t k_count, int64_t lda_t) {
  const float* a[Rows];
#pragma GCC unroll 12
  for (int r = 0; r < Rows; ++r) a[r] = rows[r];
  for (int64_t k = 0; k < k_count; ++k) {
    const float* m = panel + k * stride;
    __m512 mv[Registers];
#pragma GCC unroll 3
    for (int z = 0; z < Registers; ++z) mv[z] = _mm512_loadu_ps(m + z * 2 * kLanes);
#pragma GCC unroll 12
    for (int r = 0; r < Rows; ++r) {
      // A transposed: the tile's rows lie side by side in A's k-th row.
      const __m512 ar = _mm512_set1_ps(ATransposed ? a[0][k * lda_t + r] : a[r][k]);
#pragma GCC unroll 3
      for (int z = 0; z < Registers; ++z) acc[r][z] = _mm512_fmadd_ps(ar, mv[z], acc[r][z]);
    }
  }
}

// Registers are 16 floats: register z holds the panel's vectors 2z (low half) and 2z + 1.
template <int Rows, int Registers, bool ATransposed, bool Stacked>
__attribute__((target("avx512f"))) void tile_avx512(const TileIn& in, const TileOut& out) {
  static_assert(!(ATransposed && Stacked), "a stacked product's A is not transposed");
  __m512 acc[Rows][Registers];
#pragma GCC unroll 12
  for (int r = 0; r < Rows; ++r)
#pragma GCC unroll 3
    for (int z = 0; z < Registers; ++z) acc[r][z] = _mm512_setzero_ps();
  add_products_avx512<Rows, Registers, ATransposed>(acc, in.rows, in.panel, in.stride,
                                                    in.k_count, in.lda_t);
  if constexpr (Stacked)
    add_products_avx512<Rows, Registers, false>(acc, in.right_rows,
                                                in.panel + in.k_count * in.stride, in.stride,
                                                in.k_right, 0);
  const TileOut o = out;  // read once, as in tile_avx2
#pragma GCC unroll 12
  for (int r = 0; r < Rows; ++r)
#pragma GCC unroll 3
    for (int z = 0; z < Registers; ++z) {
      // Each half straight from the register (AVX-512F's 64x4 extract; the 32x8 one needs DQ):
      // through a store and two loads, k=32 tiles ran 4% slower on a Zen 5 core. The masked
      // form, all lanes kept: GCC 12's unmasked one (and the cast to the low half, made of it)
      // warns of its own undefined source (bug 105593).
      const __m512d sums = _mm512_castps_pd(acc[r][z]);
      const __m256 halves[2] = {_mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xFF, sums, 0)),
                                _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xFF, sums, 1))};
      for (int h = 0; h < 2; ++h) {
        float* dst = o.rows[r] + o.columns[2 * z + h];
        _mm256_storeu_ps(dst, o.accumulate ? _mm256_add_ps(_mm256_loadu_ps(dst), halves[h])
                                           : halves[h]);
      }
    }
}

#endif

bool use_avx2_fma() { return cpu_isa() != Isa::portable; }

using TileFn = void (*)(const TileIn&, const TileOut&);

template <int Rows, int Vectors, bool Stacked>
TileFn tile_for_cpu() {
#if FR_AVX2_KERNEL
  if (use_avx2_fma()) return tile_avx2<Rows, Vectors, Stacked>;
#endif
  return tile_portable<Rows, Vectors, Stacked>;
}

#if FR_AVX2_KERNEL
template <int Vectors, bool ATransposed, bool Stacked, int... Rows>
const TileFn* avx512_tiles(std::integer_sequence<int, Rows...>) {
  static const TileFn tiles[] = {tile_avx512<Rows + 1, Vectors / 2, ATransposed, Stacked>...};
  return tiles;
}

template <bool ATransposed, bool Stacked>
const TileFn* avx512_tiles_for(int vectors) {
  static const TileFn* const four = avx512_tiles<4, ATransposed, Stacked>(
      std::make_integer_sequence<int, kAvx512Accumulators / 2>());
  static const TileFn* const six = avx512_tiles<6, ATransposed, Stacked>(
      std::make_integer_sequence<int, kAvx512Accumulators / 3>());
  return vectors == 4 ? four : six;
}
#endif

template <bool Stacked>
const TileFn* tiles_for_cpu(int vectors) {
  static const TileFn four[3] = {tile_for_cpu<1, 4, Stacked>(), tile_for_cpu<2, 4, Stacked>(),
                                 tile_for_cpu<3, 4, Stacked>()};
  static const TileFn six[2] = {tile_for_cpu<1, 6, Stacked>(), tile_for_cpu<2, 6, Stacked>()};
  return vectors == 4 ? four : six;
}

// The kernels for 1..layout.max_rows rows of a layout of `vectors` vectors, at rows - 1. Looked
// up once a product: at every tile, the lookups took 2% of LSTM inference T=20 B=128 H=128,
// whose tiles are short (k = 128).
const TileFn* tile_kernels(int vectors, bool a_transposed, bool stacked) {
#if FR_AVX2_KERNEL
  if (cpu_isa() == Isa::avx512) {
    if (a_transposed) return avx512_tiles_for<true, false>(vectors);
    return stacked ? avx512_tiles_for<false, true>(vectors)
                   : avx512_tiles_for<false, false>(vectors);
  }
#endif
  return stacked ? tiles_for_cpu<true>(vectors) : tiles_for_cpu<false>(vectors);
}

// Four rows against half of a 4-vector panel: a 3-row layout's last four rows go as two of these
// (8 accumulators each) rather than as 3 + 1, whose lone row has only 4 accumulators, half of
// what covers the FMA latency. B=16 LSTM products ran 3 to 5% faster on one core, and LSTM
// inference at B=16 (T=200 H=512, T=20 H=1024) 2% faster on two.
TileFn four_rows_half_panel(bool stacked) {
  static const TileFn tile = tile_for_cpu<4, 2, false>();
  static const TileFn stacked_tile = tile_for_cpu<4, 2, true>();
  return stacked ? stacked_tile : tile;
}

int64_t panel_count(const ProductShape& shape) {
  const int64_t units = panel_layout(shape.segments).units;
  return (shape.width + units - 1) / units;
}

}  // namespace

const char* recurrent_kernel_isa() {
  switch (cpu_isa()) {
    case Isa::avx512: return "avx512f";
    case Isa::avx2: return "avx2+fma";
    default: return "portable";
  }
}

PanelLayout panel_layout(int64_t segments) {
  const int64_t units = segments == 1 ? 32 : segments == 4 ? 8 : 16;
  const int vectors = segments == 3 ? 6 : 4;
  if (segments < 1 || segments > 4)
    detail::fail("panel_layout: expected 1 to 4 segments, got " + std::to_string(segments));
  if (cpu_isa() == Isa::avx512) {
    // At least 8 accumulators (two FMA pipes, four cycles each) in a tile of layout.rows.
    const int registers = vectors / 2;
    return {units, vectors, (8 + registers - 1) / registers, kAvx512Accumulators / registers};
  }
  const int rows = 12 / vectors;
  return {units, vectors, rows, rows};
}

bool packed_kernel_beats_blas() { return cpu_isa() == Isa::avx512; }

int64_t packed_panels(const ProductShape& shape) { return panel_count(shape); }

int64_t panel_floats(const ProductShape& shape) {
  return shape.k * panel_layout(shape.segments).vectors * kLanes;
}

int64_t packed_floats(const ProductShape& shape) {
  return panel_count(shape) * shape.k * panel_layout(shape.segments).vectors * kLanes;
}

namespace {

#if FR_AVX2_KERNEL
// dst[j·ld_dst + i] = src[i·ld_src + j] for i, j < 8.
__attribute__((target("avx2"))) void transpose_8x8_avx2(const float* src, int64_t ld_src,
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
#endif

// A task of the packing: 64 KB. Packing waits on W's cache lines more than it computes, so a
// small W is worth cutting too: in tasks of 256 KB, the 256 KB W_ih and W_hh of LSTM H=128 were
// each packed by one thread while the other waited, and inference T=20 took 1.82 ms at B=128
// (1.75 in 64 KB tasks) and 0.350 at B=16 (0.299). 16 KB tasks timed as 64 KB ones.
constexpr int64_t kPackTaskFloats = int64_t{1} << 14;

// dst[0, n) = src[0, n): a k of a panel's lanes from a row of M. The panel widths are constants
// here, so the copies become inline vector moves, where std::copy called memmove for every 32
// floats: packing x and h for the weight gradients of RNN training T=20 B=16 H=1024 took 4.8%
// of its samples that way, 3.4% this way.
void copy_lanes(const float* src, int64_t n, float* dst) {
  switch (n) {
    case 8: return static_cast<void>(std::memcpy(dst, src, 8 * sizeof(float)));
    case 16: return static_cast<void>(std::memcpy(dst, src, 16 * sizeof(float)));
    case 32: return static_cast<void>(std::memcpy(dst, src, 32 * sizeof(float)));
    default: std::copy(src, src + n, dst);
  }
}

}  // namespace

namespace {

// Panels [p0, p1) of M's k [k_first, k_first + shape.k), in panels of k_total k each: a whole
// M (k_first 0, k_total shape.k), or one of a stacked M's two parts.
void pack_part(const ProductShape& shape, const float* w, int64_t ldw, int64_t p0, int64_t p1,
               int64_t k_first, int64_t k_total, float* packed) {
  const PanelLayout layout = panel_layout(shape.segments);
  const int64_t width = layout.vectors * kLanes, k_count = shape.k;
  const int64_t per_task = std::max<int64_t>(1, kPackTaskFloats / (k_count * width));
  parallel_for((p1 - p0 + per_task - 1) / per_task, [&](int64_t task) {
    const int64_t p_end = std::min(p1, p0 + (task + 1) * per_task);
    for (int64_t p = p0 + task * per_task; p < p_end; ++p) {
      const int64_t first = p * layout.units;
      const int64_t units = std::min(layout.units, shape.width - first);
      float* out = packed + ((p - p0) * k_total + k_first) * width;
      for (int64_t s = 0; s < shape.segments; ++s) {
        const int64_t col = s * shape.width + first;
        float* lanes = out + s * layout.units;
        if (shape.transposed) {
          // The lanes are rows of W, a power of two apart as often as not: read 16 k (a cache
          // line) of each before the next, or they evict each other from L1 at every k.
          const float* rows = w + col * ldw;
          for (int64_t k0 = 0; k0 < k_count; k0 += 16) {
            const int64_t k1 = std::min(k_count, k0 + 16);
            int64_t u = 0;
#if FR_AVX2_KERNEL
            // Eight units at a time in registers: element by element, packing a 4 MB W_hh took
            // 0.65 ms on its own (0.15 ms this way), a tenth of an LSTM T=20 B=16 H=512 inference.
            if (use_avx2_fma() && k1 - k0 == 16)
              for (; u + 8 <= units; u += 8)
                for (int64_t k = k0; k < k1; k += 8)
                  transpose_8x8_avx2(rows + u * ldw + k, ldw, lanes + k * width + u, width);
#endif
            for (; u < units; ++u)
              for (int64_t k = k0; k < k1; ++k) lanes[k * width + u] = rows[u * ldw + k];
          }
        } else {
          for (int64_t k = 0; k < k_count; ++k)
            copy_lanes(w + k * ldw + col, units, lanes + k * width);
        }
        if (units < layout.units)  // past the last unit
          for (int64_t k = 0; k < k_count; ++k)
            std::fill(lanes + k * width + units, lanes + k * width + layout.units, 0.0f);
      }
    }
  });
}

}  // namespace

void pack_panels(const ProductShape& shape, const float* w, int64_t ldw, float* packed) {
  pack_panels(shape, w, ldw, 0, panel_count(shape), packed);
}

void pack_panels(const ProductShape& shape, const float* w, int64_t ldw, int64_t p0, int64_t p1,
                 float* packed) {
  pack_part(shape, w, ldw, p0, p1, 0, shape.k, packed);
}

void pack_stacked_panels(const ProductShape& shape, const float* w, int64_t ldw,
                         const float* w_right, int64_t ldw_right, int64_t k_right,
                         float* packed) {
  const int64_t k_left = shape.k - k_right, panels = panel_count(shape);
  pack_part({shape.transposed, k_left, shape.segments, shape.width}, w, ldw, 0, panels, 0,
            shape.k, packed);
  pack_part({shape.transposed, k_right, shape.segments, shape.width}, w_right, ldw_right, 0,
            panels, k_left, shape.k, packed);
}

Panels packed_at(const ProductShape& shape, const float* packed, int64_t p0) {
  return {packed, p0, panel_floats(shape)};
}

void packed_multiply(const ProductShape& shape, const Panels& panels, int64_t p0, int64_t p1,
                     const float* a, int64_t lda, int64_t rows, float* c, int64_t ldc,
                     bool accumulate, bool a_transposed, const RightA& right) {
  if (a_transposed && !packed_kernel_beats_blas())
    detail::fail("packed_multiply: a transposed A needs the AVX-512 kernel");
  if (right.k < 0 || right.k > shape.k || (right.k > 0 && (a_transposed || !right.a)))
    detail::fail("packed_multiply: A's right part takes 0 to k k of an A not transposed, got " +
                 std::to_string(right.k) + " of " + std::to_string(shape.k));
  const PanelLayout layout = panel_layout(shape.segments);
  const int64_t width = layout.vectors * kLanes;
  // The rows go in near-equal tiles of at most max_rows; but a 3-row AVX2 layout's last four
  // rows are one step of two half-panel tiles.
  const bool halves = layout.max_rows == 3 && layout.vectors == 4 && rows % 3 == 1 && rows > 1;
  const int64_t row_steps = (rows + layout.max_rows - 1) / layout.max_rows - (halves ? 1 : 0);
  const auto step_end = [&](int64_t step) {
    if (halves) return step == row_steps - 1 ? rows : 3 * (step + 1);
    return rows * (step + 1) / row_steps;
  };
  const bool stacked = right.k > 0;
  const TileFn* const kernels = tile_kernels(layout.vectors, a_transposed, stacked);
  alignas(64) float tile[kMaxRows * kMaxVectors * kLanes];
  for (int64_t p = p0; p < p1; ++p) {
    const float* panel = panels.base + (p - panels.first) * panels.panel_floats;
    const int64_t first = p * layout.units;
    const int64_t units = std::min(layout.units, shape.width - first);
    // A whole panel's sums go straight to C, each vector to its segment's columns. The last
    // panel's, when it is cut short, go to `tile` first and only its units are copied.
    const bool whole = units == layout.units;
    TileOut out;
    out.accumulate = whole && accumulate;
    for (int v = 0; v < layout.vectors; ++v) {
      const int64_t lane = v * kLanes;
      out.columns[v] = whole ? lane / layout.units * shape.width + first + lane % layout.units
                             : lane;
    }
    int64_t r0 = 0;
    for (int64_t step = 0; step < row_steps; ++step) {
      const int64_t tile_rows = step_end(step) - r0;
      const float* a_rows[kMaxRows];
      const float* right_rows[kMaxRows];
      for (int64_t i = 0; i < tile_rows; ++i) {
        a_rows[i] = a_transposed ? a + r0 + i : a + (r0 + i) * lda;
        if (stacked) right_rows[i] = right.a + (r0 + i) * right.lda;
        out.rows[i] = whole ? c + (r0 + i) * ldc : tile + i * width;
      }
      TileIn in{a_rows,     panel,      width,  shape.k - right.k, a_transposed ? lda : 0,
                right_rows, right.k};
      if (halves && step == row_steps - 1) {
        four_rows_half_panel(stacked)(in, out);
        TileOut upper = out;
        upper.columns[0] = out.columns[2];
        upper.columns[1] = out.columns[3];
        in.panel += 2 * kLanes;
        four_rows_half_panel(stacked)(in, upper);
      } else {
        kernels[tile_rows - 1](in, out);
      }
      if (!whole) {
        for (int64_t i = 0; i < tile_rows; ++i) {
          for (int64_t s = 0; s < shape.segments; ++s) {
            float* dst = c + (r0 + i) * ldc + s * shape.width + first;
            const float* src = tile + i * width + s * layout.units;
            if (accumulate) for (int64_t u = 0; u < units; ++u) dst[u] += src[u];
            else std::copy(src, src + units, dst);
          }
        }
      }
      r0 += tile_rows;
    }
  }
}

}  // namespace cpu
}  // namespace fusedrnn
