// One time step of each cell on the GPU: the recurrent product(s) through cuBLAS and one fused
// pointwise kernel over [B, H] (two for the reset-before GRU), forward and backward. Step for
// step the same as cells_cpu.h, including what inactive rows (t >= lengths[b]) get; the per-unit
// math is cell_math.h's. Each thread of a pointwise kernel handles one (b, j) unit.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "cublas_gemm.h"
#include "cuda_check.h"
#include "fusedrnn/cell_math.h"

namespace fusedrnn {
namespace cuda {

// Everything a forward step touches, in device memory. Pointers are offset to time step t.
template <typename T>
struct StepIO {
  cublasHandle_t blas;
  int64_t B, H, t;
  const int64_t* lengths;  // [B] or nullptr
  const T* xproj;          // [B, G*H]  x·W_ihᵀ (no bias)
  const T* w_hh;           // [G*H, H]
  const T* b_ih;           // [G*H] or nullptr (no bias)
  const T* b_hh;           // [G*H] or nullptr
  const T* h_prev;         // [B, H]
  const T* c_prev;         // [B, H] LSTM
  T* h_new;                // [B, H]
  T* c_new;                // [B, H]
  T* gates;                // [B, W*H]  tape gates of step t, or scratch for inference
  T* y;                    // [B, *]    row stride ldy
  int64_t ldy;
  T* rec;                  // [B, G*H]  scratch for the recurrent product
};

// Everything a backward step touches. Pointers are offset to time step t.
template <typename T>
struct BackStepIO {
  cublasHandle_t blas;
  int64_t B, H, t;
  const int64_t* lengths;
  const T* w_hh;    // [G*H, H]
  const T* h_prev;  // [B, H] tape slots
  const T* c_prev;
  const T* h_new;
  const T* c_new;
  const T* gates;   // [B, W*H]
  const T* dy;      // [B, *] row stride lddy, or nullptr (zeros)
  int64_t lddy;
  T* dh;            // [B, H] in: gradient reaching h after step t; out: before it
  T* dc;            // [B, H] likewise for LSTM's c
  T* dgx;           // [B, G*H] out: gradient of the input-side pre-activations
  T* dgh;           // [B, G*H] out: recurrent side (same buffer as dgx except for GRU)
  T* scratch;       // [B, H]
};

// ---------------------------------------------------------------------------------------------
// Launching.

constexpr int kThreads = 256;

// A grid-stride loop covers any B·H, so the grid is capped well below CUDA's limit.
template <typename F>
__device__ __forceinline__ void for_each_unit(int64_t B, int64_t H, F&& unit) {
  const int64_t n = B * H, stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t u = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; u < n; u += stride)
    unit(u / H, u % H);
}

template <typename IO>
void launch(void (*kernel)(IO), const IO& io) {
  const int64_t blocks = std::min<int64_t>((io.B * io.H + kThreads - 1) / kThreads, 1 << 20);
  kernel<<<unsigned(blocks), kThreads, 0, 0>>>(io);
  FR_CUDA_CHECK(cudaGetLastError());
}

__device__ __forceinline__ bool row_active(const int64_t* lengths, int64_t b, int64_t t) {
  return lengths == nullptr || t < lengths[b];
}

// Bias and dy may be absent; adding an exact zero keeps the CPU's order of additions.
template <typename T>
__device__ __forceinline__ T value_or_zero(const T* p, int64_t i) {
  return p ? p[i] : T(0);
}

// A row past its length keeps its state and outputs 0.
template <typename T>
__device__ __forceinline__ void carry_unit(const StepIO<T>& s, int64_t b, int64_t j, bool has_c) {
  const int64_t u = b * s.H + j;
  s.h_new[u] = s.h_prev[u];
  if (has_c) s.c_new[u] = s.c_prev[u];
  s.y[b * s.ldy + j] = T(0);
}

// h_prev · W_hh[rows]ᵀ into rec[:, rows], for the gate rows [first, first + count) of W_hh.
template <typename T>
void recurrent_product(const StepIO<T>& s, int64_t G, const T* h, int64_t ldh, int64_t first,
                       int64_t count) {
  gemm(s.blas, Op::N, Op::T, s.B, count, s.H, T(1), h, ldh, s.w_hh + first * s.H, s.H, T(0),
       s.rec + first, G * s.H);
}

// out = dg[:, rows] · W_hh[rows] + beta · out: the gradient reaching h_prev through the product.
template <typename T>
void recurrent_product_backward(const BackStepIO<T>& s, int64_t G, const T* dg, int64_t first,
                                int64_t count, T* out, T beta) {
  gemm(s.blas, Op::N, Op::N, s.B, s.H, count, T(1), dg + first, G * s.H, s.w_hh + first * s.H,
       s.H, beta, out, s.H);
}

// ---------------------------------------------------------------------------------------------
// LSTM. Tape row: (i, f, g, o) activated.

template <typename T, bool Training>
__global__ void lstm_forward_kernel(StepIO<T> s) {
  for_each_unit(s.B, s.H, [&](int64_t b, int64_t j) {
    if (!row_active(s.lengths, b, s.t)) return carry_unit(s, b, j, true);
    const int64_t H = s.H, GH = 4 * H, u = b * H + j;
    const T* xp = s.xproj + b * GH;
    const T* rp = s.rec + b * GH;
    T pre[4], act[4], c, h;
#pragma unroll
    for (int k = 0; k < 4; ++k)
      pre[k] = xp[k * H + j] + value_or_zero(s.b_ih, k * H + j) + rp[k * H + j] +
               value_or_zero(s.b_hh, k * H + j);
    cell::lstm_forward(pre, s.c_prev[u], act, c, h);
    s.c_new[u] = c;
    s.h_new[u] = h;
    s.y[b * s.ldy + j] = h;
    if (Training) {
#pragma unroll
      for (int k = 0; k < 4; ++k) s.gates[b * GH + k * H + j] = act[k];
    }
  });
}

template <typename T>
__global__ void lstm_backward_kernel(BackStepIO<T> s) {
  for_each_unit(s.B, s.H, [&](int64_t b, int64_t j) {
    const int64_t H = s.H, GH = 4 * H, u = b * H + j;
    T* dg = s.dgx + b * GH;
    if (!row_active(s.lengths, b, s.t)) {
#pragma unroll
      for (int k = 0; k < 4; ++k) dg[k * H + j] = T(0);
      return;
    }
    const T* g = s.gates + b * GH;
    T act[4], dpre[4], dc_prev;
#pragma unroll
    for (int k = 0; k < 4; ++k) act[k] = g[k * H + j];
    cell::lstm_backward(act, s.c_prev[u], s.c_new[u], s.dh[u] + value_or_zero(s.dy, b * s.lddy + j),
                        s.dc[u], dpre, dc_prev);
#pragma unroll
    for (int k = 0; k < 4; ++k) dg[k * H + j] = dpre[k];
    s.dc[u] = dc_prev;
    s.dh[u] = T(0);  // h_prev reaches h only through the recurrent product
  });
}

template <typename T, bool Training>
struct LstmStep {
  static constexpr int G = 4;
  static void forward(const StepIO<T>& s) {
    recurrent_product(s, G, s.h_prev, s.H, 0, G * s.H);
    launch(lstm_forward_kernel<T, Training>, s);
  }
  static void backward(const BackStepIO<T>& s) {
    launch(lstm_backward_kernel<T>, s);
    recurrent_product_backward(s, G, s.dgx, 0, G * s.H, s.dh, T(1));
  }
};

// ---------------------------------------------------------------------------------------------
// GRU, reset after the recurrent product. Tape row: (r, z, n) activated and hn = W_hn·h + b_hn.

template <typename T, bool Training>
__global__ void gru_forward_kernel(StepIO<T> s) {
  for_each_unit(s.B, s.H, [&](int64_t b, int64_t j) {
    if (!row_active(s.lengths, b, s.t)) return carry_unit(s, b, j, false);
    const int64_t H = s.H, GH = 3 * H, u = b * H + j;
    const T* xp = s.xproj + b * GH;
    const T* rp = s.rec + b * GH;
    T pre_x[3], pre_h[3], act[3], h;
#pragma unroll
    for (int k = 0; k < 3; ++k) {
      pre_x[k] = xp[k * H + j] + value_or_zero(s.b_ih, k * H + j);
      pre_h[k] = rp[k * H + j] + value_or_zero(s.b_hh, k * H + j);
    }
    cell::gru_forward(pre_x, pre_h, s.h_prev[u], act, h);
    s.h_new[u] = h;
    s.y[b * s.ldy + j] = h;
    if (Training) {
      T* g = s.gates + b * 4 * H;
#pragma unroll
      for (int k = 0; k < 3; ++k) g[k * H + j] = act[k];
      g[3 * H + j] = pre_h[2];
    }
  });
}

template <typename T>
__global__ void gru_backward_kernel(BackStepIO<T> s) {
  for_each_unit(s.B, s.H, [&](int64_t b, int64_t j) {
    const int64_t H = s.H, GH = 3 * H, u = b * H + j;
    T* dgx = s.dgx + b * GH;
    T* dgh = s.dgh + b * GH;
    if (!row_active(s.lengths, b, s.t)) {
#pragma unroll
      for (int k = 0; k < 3; ++k) dgx[k * H + j] = dgh[k * H + j] = T(0);
      return;
    }
    const T* g = s.gates + b * 4 * H;
    const T act[3] = {g[j], g[H + j], g[2 * H + j]};
    T dpre_x[3], dpre_h[3], dh_prev;
    cell::gru_backward(act, g[3 * H + j], s.h_prev[u], s.dh[u] + value_or_zero(s.dy, b * s.lddy + j),
                       dpre_x, dpre_h, dh_prev);
#pragma unroll
    for (int k = 0; k < 3; ++k) {
      dgx[k * H + j] = dpre_x[k];
      dgh[k * H + j] = dpre_h[k];
    }
    s.dh[u] = dh_prev;
  });
}

template <typename T, bool Training>
struct GruStep {
  static constexpr int G = 3;
  static void forward(const StepIO<T>& s) {
    recurrent_product(s, G, s.h_prev, s.H, 0, G * s.H);
    launch(gru_forward_kernel<T, Training>, s);
  }
  static void backward(const BackStepIO<T>& s) {
    launch(gru_backward_kernel<T>, s);
    recurrent_product_backward(s, G, s.dgh, 0, G * s.H, s.dh, T(1));
  }
};

// ---------------------------------------------------------------------------------------------
// GRU, reset before the recurrent product: two recurrent products per step, (r, z) from h, then
// n from r⊙h. Tape row: (r, z, n, r⊙h); inference uses the same layout as scratch.

// Every row, active or not, gets a finite r⊙h: backward multiplies it by zero gradients.
template <typename T>
__global__ void gru_reset_before_forward_rz_kernel(StepIO<T> s) {
  for_each_unit(s.B, s.H, [&](int64_t b, int64_t j) {
    const int64_t H = s.H, GH = 3 * H, u = b * H + j;
    const T* xp = s.xproj + b * GH;
    const T* rp = s.rec + b * GH;
    T* g = s.gates + b * 4 * H;
    T r, z, rh;
    cell::gru_reset_before_forward_rz(
        xp[j] + value_or_zero(s.b_ih, j), xp[H + j] + value_or_zero(s.b_ih, H + j),
        rp[j] + value_or_zero(s.b_hh, j), rp[H + j] + value_or_zero(s.b_hh, H + j), s.h_prev[u], r,
        z, rh);
    g[j] = r;
    g[H + j] = z;
    g[3 * H + j] = rh;
  });
}

template <typename T>
__global__ void gru_reset_before_forward_n_kernel(StepIO<T> s) {
  for_each_unit(s.B, s.H, [&](int64_t b, int64_t j) {
    if (!row_active(s.lengths, b, s.t)) return carry_unit(s, b, j, false);
    const int64_t H = s.H, GH = 3 * H, u = b * H + j;
    const T* xp = s.xproj + b * GH;
    const T* rp = s.rec + b * GH;
    T* g = s.gates + b * 4 * H;
    T n, h;
    cell::gru_reset_before_forward_n(xp[2 * H + j] + value_or_zero(s.b_ih, 2 * H + j),
                                     rp[2 * H + j] + value_or_zero(s.b_hh, 2 * H + j), g[H + j],
                                     s.h_prev[u], n, h);
    g[2 * H + j] = n;
    s.h_new[u] = h;
    s.y[b * s.ldy + j] = h;
  });
}

template <typename T>
__global__ void gru_reset_before_backward_zn_kernel(BackStepIO<T> s) {
  for_each_unit(s.B, s.H, [&](int64_t b, int64_t j) {
    const int64_t H = s.H, GH = 3 * H, u = b * H + j;
    T* dg = s.dgx + b * GH;
    if (!row_active(s.lengths, b, s.t)) {
#pragma unroll
      for (int k = 0; k < 3; ++k) dg[k * H + j] = T(0);
      return;
    }
    const T* g = s.gates + b * 4 * H;
    T dpre_z, dpre_n, dh_prev;
    cell::gru_reset_before_backward_zn(g[H + j], g[2 * H + j], s.h_prev[u],
                                       s.dh[u] + value_or_zero(s.dy, b * s.lddy + j), dpre_z,
                                       dpre_n, dh_prev);
    dg[H + j] = dpre_z;
    dg[2 * H + j] = dpre_n;
    s.dh[u] = dh_prev;
  });
}

// scratch holds dpre_n · W_hn, the gradient reaching r⊙h.
template <typename T>
__global__ void gru_reset_before_backward_r_kernel(BackStepIO<T> s) {
  for_each_unit(s.B, s.H, [&](int64_t b, int64_t j) {
    if (!row_active(s.lengths, b, s.t)) return;
    const int64_t H = s.H, u = b * H + j;
    const T* g = s.gates + b * 4 * H;
    T dpre_r, dh_rh;
    cell::gru_reset_before_backward_r(g[j], s.h_prev[u], s.scratch[u], dpre_r, dh_rh);
    s.dgx[b * 3 * H + j] = dpre_r;
    s.dh[u] += dh_rh;
  });
}

template <typename T, bool Training>
struct GruResetBeforeStep {
  static constexpr int G = 3;
  static void forward(const StepIO<T>& s) {
    const int64_t H = s.H;
    recurrent_product(s, G, s.h_prev, H, 0, 2 * H);
    launch(gru_reset_before_forward_rz_kernel<T>, s);
    recurrent_product(s, G, s.gates + 3 * H, 4 * H, 2 * H, H);
    launch(gru_reset_before_forward_n_kernel<T>, s);
  }
  static void backward(const BackStepIO<T>& s) {
    const int64_t H = s.H;
    launch(gru_reset_before_backward_zn_kernel<T>, s);
    recurrent_product_backward(s, G, s.dgx, 2 * H, H, s.scratch, T(0));
    launch(gru_reset_before_backward_r_kernel<T>, s);
    recurrent_product_backward(s, G, s.dgx, 0, 2 * H, s.dh, T(1));
  }
};

// ---------------------------------------------------------------------------------------------
// Vanilla RNN: no tape gates, h_states suffice.

template <typename T, bool Relu>
__global__ void rnn_forward_kernel(StepIO<T> s) {
  for_each_unit(s.B, s.H, [&](int64_t b, int64_t j) {
    if (!row_active(s.lengths, b, s.t)) return carry_unit(s, b, j, false);
    const int64_t H = s.H, u = b * H + j;
    const T pre = s.xproj[b * H + j] + value_or_zero(s.b_ih, j) + s.rec[b * H + j] +
                  value_or_zero(s.b_hh, j);
    const T h = Relu ? cell::rnn_relu_forward(pre) : cell::rnn_tanh_forward(pre);
    s.h_new[u] = h;
    s.y[b * s.ldy + j] = h;
  });
}

template <typename T, bool Relu>
__global__ void rnn_backward_kernel(BackStepIO<T> s) {
  for_each_unit(s.B, s.H, [&](int64_t b, int64_t j) {
    const int64_t u = b * s.H + j;
    if (!row_active(s.lengths, b, s.t)) {
      s.dgx[u] = T(0);
      return;
    }
    const T d = s.dh[u] + value_or_zero(s.dy, b * s.lddy + j);
    s.dgx[u] = Relu ? cell::rnn_relu_backward(s.h_new[u], d) : cell::rnn_tanh_backward(s.h_new[u], d);
    s.dh[u] = T(0);
  });
}

template <typename T, bool Training, bool Relu>
struct RnnStep {
  static constexpr int G = 1;
  static void forward(const StepIO<T>& s) {
    recurrent_product(s, G, s.h_prev, s.H, 0, s.H);
    launch(rnn_forward_kernel<T, Relu>, s);
  }
  static void backward(const BackStepIO<T>& s) {
    launch(rnn_backward_kernel<T, Relu>, s);
    recurrent_product_backward(s, G, s.dgx, 0, s.H, s.dh, T(1));
  }
};

}  // namespace cuda
}  // namespace fusedrnn
