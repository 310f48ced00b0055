// Pointwise math of every cell, forward and backward, for one hidden unit of one batch row.
//
// Written once and compiled both by the CPU driver and (later) by the CUDA kernels, so the two
// backends cannot drift apart. Every function works on plain scalars: "pre" values are
// pre-activations (x·W_ihᵀ + b_ih and h·W_hhᵀ + b_hh parts), "act" values are activated gates.
// Gate orders follow PyTorch/cuDNN: LSTM (i, f, g, o), GRU (r, z, n).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

// Always inlined on the host too: a call left in a pointwise loop keeps GCC from vectorising it,
// and in a large translation unit GCC's growth limits otherwise leave some of them out of line.
#if defined(__GNUC__)
#define FR_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define FR_ALWAYS_INLINE inline
#endif
#if defined(__CUDACC__)
#define FR_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FR_HOST_DEVICE FR_ALWAYS_INLINE
#endif

namespace fusedrnn {
namespace cell {

// The exp and tanh below take Fma: whether their multiply-adds round once (fused) or twice. The
// CPU rows (pointwise.h) run them fused where the CPU has FMA units, a fifth less time in LSTM's
// forward row; the CUDA kernels ignore it. Over all 2^32 floats, against double:
// tanh within 2.46 ulp (2.43 fused), sigmoid 2.48 either way, exp within 8.3e-8 relative error
// on [-86.6, 88] (8.6e-8 fused).
#if defined(__CUDA_ARCH__)
template <bool Fma = false>
FR_HOST_DEVICE float exp_(float x) { return ::expf(x); }
template <bool Fma = false>
FR_HOST_DEVICE float tanh_(float x) { return ::tanhf(x); }
template <bool Fma = false>
FR_HOST_DEVICE double exp_(double x) { return ::exp(x); }
template <bool Fma = false>
FR_HOST_DEVICE double tanh_(double x) { return ::tanh(x); }
#else
// a·b + c, rounded once for Fma (std::fma), else twice: the build fuses no `a * b + c` of its
// own (-ffp-contract=off), so the choice is this one alone, the same in every version of the rows.
template <bool Fma, typename T>
FR_ALWAYS_INLINE T mul_add(T a, T b, T c) {
  if constexpr (Fma) {
    return std::fma(a, b, c);
  } else {
    return a * b + c;
  }
}

// float exp and tanh on the CPU, branch-free so that the pointwise loops vectorise (libm's
// expf/tanhf are opaque calls that keep those loops scalar and cost most of a step's time).
// Both reduce their argument as Cephes' expf does: y = n·ln2 + r, |r| <= ln2/2.
template <typename T>
struct Reduced {
  T r;        // y - n·ln2
  T shifted;  // y·log2(e) + 1.5·2^(mantissa bits): n in its low bits
};

template <bool Fma>
FR_ALWAYS_INLINE Reduced<float> reduce_by_ln2(float y) {
  // Adding 1.5·2^23 rounds y·log2(e) to the integer n and leaves n in the low bits of `shifted`:
  // no float-to-int conversion, which a NaN would make undefined behaviour (UBSan flagged it
  // once). ln2 in two parts, the first exact in a few bits, so n·ln2 loses nothing.
  const float shifted = mul_add<Fma>(y, 1.44269504088896341f, 12582912.0f);
  const float n = shifted - 12582912.0f;
  return {mul_add<Fma>(n, 2.12194440e-4f, mul_add<Fma>(n, -0.693359375f, y)), shifted};
}

// e^r - 1 = r + r²·q(r) for |r| <= ln2/2, q in Estrin's scheme: a third of Horner's chain of
// dependent operations, so out-of-order execution overlaps more elements (0.64 against 1.1 ns
// an element with AVX2 here, at the same accuracy: e^r within 8.3e-8 relative error).
template <bool Fma>
FR_ALWAYS_INLINE float expm1_reduced(float r) {
  const float r2 = r * r;
  const float q = mul_add<Fma>(
      r2,
      mul_add<Fma>(r2, mul_add<Fma>(1.9875691500e-4f, r, 1.3981999507e-3f),
                   mul_add<Fma>(8.3334519073e-3f, r, 4.1665795894e-2f)),
      mul_add<Fma>(1.6666665459e-1f, r, 5.0000001201e-1f));
  return mul_add<Fma>(r2, q, r);
}

// The same bits as another type (std::bit_cast is C++20).
template <typename To, typename From>
FR_ALWAYS_INLINE To bits_as(From from) {
  static_assert(sizeof(To) == sizeof(From), "a bit cast keeps the size");
  To to;
  std::memcpy(&to, &from, sizeof to);
  return to;
}
// The bits of 2^n, built in an exponent field from the low 9 bits of `shifted` (n in two's
// complement; the bits above them shift out). Exact for n in [-126, 127].
FR_ALWAYS_INLINE uint32_t pow2_exponent_bits(float shifted) {
  return (bits_as<uint32_t>(shifted) << 23) + (127u << 23);
}

template <bool Fma = false>
FR_ALWAYS_INLINE float exp_(float x_in) {
  // The polynomial runs on x clamped to [-86.6, 88.0], where p·2^n stays a normal float (n in
  // [-125, 127]). std::max/min with x first keep NaN (a compare fails), and unlike two
  // ternaries they stay one select each, so the loop still vectorises.
  const float x = std::min(std::max(x_in, -86.6f), 88.0f);
  const Reduced<float> red = reduce_by_ln2<Fma>(x);
  const float p = expm1_reduced<Fma>(red.r) + 1.0f;
  // p·2^n is exact, p·2^n being a normal float. Above the range 2^n is +inf, so e^x overflows
  // to +inf (from 88.0, where expf does from 88.72): sigmoid(x) = 1/(1 + e^-x) is then exactly 0
  // for x < -88 rather than 1/FLT_MAX ~ 2.9e-39, which a huge state multiplied into a visible
  // gradient (GRU, h ~ 1e35). Below it, e^x stays ~2.5e-38 (at most that far off). A NaN reaches
  // p, and p·2^n is NaN whatever 2^n is. The special cases pick 2^n, not the result: a select on
  // the result let GCC copy each division by 1 + e^x into both of its arms, two divisions a
  // sigmoid. The same bits as that select for every float but NaNs (NaN for NaN; a signalling
  // one comes back quiet), checked over all 2^32, and LSTM's forward row 8% faster on AVX-512.
  const uint32_t scale_bits = x_in > 88.0f ? 0x7F800000u : pow2_exponent_bits(red.shifted);
  return p * bits_as<float>(scale_bits);
}

template <bool Fma = false>
FR_ALWAYS_INLINE float tanh_(float x) {
  // tanh|x| = E/(E + 2) with E = e^{2|x|} - 1 = 2^n·(e^r - 1) + (2^n - 1), which keeps its
  // relative accuracy as x → 0, so one formula covers the whole range. Within 2.46 ulp (2.43
  // with Fma) of the exact tanh for every float (checked against double tanh over all 2^32; 1.5
  // ulp from |x| = 0.36 up, the rounding of E + 2 accounting for the rest near 0), never beyond
  // ±1 (either way), odd (-0 → -0), NaN for NaN. A small-|x| polynomial beside an exp-based
  // formula (1.33 ulp) computed both for every element: a quarter more time in LSTM's forward
  // row.
  // |x| stops at 9.25, past which tanh rounds to 1 and E stays finite (no inf/inf).
  const float y = std::min(std::fabs(x) * 2.0f, 18.5f);  // NaN stays NaN (a compare fails)
  const Reduced<float> red = reduce_by_ln2<Fma>(y);
  const float two_n = bits_as<float>(pow2_exponent_bits(red.shifted));  // n in [0, 27]
  const float e = mul_add<Fma>(two_n, expm1_reduced<Fma>(red.r), two_n - 1.0f);
  return std::copysign(e / (e + 2.0f), x);
}

// double: the same reductions and formulas, with double's constants, and e^r - 1 by its Taylor
// series to r^13/13! (the next term is under 5e-18 for |r| <= ln2/2), in Estrin's scheme. libm's
// exp and tanh are calls that keep the float64 pointwise loops scalar: they took 38% of a GRU
// float64 inference at T=100, B=16, H=128. Against long double on 5·10^7 arguments (either
// Fma): exp within 1.02 ulp, tanh 2.61, sigmoid 2.34; NaN for NaN.
template <bool Fma>
FR_ALWAYS_INLINE Reduced<double> reduce_by_ln2(double y) {
  // ln2 in two parts (fdlibm's), the first of 32 significant bits, so n·ln2_hi is exact.
  const double shifted = mul_add<Fma>(y, 1.4426950408889634074, 6755399441055744.0);
  const double n = shifted - 6755399441055744.0;
  const double r_hi = mul_add<Fma>(n, -6.93147180369123816490e-01, y);
  return {mul_add<Fma>(n, -1.90821492927058770002e-10, r_hi), shifted};
}

template <bool Fma>
FR_ALWAYS_INLINE double expm1_reduced(double r) {
  const double r2 = r * r, r4 = r2 * r2;
  // q(r) = sum of r^(k-2)/k! for k = 2..13, in pairs, then pairs of pairs.
  const double p0 = mul_add<Fma>(1.0 / 6, r, 1.0 / 2);
  const double p1 = mul_add<Fma>(1.0 / 120, r, 1.0 / 24);
  const double p2 = mul_add<Fma>(1.0 / 5040, r, 1.0 / 720);
  const double p3 = mul_add<Fma>(1.0 / 362880, r, 1.0 / 40320);
  const double p4 = mul_add<Fma>(1.0 / 39916800, r, 1.0 / 3628800);
  const double p5 = mul_add<Fma>(1.0 / 6227020800, r, 1.0 / 479001600);
  const double low = mul_add<Fma>(r4, mul_add<Fma>(p3, r2, p2), mul_add<Fma>(p1, r2, p0));
  const double q = mul_add<Fma>(r4 * r4, mul_add<Fma>(p5, r2, p4), low);
  return mul_add<Fma>(r2, q, r);
}

// The bits of 2^n from the low 12 bits of `shifted`; exact for n in [-1022, 1023].
FR_ALWAYS_INLINE uint64_t pow2_exponent_bits(double shifted) {
  return (bits_as<uint64_t>(shifted) << 52) + (uint64_t{1023} << 52);
}

template <bool Fma = false>
FR_ALWAYS_INLINE double exp_(double x_in) {
  // As float's: x clamped to [-708, 709], where p·2^n stays normal; +inf above 709 (libm's
  // from 709.78), so that sigmoid is exactly 0 far out; NaN in, NaN out.
  const double x = std::min(std::max(x_in, -708.0), 709.0);
  const Reduced<double> red = reduce_by_ln2<Fma>(x);
  const double p = expm1_reduced<Fma>(red.r) + 1.0;
  const uint64_t scale_bits =
      x_in > 709.0 ? uint64_t{0x7FF0000000000000} : pow2_exponent_bits(red.shifted);
  return p * bits_as<double>(scale_bits);
}

template <bool Fma = false>
FR_ALWAYS_INLINE double tanh_(double x) {
  // As float's: tanh|x| = E/(E + 2), E = 2^n·(e^r - 1) + (2^n - 1); |x| stops at 19.25, past
  // which tanh rounds to 1.
  const double y = std::min(std::fabs(x) * 2.0, 38.5);
  const Reduced<double> red = reduce_by_ln2<Fma>(y);
  const double two_n = bits_as<double>(pow2_exponent_bits(red.shifted));  // n in [0, 56]
  const double e = mul_add<Fma>(two_n, expm1_reduced<Fma>(red.r), two_n - 1.0);
  return std::copysign(e / (e + 2.0), x);
}
#endif

// 1/(1+e^-x): for x → -∞ e^-x overflows to +inf and the result is exactly 0, never NaN.
template <bool Fma = false, typename T>
FR_HOST_DEVICE T sigmoid(T x) { return T(1) / (T(1) + exp_<Fma>(-x)); }

// Derivatives written in terms of the activated value y, which is what the tape keeps.
template <typename T>
FR_HOST_DEVICE T dsigmoid(T y) { return y * (T(1) - y); }
template <typename T>
FR_HOST_DEVICE T dtanh(T y) { return T(1) - y * y; }

// ---------------------------------------------------------------------------------------------
// LSTM: i=σ, f=σ, g=tanh, o=σ;  c' = f⊙c + i⊙g;  h' = o⊙tanh(c').
template <bool Fma = false, typename T>
FR_HOST_DEVICE void lstm_forward(const T pre[4], T c_prev, T act[4], T& c_new, T& h_new) {
  act[0] = sigmoid<Fma>(pre[0]);
  act[1] = sigmoid<Fma>(pre[1]);
  act[2] = tanh_<Fma>(pre[2]);
  act[3] = sigmoid<Fma>(pre[3]);
  c_new = act[1] * c_prev + act[0] * act[2];
  h_new = act[3] * tanh_<Fma>(c_new);
}

// dh, dc: gradients reaching h' and c'. Outputs: gradients of the four pre-activations and of c.
template <bool Fma = false, typename T>
FR_HOST_DEVICE void lstm_backward(const T act[4], T c_prev, T c_new, T dh, T dc, T dpre[4],
                                  T& dc_prev) {
  const T tc = tanh_<Fma>(c_new);
  const T dc_total = dc + dh * act[3] * dtanh(tc);
  dpre[0] = dc_total * act[2] * dsigmoid(act[0]);
  dpre[1] = dc_total * c_prev * dsigmoid(act[1]);
  dpre[2] = dc_total * act[0] * dtanh(act[2]);
  dpre[3] = dh * tc * dsigmoid(act[3]);
  dc_prev = dc_total * act[1];
}

// ---------------------------------------------------------------------------------------------
// GRU, reset after the recurrent product (PyTorch, cuDNN):
//   r = σ(xr + hr), z = σ(xz + hz), n = tanh(xn + r⊙hn), h' = (1−z)⊙n + z⊙h
// where x* include b_ih and h* include b_hh. hn is kept for backward.
template <bool Fma = false, typename T>
FR_HOST_DEVICE void gru_forward(const T pre_x[3], const T pre_h[3], T h_prev, T act[3], T& h_new) {
  act[0] = sigmoid<Fma>(pre_x[0] + pre_h[0]);
  act[1] = sigmoid<Fma>(pre_x[1] + pre_h[1]);
  act[2] = tanh_<Fma>(pre_x[2] + act[0] * pre_h[2]);
  h_new = (T(1) - act[1]) * act[2] + act[1] * h_prev;
}

// n's recurrent-side pre-activation gradient from its input-side one: hn enters scaled by r.
template <typename T>
FR_HOST_DEVICE T gru_recurrent_n_grad(T dpre_x_n, T r) { return dpre_x_n * r; }

// The input side and the recurrent side get different gradients for the n gate (the recurrent
// one is scaled by r), hence two outputs. dh_prev_direct is the z⊙dh path only.
template <typename T>
FR_HOST_DEVICE void gru_backward(const T act[3], T hn, T h_prev, T dh, T dpre_x[3], T dpre_h[3],
                                 T& dh_prev_direct) {
  const T dn = dh * (T(1) - act[1]) * dtanh(act[2]);
  const T dz = dh * (h_prev - act[2]) * dsigmoid(act[1]);
  const T dr = dn * hn * dsigmoid(act[0]);
  dpre_x[0] = dpre_h[0] = dr;
  dpre_x[1] = dpre_h[1] = dz;
  dpre_x[2] = dn;
  dpre_h[2] = gru_recurrent_n_grad(dn, act[0]);
  dh_prev_direct = dh * act[1];
}

// ---------------------------------------------------------------------------------------------
// GRU, reset before the recurrent product (Cho et al. 2014):
//   r = σ(xr + hr), z = σ(xz + hz), n = tanh(xn + W_hn·(r⊙h) + b_hn), h' = (1−z)⊙n + z⊙h.
// The n gate needs a second product per step, so forward and backward each come in two halves
// with that product between them.
template <bool Fma = false, typename T>
FR_HOST_DEVICE void gru_reset_before_forward_rz(T pre_xr, T pre_xz, T pre_hr, T pre_hz, T h_prev,
                                                T& r, T& z, T& rh) {
  r = sigmoid<Fma>(pre_xr + pre_hr);
  z = sigmoid<Fma>(pre_xz + pre_hz);
  rh = r * h_prev;
}

template <bool Fma = false, typename T>
FR_HOST_DEVICE void gru_reset_before_forward_n(T pre_xn, T pre_hn, T z, T h_prev, T& n, T& h_new) {
  n = tanh_<Fma>(pre_xn + pre_hn);
  h_new = (T(1) - z) * n + z * h_prev;
}

// First half: the z and n pre-activation gradients (dpre_n feeds the W_hn product) and z⊙dh.
template <typename T>
FR_HOST_DEVICE void gru_reset_before_backward_zn(T z, T n, T h_prev, T dh, T& dpre_z, T& dpre_n,
                                                 T& dh_prev_direct) {
  dpre_n = dh * (T(1) - z) * dtanh(n);
  dpre_z = dh * (h_prev - n) * dsigmoid(z);
  dh_prev_direct = dh * z;
}

// Second half: drh = dpre_n·W_hn, the gradient reaching r⊙h.
template <typename T>
FR_HOST_DEVICE void gru_reset_before_backward_r(T r, T h_prev, T drh, T& dpre_r, T& dh_prev_rh) {
  dpre_r = drh * h_prev * dsigmoid(r);
  dh_prev_rh = drh * r;
}

// ---------------------------------------------------------------------------------------------
// Vanilla RNN: h' = tanh(pre) or relu(pre).
template <bool Fma = false, typename T>
FR_HOST_DEVICE T rnn_tanh_forward(T pre) { return tanh_<Fma>(pre); }
template <typename T>
FR_HOST_DEVICE T rnn_tanh_backward(T h_new, T dh) { return dh * dtanh(h_new); }
template <typename T>
FR_HOST_DEVICE T rnn_relu_forward(T pre) { return pre < T(0) ? T(0) : pre; }  // NaN stays NaN
// relu'(0) = 0, as in PyTorch.
template <typename T>
FR_HOST_DEVICE T rnn_relu_backward(T h_new, T dh) { return h_new > T(0) ? dh : T(0); }

}  // namespace cell
}  // namespace fusedrnn
