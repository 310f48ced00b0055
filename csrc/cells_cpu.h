// One time step of each cell on the CPU: the recurrent GEMM(s) and the fused pointwise pass over
// [B, H], forward and backward. The time loop, tape layout and weight gradients live in
// sequence_cpu.cc; the per-unit math lives in cell_math.h (shared with CUDA).
#pragma once

#include <cstdint>
#include <cstring>

#include "blas.h"
#include "fusedrnn/cell_math.h"
#include "fusedrnn/rnn.h"

namespace fusedrnn {
namespace cpu {

// Below this many units a step's pointwise pass is too short to be worth waking threads for.
constexpr int64_t kParallelUnits = 1 << 14;

template <typename F>
void for_each_row(int64_t B, int64_t H, F&& row) {
#pragma omp parallel for schedule(static) if (B * H >= kParallelUnits)
  for (int64_t b = 0; b < B; ++b) row(b);
}

inline bool row_active(const int64_t* lengths, int64_t b, int64_t t) {
  return lengths == nullptr || t < lengths[b];
}

// Everything a forward step touches. Pointers are already offset to time step t.
template <typename T>
struct StepIO {
  int64_t B, H, t;
  const int64_t* lengths;
  const T* xproj;   // [B, G*H]  x·W_ihᵀ (no bias)
  const T* w_hh;    // [G*H, H]
  const T* b_ih;    // [G*H]     (zeros when the layer has no bias)
  const T* b_hh;    // [G*H]
  const T* h_prev;  // [B, H]
  const T* c_prev;  // [B, H] LSTM
  T* h_new;         // [B, H]    may alias h_prev (inference updates the state in place)
  T* c_new;         // [B, H]    may alias c_prev
  T* gates;         // [B, W*H]  tape gates of step t, or scratch for inference
  T* y;             // [B, *]    row stride ldy
  int64_t ldy;
  T* rec;           // [B, G*H]  scratch for the recurrent product
};

// Everything a backward step touches. Pointers are offset to time step t.
template <typename T>
struct BackStepIO {
  int64_t B, H, t;
  const int64_t* lengths;
  const T* w_hh;    // [G*H, H]
  const T* h_prev;  // [B, H] tape slots
  const T* c_prev;
  const T* h_new;
  const T* c_new;
  const T* gates;   // [B, W*H]
  const T* dy;      // [B, *] row stride lddy, or nullptr
  int64_t lddy;
  T* dh;            // [B, H] in: gradient reaching h after step t; out: before it
  T* dc;            // [B, H] likewise for LSTM's c
  T* dgx;           // [B, G*H] out: gradient of the input-side pre-activations
  T* dgh;           // [B, G*H] out: recurrent side (same buffer as dgx except for GRU)
  T* scratch;       // [B, H]
};

// A row past its length keeps its state and outputs 0.
template <typename T>
void carry_row(const StepIO<T>& s, int64_t b, bool has_c) {
  const int64_t H = s.H;
  if (s.h_new != s.h_prev) std::memcpy(s.h_new + b * H, s.h_prev + b * H, sizeof(T) * H);
  if (has_c && s.c_new != s.c_prev) std::memcpy(s.c_new + b * H, s.c_prev + b * H, sizeof(T) * H);
  std::memset(s.y + b * s.ldy, 0, sizeof(T) * H);
}

template <typename T>
T dy_at(const BackStepIO<T>& s, int64_t b, int64_t j) {
  return s.dy ? s.dy[b * s.lddy + j] : T(0);
}

// h_prev · W_hh[rows]ᵀ into rec[:, rows], for the gate rows [first, first + count) of W_hh.
template <typename T>
void recurrent_product(const StepIO<T>& s, int64_t G, const T* h, int64_t ldh, int64_t first,
                       int64_t count) {
  const int64_t GH = G * s.H;
  gemm(Op::N, Op::T, s.B, count, s.H, T(1), h, ldh, s.w_hh + first * s.H, s.H, T(0),
       s.rec + first, GH);
}

// dh += dg[:, rows] · W_hh[rows], the gradient reaching h_prev through the recurrent product.
template <typename T>
void recurrent_product_backward(const BackStepIO<T>& s, int64_t G, const T* dg, int64_t first,
                                int64_t count, T* out, T beta) {
  gemm(Op::N, Op::N, s.B, s.H, count, T(1), dg + first, G * s.H, s.w_hh + first * s.H, s.H, beta,
       out, s.H);
}

// ---------------------------------------------------------------------------------------------
template <typename T, bool Training>
struct LstmStep {
  static constexpr int G = 4;
  static void forward(const StepIO<T>& s) {
    const int64_t H = s.H, GH = G * H;
    recurrent_product(s, G, s.h_prev, H, 0, GH);
    for_each_row(s.B, H, [&](int64_t b) {
      if (!row_active(s.lengths, b, s.t)) return carry_row(s, b, true);
      const T* xp = s.xproj + b * GH;
      const T* rp = s.rec + b * GH;
      for (int64_t j = 0; j < H; ++j) {
        T pre[4], act[4];
        for (int k = 0; k < 4; ++k)
          pre[k] = xp[k * H + j] + s.b_ih[k * H + j] + rp[k * H + j] + s.b_hh[k * H + j];
        T c, h;
        cell::lstm_forward(pre, s.c_prev[b * H + j], act, c, h);
        s.c_new[b * H + j] = c;
        s.h_new[b * H + j] = h;
        s.y[b * s.ldy + j] = h;
        if (Training)
          for (int k = 0; k < 4; ++k) s.gates[b * GH + k * H + j] = act[k];
      }
    });
  }
  static void backward(const BackStepIO<T>& s) {
    const int64_t H = s.H, GH = G * H;
    for_each_row(s.B, H, [&](int64_t b) {
      T* dg = s.dgx + b * GH;
      if (!row_active(s.lengths, b, s.t)) return (void)std::memset(dg, 0, sizeof(T) * GH);
      for (int64_t j = 0; j < H; ++j) {
        T act[4], dpre[4], dc_prev;
        for (int k = 0; k < 4; ++k) act[k] = s.gates[b * GH + k * H + j];
        const T dh = s.dh[b * H + j] + dy_at(s, b, j);
        cell::lstm_backward(act, s.c_prev[b * H + j], s.c_new[b * H + j], dh, s.dc[b * H + j],
                            dpre, dc_prev);
        for (int k = 0; k < 4; ++k) dg[k * H + j] = dpre[k];
        s.dc[b * H + j] = dc_prev;
        s.dh[b * H + j] = T(0);  // h_prev reaches h only through the recurrent product
      }
    });
    recurrent_product_backward(s, G, s.dgx, 0, GH, s.dh, T(1));
  }
};

// ---------------------------------------------------------------------------------------------
template <typename T, bool Training>
struct GruStep {
  static constexpr int G = 3;
  static void forward(const StepIO<T>& s) {
    const int64_t H = s.H, GH = G * H, W = 4 * H;
    recurrent_product(s, G, s.h_prev, H, 0, GH);
    for_each_row(s.B, H, [&](int64_t b) {
      if (!row_active(s.lengths, b, s.t)) return carry_row(s, b, false);
      const T* xp = s.xproj + b * GH;
      const T* rp = s.rec + b * GH;
      for (int64_t j = 0; j < H; ++j) {
        T pre_x[3], pre_h[3], act[3], h;
        for (int k = 0; k < 3; ++k) {
          pre_x[k] = xp[k * H + j] + s.b_ih[k * H + j];
          pre_h[k] = rp[k * H + j] + s.b_hh[k * H + j];
        }
        cell::gru_forward(pre_x, pre_h, s.h_prev[b * H + j], act, h);
        s.h_new[b * H + j] = h;
        s.y[b * s.ldy + j] = h;
        if (Training) {
          for (int k = 0; k < 3; ++k) s.gates[b * W + k * H + j] = act[k];
          s.gates[b * W + 3 * H + j] = pre_h[2];
        }
      }
    });
  }
  static void backward(const BackStepIO<T>& s) {
    const int64_t H = s.H, GH = G * H, W = 4 * H;
    for_each_row(s.B, H, [&](int64_t b) {
      T* dgx = s.dgx + b * GH;
      T* dgh = s.dgh + b * GH;
      if (!row_active(s.lengths, b, s.t)) {
        std::memset(dgx, 0, sizeof(T) * GH);
        std::memset(dgh, 0, sizeof(T) * GH);
        return;
      }
      const T* gates = s.gates + b * W;
      for (int64_t j = 0; j < H; ++j) {
        const T act[3] = {gates[j], gates[H + j], gates[2 * H + j]};
        T dpre_x[3], dpre_h[3], dh_direct;
        const T dh = s.dh[b * H + j] + dy_at(s, b, j);
        cell::gru_backward(act, gates[3 * H + j], s.h_prev[b * H + j], dh, dpre_x, dpre_h,
                           dh_direct);
        for (int k = 0; k < 3; ++k) {
          dgx[k * H + j] = dpre_x[k];
          dgh[k * H + j] = dpre_h[k];
        }
        s.dh[b * H + j] = dh_direct;
      }
    });
    recurrent_product_backward(s, G, s.dgh, 0, GH, s.dh, T(1));
  }
};

// ---------------------------------------------------------------------------------------------
// The reset gate scales h before W_hn, so each step has two recurrent products: (r, z) from h,
// then n from r⊙h. Its tape row is (r, z, n, r⊙h); inference uses the same layout as scratch.
template <typename T, bool Training>
struct GruResetBeforeStep {
  static constexpr int G = 3;
  static void forward(const StepIO<T>& s) {
    const int64_t H = s.H, GH = G * H, W = 4 * H;
    recurrent_product(s, G, s.h_prev, H, 0, 2 * H);
    // Every row, active or not, gets a finite r⊙h: backward multiplies it by zero gradients.
    for_each_row(s.B, H, [&](int64_t b) {
      const T* xp = s.xproj + b * GH;
      const T* rp = s.rec + b * GH;
      T* g = s.gates + b * W;
      for (int64_t j = 0; j < H; ++j)
        cell::gru_reset_before_forward_rz(xp[j] + s.b_ih[j], xp[H + j] + s.b_ih[H + j],
                                          rp[j] + s.b_hh[j], rp[H + j] + s.b_hh[H + j],
                                          s.h_prev[b * H + j], g[j], g[H + j], g[3 * H + j]);
    });
    recurrent_product(s, G, s.gates + 3 * H, W, 2 * H, H);
    for_each_row(s.B, H, [&](int64_t b) {
      if (!row_active(s.lengths, b, s.t)) return carry_row(s, b, false);
      const T* xp = s.xproj + b * GH;
      const T* rp = s.rec + b * GH;
      T* g = s.gates + b * W;
      for (int64_t j = 0; j < H; ++j) {
        T h;
        cell::gru_reset_before_forward_n(xp[2 * H + j] + s.b_ih[2 * H + j],
                                         rp[2 * H + j] + s.b_hh[2 * H + j], g[H + j],
                                         s.h_prev[b * H + j], g[2 * H + j], h);
        s.h_new[b * H + j] = h;
        s.y[b * s.ldy + j] = h;
      }
    });
  }
  static void backward(const BackStepIO<T>& s) {
    const int64_t H = s.H, GH = G * H, W = 4 * H;
    for_each_row(s.B, H, [&](int64_t b) {
      T* dg = s.dgx + b * GH;
      if (!row_active(s.lengths, b, s.t)) return (void)std::memset(dg, 0, sizeof(T) * GH);
      const T* g = s.gates + b * W;
      for (int64_t j = 0; j < H; ++j) {
        const T dh = s.dh[b * H + j] + dy_at(s, b, j);
        cell::gru_reset_before_backward_zn(g[H + j], g[2 * H + j], s.h_prev[b * H + j], dh,
                                           dg[H + j], dg[2 * H + j], s.dh[b * H + j]);
      }
    });
    // scratch = dpre_n · W_hn: the gradient reaching r⊙h (zero on inactive rows).
    recurrent_product_backward(s, G, s.dgx, 2 * H, H, s.scratch, T(0));
    for_each_row(s.B, H, [&](int64_t b) {
      if (!row_active(s.lengths, b, s.t)) return;
      const T* g = s.gates + b * W;
      T* dg = s.dgx + b * GH;
      for (int64_t j = 0; j < H; ++j) {
        T dh_rh;
        cell::gru_reset_before_backward_r(g[j], s.h_prev[b * H + j], s.scratch[b * H + j], dg[j],
                                          dh_rh);
        s.dh[b * H + j] += dh_rh;
      }
    });
    recurrent_product_backward(s, G, s.dgx, 0, 2 * H, s.dh, T(1));
  }
};

// ---------------------------------------------------------------------------------------------
template <typename T, bool Training, bool Relu>
struct RnnStep {
  static constexpr int G = 1;
  static void forward(const StepIO<T>& s) {
    const int64_t H = s.H;
    recurrent_product(s, G, s.h_prev, H, 0, H);
    for_each_row(s.B, H, [&](int64_t b) {
      if (!row_active(s.lengths, b, s.t)) return carry_row(s, b, false);
      for (int64_t j = 0; j < H; ++j) {
        const T pre = s.xproj[b * H + j] + s.b_ih[j] + s.rec[b * H + j] + s.b_hh[j];
        const T h = Relu ? cell::rnn_relu_forward(pre) : cell::rnn_tanh_forward(pre);
        s.h_new[b * H + j] = h;
        s.y[b * s.ldy + j] = h;
      }
    });
  }
  static void backward(const BackStepIO<T>& s) {
    const int64_t H = s.H;
    for_each_row(s.B, H, [&](int64_t b) {
      T* dg = s.dgx + b * H;
      if (!row_active(s.lengths, b, s.t)) return (void)std::memset(dg, 0, sizeof(T) * H);
      for (int64_t j = 0; j < H; ++j) {
        const T dh = s.dh[b * H + j] + dy_at(s, b, j);
        const T h = s.h_new[b * H + j];
        dg[j] = Relu ? cell::rnn_relu_backward(h, dh) : cell::rnn_tanh_backward(h, dh);
        s.dh[b * H + j] = T(0);
      }
    });
    recurrent_product_backward(s, G, s.dgx, 0, H, s.dh, T(1));
  }
};

}  // namespace cpu
}  // namespace fusedrnn
