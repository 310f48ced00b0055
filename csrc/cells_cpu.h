// One time step of each cell on the CPU: the recurrent GEMM(s) and the fused pointwise pass over
// [B, H], forward and backward. The time loop, tape layout and weight gradients live in
// sequence_cpu.cc; the per-unit math lives in cell_math.h (shared with CUDA).
#pragma once

#include <cstdint>
#include <cstring>

#include "parallel_gemm.h"
#include "fusedrnn/cell_math.h"
#include "fusedrnn/rnn.h"

namespace fusedrnn {
namespace cpu {

// The per-row loops over hidden units take their arrays as restrict parameters: without that
// promise GCC gives up vectorising them (too many possible overlaps to check at run time). They
// are kept out of line because GCC drops the promise when it inlines them into the row loop.
// On x86-64 each is compiled twice, for the baseline (SSE2) and for AVX2, and the loader picks one
// by the CPU it runs on (an ifunc), so one wheel runs on any x86-64 and uses 8-wide code where
// the CPU has it. The clone names ISA flags, not an -march: GCC will not inline cell_math.h's
// functions into a clone of another -march, and a call in the loop stops vectorisation. The
// build turns off FMA contraction (-ffp-contract=off): with it, each clone and instantiation
// rounded a*b+c its own way, and inference stopped matching training bit for bit. Without it
// every clone computes the same bits on every CPU.
#define FR_R __restrict
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FR_ROW __attribute__((noinline, target_clones("avx2", "default")))
#else
#define FR_ROW __attribute__((noinline))
#endif
// The gate loops must be unrolled before the vectoriser sees the loop over hidden units.
#define FR_UNROLL _Pragma("GCC unroll 4")

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
  T* h_new;         // [B, H]    never aliases h_prev: the row loops below are restrict
  T* c_new;         // [B, H]
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
  const T* dy;      // [B, *] row stride lddy (zeros when the caller gave none)
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
  std::memcpy(s.h_new + b * H, s.h_prev + b * H, sizeof(T) * H);
  if (has_c) std::memcpy(s.c_new + b * H, s.c_prev + b * H, sizeof(T) * H);
  std::memset(s.y + b * s.ldy, 0, sizeof(T) * H);
}

// h_prev · W_hh[rows]ᵀ into rec[:, rows], for the gate rows [first, first + count) of W_hh.
template <typename T>
void recurrent_product(const StepIO<T>& s, int64_t G, const T* h, int64_t ldh, int64_t first,
                       int64_t count) {
  const int64_t GH = G * s.H;
  parallel_gemm(Op::N, Op::T, s.B, count, s.H, T(1), h, ldh, s.w_hh + first * s.H, s.H, T(0),
                s.rec + first, GH);
}

// dh += dg[:, rows] · W_hh[rows], the gradient reaching h_prev through the recurrent product.
template <typename T>
void recurrent_product_backward(const BackStepIO<T>& s, int64_t G, const T* dg, int64_t first,
                                int64_t count, T* out, T beta) {
  parallel_gemm(Op::N, Op::N, s.B, s.H, count, T(1), dg + first, G * s.H, s.w_hh + first * s.H,
                s.H, beta, out, s.H);
}

// ---------------------------------------------------------------------------------------------
template <typename T, bool Training>
struct LstmStep {
  static constexpr int G = 4;
  FR_ROW static void forward_row(int64_t H, const T* FR_R xp, const T* FR_R rp, const T* FR_R b_ih,
                          const T* FR_R b_hh, const T* FR_R c_prev, T* FR_R c_new, T* FR_R h_new,
                          T* FR_R y, T* FR_R gates) {
    for (int64_t j = 0; j < H; ++j) {
      T pre[4], act[4];
      FR_UNROLL for (int k = 0; k < 4; ++k)
        pre[k] = xp[k * H + j] + b_ih[k * H + j] + rp[k * H + j] + b_hh[k * H + j];
      cell::lstm_forward(pre, c_prev[j], act, c_new[j], h_new[j]);
      y[j] = h_new[j];
      if (Training) FR_UNROLL for (int k = 0; k < 4; ++k) gates[k * H + j] = act[k];
    }
  }
  static void forward(const StepIO<T>& s) {
    const int64_t H = s.H, GH = G * H;
    recurrent_product(s, G, s.h_prev, H, 0, GH);
    parallel_rows(s.B, G * s.H, [&](int64_t b) {
      if (!row_active(s.lengths, b, s.t)) return carry_row(s, b, true);
      forward_row(H, s.xproj + b * GH, s.rec + b * GH, s.b_ih, s.b_hh, s.c_prev + b * H,
                  s.c_new + b * H, s.h_new + b * H, s.y + b * s.ldy,
                  Training ? s.gates + b * GH : nullptr);
    });
  }
  FR_ROW static void backward_row(int64_t H, const T* FR_R gates, const T* FR_R c_prev,
                           const T* FR_R c_new, const T* FR_R dy, T* FR_R dh, T* FR_R dc,
                           T* FR_R dg) {
    for (int64_t j = 0; j < H; ++j) {
      T act[4], dpre[4];
      FR_UNROLL for (int k = 0; k < 4; ++k) act[k] = gates[k * H + j];
      cell::lstm_backward(act, c_prev[j], c_new[j], dh[j] + dy[j], dc[j], dpre,
                          dc[j]);
      FR_UNROLL for (int k = 0; k < 4; ++k) dg[k * H + j] = dpre[k];
      dh[j] = T(0);  // h_prev reaches h only through the recurrent product
    }
  }
  static void backward(const BackStepIO<T>& s) {
    const int64_t H = s.H, GH = G * H;
    parallel_rows(s.B, G * s.H, [&](int64_t b) {
      T* dg = s.dgx + b * GH;
      if (!row_active(s.lengths, b, s.t)) return (void)std::memset(dg, 0, sizeof(T) * GH);
      backward_row(H, s.gates + b * GH, s.c_prev + b * H, s.c_new + b * H,
                   s.dy + b * s.lddy, s.dh + b * H, s.dc + b * H, dg);
    });
    recurrent_product_backward(s, G, s.dgx, 0, GH, s.dh, T(1));
  }
};

// ---------------------------------------------------------------------------------------------
template <typename T, bool Training>
struct GruStep {
  static constexpr int G = 3;
  FR_ROW static void forward_row(int64_t H, const T* FR_R xp, const T* FR_R rp, const T* FR_R b_ih,
                          const T* FR_R b_hh, const T* FR_R h_prev, T* FR_R h_new, T* FR_R y,
                          T* FR_R gates) {
    for (int64_t j = 0; j < H; ++j) {
      T pre_x[3], pre_h[3], act[3];
      FR_UNROLL for (int k = 0; k < 3; ++k) {
        pre_x[k] = xp[k * H + j] + b_ih[k * H + j];
        pre_h[k] = rp[k * H + j] + b_hh[k * H + j];
      }
      cell::gru_forward(pre_x, pre_h, h_prev[j], act, h_new[j]);
      y[j] = h_new[j];
      if (Training) {
        FR_UNROLL for (int k = 0; k < 3; ++k) gates[k * H + j] = act[k];
        gates[3 * H + j] = pre_h[2];
      }
    }
  }
  static void forward(const StepIO<T>& s) {
    const int64_t H = s.H, GH = G * H;
    recurrent_product(s, G, s.h_prev, H, 0, GH);
    parallel_rows(s.B, G * s.H, [&](int64_t b) {
      if (!row_active(s.lengths, b, s.t)) return carry_row(s, b, false);
      forward_row(H, s.xproj + b * GH, s.rec + b * GH, s.b_ih, s.b_hh, s.h_prev + b * H,
                  s.h_new + b * H, s.y + b * s.ldy, Training ? s.gates + b * 4 * H : nullptr);
    });
  }
  FR_ROW static void backward_row(int64_t H, const T* FR_R gates, const T* FR_R h_prev,
                           const T* FR_R dy, T* FR_R dh, T* FR_R dgx, T* FR_R dgh) {
    for (int64_t j = 0; j < H; ++j) {
      const T act[3] = {gates[j], gates[H + j], gates[2 * H + j]};
      T dpre_x[3], dpre_h[3];
      cell::gru_backward(act, gates[3 * H + j], h_prev[j], dh[j] + dy[j], dpre_x,
                         dpre_h, dh[j]);
      FR_UNROLL for (int k = 0; k < 3; ++k) {
        dgx[k * H + j] = dpre_x[k];
        dgh[k * H + j] = dpre_h[k];
      }
    }
  }
  static void backward(const BackStepIO<T>& s) {
    const int64_t H = s.H, GH = G * H;
    parallel_rows(s.B, G * s.H, [&](int64_t b) {
      T* dgx = s.dgx + b * GH;
      T* dgh = s.dgh + b * GH;
      if (!row_active(s.lengths, b, s.t)) {
        std::memset(dgx, 0, sizeof(T) * GH);
        std::memset(dgh, 0, sizeof(T) * GH);
        return;
      }
      backward_row(H, s.gates + b * 4 * H, s.h_prev + b * H, s.dy + b * s.lddy,
                   s.dh + b * H, dgx, dgh);
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
  FR_ROW static void forward_rz_row(int64_t H, const T* FR_R xp, const T* FR_R rp, const T* FR_R b_ih,
                             const T* FR_R b_hh, const T* FR_R h_prev, T* FR_R g) {
    for (int64_t j = 0; j < H; ++j)
      cell::gru_reset_before_forward_rz(xp[j] + b_ih[j], xp[H + j] + b_ih[H + j],
                                        rp[j] + b_hh[j], rp[H + j] + b_hh[H + j], h_prev[j],
                                        g[j], g[H + j], g[3 * H + j]);
  }
  FR_ROW static void forward_n_row(int64_t H, const T* FR_R xp, const T* FR_R rp, const T* FR_R b_ih,
                            const T* FR_R b_hh, const T* FR_R h_prev, T* FR_R g,
                            T* FR_R h_new, T* FR_R y) {
    for (int64_t j = 0; j < H; ++j) {
      cell::gru_reset_before_forward_n(xp[2 * H + j] + b_ih[2 * H + j],
                                       rp[2 * H + j] + b_hh[2 * H + j], g[H + j], h_prev[j],
                                       g[2 * H + j], h_new[j]);
      y[j] = h_new[j];
    }
  }
  static void forward(const StepIO<T>& s) {
    const int64_t H = s.H, GH = G * H, W = 4 * H;
    recurrent_product(s, G, s.h_prev, H, 0, 2 * H);
    // Every row, active or not, gets a finite r⊙h: backward multiplies it by zero gradients.
    parallel_rows(s.B, G * s.H, [&](int64_t b) {
      forward_rz_row(H, s.xproj + b * GH, s.rec + b * GH, s.b_ih, s.b_hh, s.h_prev + b * H,
                     s.gates + b * W);
    });
    recurrent_product(s, G, s.gates + 3 * H, W, 2 * H, H);
    parallel_rows(s.B, G * s.H, [&](int64_t b) {
      if (!row_active(s.lengths, b, s.t)) return carry_row(s, b, false);
      forward_n_row(H, s.xproj + b * GH, s.rec + b * GH, s.b_ih, s.b_hh, s.h_prev + b * H,
                    s.gates + b * W, s.h_new + b * H, s.y + b * s.ldy);
    });
  }
  FR_ROW static void backward_zn_row(int64_t H, const T* FR_R g, const T* FR_R h_prev, const T* FR_R dy,
                              T* FR_R dh, T* FR_R dg) {
    for (int64_t j = 0; j < H; ++j)
      cell::gru_reset_before_backward_zn(g[H + j], g[2 * H + j], h_prev[j],
                                         dh[j] + dy[j], dg[H + j], dg[2 * H + j],
                                         dh[j]);
  }
  FR_ROW static void backward_r_row(int64_t H, const T* FR_R g, const T* FR_R h_prev, const T* FR_R drh,
                             T* FR_R dh, T* FR_R dg) {
    for (int64_t j = 0; j < H; ++j) {
      T dh_rh;
      cell::gru_reset_before_backward_r(g[j], h_prev[j], drh[j], dg[j], dh_rh);
      dh[j] += dh_rh;
    }
  }
  static void backward(const BackStepIO<T>& s) {
    const int64_t H = s.H, GH = G * H, W = 4 * H;
    parallel_rows(s.B, G * s.H, [&](int64_t b) {
      T* dg = s.dgx + b * GH;
      if (!row_active(s.lengths, b, s.t)) return (void)std::memset(dg, 0, sizeof(T) * GH);
      backward_zn_row(H, s.gates + b * W, s.h_prev + b * H, s.dy + b * s.lddy,
                      s.dh + b * H, dg);
    });
    // scratch = dpre_n · W_hn: the gradient reaching r⊙h (zero on inactive rows).
    recurrent_product_backward(s, G, s.dgx, 2 * H, H, s.scratch, T(0));
    parallel_rows(s.B, G * s.H, [&](int64_t b) {
      if (!row_active(s.lengths, b, s.t)) return;
      backward_r_row(H, s.gates + b * W, s.h_prev + b * H, s.scratch + b * H, s.dh + b * H,
                     s.dgx + b * GH);
    });
    recurrent_product_backward(s, G, s.dgx, 0, 2 * H, s.dh, T(1));
  }
};

// ---------------------------------------------------------------------------------------------
template <typename T, bool Training, bool Relu>
struct RnnStep {
  static constexpr int G = 1;
  FR_ROW static void forward_row(int64_t H, const T* FR_R xp, const T* FR_R rp, const T* FR_R b_ih,
                          const T* FR_R b_hh, T* FR_R h_new, T* FR_R y) {
    for (int64_t j = 0; j < H; ++j) {
      const T pre = xp[j] + b_ih[j] + rp[j] + b_hh[j];
      h_new[j] = Relu ? cell::rnn_relu_forward(pre) : cell::rnn_tanh_forward(pre);
      y[j] = h_new[j];
    }
  }
  static void forward(const StepIO<T>& s) {
    const int64_t H = s.H;
    recurrent_product(s, G, s.h_prev, H, 0, H);
    parallel_rows(s.B, G * s.H, [&](int64_t b) {
      if (!row_active(s.lengths, b, s.t)) return carry_row(s, b, false);
      forward_row(H, s.xproj + b * H, s.rec + b * H, s.b_ih, s.b_hh, s.h_new + b * H,
                  s.y + b * s.ldy);
    });
  }
  FR_ROW static void backward_row(int64_t H, const T* FR_R h_new, const T* FR_R dy, T* FR_R dh,
                           T* FR_R dg) {
    for (int64_t j = 0; j < H; ++j) {
      const T d = dh[j] + dy[j];
      dg[j] = Relu ? cell::rnn_relu_backward(h_new[j], d) : cell::rnn_tanh_backward(h_new[j], d);
      dh[j] = T(0);
    }
  }
  static void backward(const BackStepIO<T>& s) {
    const int64_t H = s.H;
    parallel_rows(s.B, G * s.H, [&](int64_t b) {
      T* dg = s.dgx + b * H;
      if (!row_active(s.lengths, b, s.t)) return (void)std::memset(dg, 0, sizeof(T) * H);
      backward_row(H, s.h_new + b * H, s.dy + b * s.lddy, s.dh + b * H, dg);
    });
    recurrent_product_backward(s, G, s.dgx, 0, H, s.dh, T(1));
  }
};

}  // namespace cpu
}  // namespace fusedrnn
