// The CUDA sequence driver, the counterpart of csrc/sequence_cpu.cc: one GEMM for the input
// projection over all T·B rows, the time loop over cell_kernels.cuh's steps, and after the
// reverse walk the weight, bias and input gradients as single GEMMs. Validation, tape layout and
// slot convention are the CPU driver's (rnn_common.h). Everything runs on the legacy default
// stream; each entry point synchronizes it before returning.
#include <algorithm>
#include <cstdint>

#include "cell_kernels.cuh"
#include "cublas_gemm.h"
#include "cuda_check.h"
#include "fusedrnn/rnn_cuda.h"
#include "rnn_common.h"

namespace fusedrnn {
namespace cuda {
namespace {

using detail::StepPlan;

template <typename T>
DeviceMemory uninitialized(int64_t n) {
  return DeviceMemory(sizeof(T) * static_cast<std::size_t>(n));
}

template <typename T>
void copy_or_zero(T* dst, const T* src, int64_t n) {
  if (!src) FR_CUDA_CHECK(cudaMemsetAsync(dst, 0, sizeof(T) * n, 0));
  else if (src != dst)
    FR_CUDA_CHECK(cudaMemcpyAsync(dst, src, sizeof(T) * n, cudaMemcpyDeviceToDevice, 0));
}

template <typename T>
__global__ void fill_kernel(T* out, int64_t n, T value) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) out[i] = value;
}

template <typename T>
void fill(T* out, int64_t n, T value) {
  const int64_t blocks = std::min<int64_t>((n + kThreads - 1) / kThreads, 1 << 20);
  fill_kernel<<<unsigned(blocks), kThreads, 0, 0>>>(out, n, value);
  FR_CUDA_CHECK(cudaGetLastError());
}

template <template <typename, bool> class Step, typename T>
struct Dispatch {
  static void forward(const StepIO<T>& s, bool training) {
    training ? Step<T, true>::forward(s) : Step<T, false>::forward(s);
  }
  static void backward(const BackStepIO<T>& s) { Step<T, true>::backward(s); }
};

template <typename T, bool Training>
using RnnTanhStep = RnnStep<T, Training, false>;
template <typename T, bool Training>
using RnnReluStep = RnnStep<T, Training, true>;

template <typename T>
void step_forward(Cell cell, const StepIO<T>& s, bool training) {
  switch (cell) {
    case Cell::LSTM: return Dispatch<LstmStep, T>::forward(s, training);
    case Cell::GRU: return Dispatch<GruStep, T>::forward(s, training);
    case Cell::GRU_RESET_BEFORE: return Dispatch<GruResetBeforeStep, T>::forward(s, training);
    case Cell::RNN_TANH: return Dispatch<RnnTanhStep, T>::forward(s, training);
    case Cell::RNN_RELU: return Dispatch<RnnReluStep, T>::forward(s, training);
  }
}

template <typename T>
void step_backward(Cell cell, const BackStepIO<T>& s) {
  switch (cell) {
    case Cell::LSTM: return Dispatch<LstmStep, T>::backward(s);
    case Cell::GRU: return Dispatch<GruStep, T>::backward(s);
    case Cell::GRU_RESET_BEFORE: return Dispatch<GruResetBeforeStep, T>::backward(s);
    case Cell::RNN_TANH: return Dispatch<RnnTanhStep, T>::backward(s);
    case Cell::RNN_RELU: return Dispatch<RnnReluStep, T>::backward(s);
  }
}

// db[k] = Σ_rows dg[row, k], as the product ones[1, rows] · dg[rows, cols].
template <typename T>
void column_sums(cublasHandle_t blas, const T* dg, int64_t rows, int64_t cols, const T* ones,
                 T* db) {
  gemm(blas, Op::N, Op::N, 1, cols, rows, T(1), ones, rows, dg, cols, T(0), db, cols);
}

}  // namespace

template <typename Real>
void forward(const ForwardArgs<Real>& a) {
  detail::check_forward_args(a, a.lengths);
  const Dims& d = a.dims;
  const bool has_c = has_cell_state(a.cell);

  const int64_t T = d.T, B = d.B, H = d.H, G = gate_count(a.cell), GH = G * H, BH = B * H;
  const bool training = a.tape != nullptr;
  const cublasHandle_t blas = cublas_handle(a.tf32);
  const DeviceMemory lengths =
      a.lengths ? DeviceMemory::from_host(a.lengths, sizeof(int64_t) * B) : DeviceMemory();

  DeviceMemory xproj = uninitialized<Real>(T * B * GH);
  gemm(blas, Op::N, Op::T, T * B, GH, d.I, Real(1), a.x, d.I, a.weights.w_ih, d.I, Real(0),
       xproj.as<Real>(), GH);
  DeviceMemory rec = uninitialized<Real>(B * GH);

  // Training walks the tape's state slots; inference alternates between two scratch slots.
  const int64_t width = tape_gate_width(a.cell) * H;
  DeviceMemory scratch_gates, scratch_states;
  if (!training) {
    if (a.cell == Cell::GRU_RESET_BEFORE) scratch_gates = uninitialized<Real>(B * width);
    scratch_states = uninitialized<Real>((has_c ? 4 : 2) * BH);
  }
  Real* hs = training ? a.tape->h_states() : scratch_states.as<Real>();
  Real* cs = training ? a.tape->c_states() : has_c ? scratch_states.as<Real>() + 2 * BH : nullptr;
  const auto slots = [&](int64_t s) {
    const StepPlan p(s, T, a.reverse);
    return training ? p : StepPlan{p.t, s % 2, (s + 1) % 2};
  };
  copy_or_zero(hs + slots(0).read * BH, a.h0, BH);
  if (has_c) copy_or_zero(cs + slots(0).read * BH, a.c0, BH);

  for (int64_t s = 0; s < T; ++s) {
    const StepPlan p = slots(s);
    const StepIO<Real> io{blas,
                          B,
                          H,
                          p.t,
                          lengths.as<const int64_t>(),
                          xproj.as<Real>() + p.t * B * GH,
                          a.weights.w_hh,
                          a.weights.b_ih,
                          a.weights.b_hh,
                          hs + p.read * BH,
                          has_c ? cs + p.read * BH : nullptr,
                          hs + p.write * BH,
                          has_c ? cs + p.write * BH : nullptr,
                          training ? a.tape->gates() + p.t * B * width : scratch_gates.as<Real>(),
                          a.y + p.t * B * a.ldy,
                          a.ldy,
                          rec.as<Real>()};
    step_forward(a.cell, io, training);
  }

  const int64_t last = slots(T - 1).write;
  copy_or_zero(a.h_n, hs + last * BH, BH);
  if (has_c) copy_or_zero(a.c_n, cs + last * BH, BH);
  FR_CUDA_CHECK(cudaStreamSynchronize(0));
}

template <typename Real>
void backward(const BackwardArgs<Real>& a) {
  detail::check_backward_args(a);
  const DeviceTape<Real>& tape = *a.tape;
  const Cell cell = tape.cell();
  const Dims& d = tape.dims();
  const bool has_c = has_cell_state(cell), has_bias = a.weights.b_ih != nullptr;

  const int64_t T = d.T, B = d.B, I = d.I, H = d.H, G = gate_count(cell), GH = G * H, BH = B * H;
  const int64_t width = tape_gate_width(cell) * H;
  const cublasHandle_t blas = cublas_handle(a.tf32);
  DeviceMemory dgx = uninitialized<Real>(T * B * GH);
  DeviceMemory dgh_own;
  if (cell == Cell::GRU) dgh_own = uninitialized<Real>(T * B * GH);
  Real* dgh = cell == Cell::GRU ? dgh_own.as<Real>() : dgx.as<Real>();
  DeviceMemory scratch = uninitialized<Real>(BH);
  copy_or_zero(a.dh0, a.dh_n, BH);  // dh0/dc0 carry the running gradient through the walk
  if (has_c) copy_or_zero(a.dc0, a.dc_n, BH);

  const Real* hs = tape.h_states();
  const Real* cs = tape.c_states();
  for (int64_t s = T - 1; s >= 0; --s) {
    const StepPlan p(s, T, tape.reverse());
    const BackStepIO<Real> io{blas,
                              B,
                              H,
                              p.t,
                              tape.lengths(),
                              a.weights.w_hh,
                              hs + p.read * BH,
                              has_c ? cs + p.read * BH : nullptr,
                              hs + p.write * BH,
                              has_c ? cs + p.write * BH : nullptr,
                              width ? tape.gates() + p.t * B * width : nullptr,
                              a.dy ? a.dy + p.t * B * a.lddy : nullptr,
                              a.lddy,
                              a.dh0,
                              has_c ? a.dc0 : nullptr,
                              dgx.as<Real>() + p.t * B * GH,
                              dgh + p.t * B * GH,
                              scratch.as<Real>()};
    step_backward(cell, io);
  }

  // Weight gradients over all T·B rows at once. The state entering time t sits in slot t
  // (forward) or t+1 (reverse), so the T slots that were read are contiguous.
  const int64_t TB = T * B;
  const Real* h_read = hs + (tape.reverse() ? BH : 0);
  gemm(blas, Op::T, Op::N, GH, I, TB, Real(1), dgx.as<Real>(), GH, a.x, I, Real(0), a.dw_ih, I);
  if (cell == Cell::GRU_RESET_BEFORE) {
    // n's recurrent product reads r⊙h (the tape's fourth block), not h.
    gemm(blas, Op::T, Op::N, 2 * H, H, TB, Real(1), dgh, GH, h_read, H, Real(0), a.dw_hh, H);
    gemm(blas, Op::T, Op::N, H, H, TB, Real(1), dgh + 2 * H, GH, tape.gates() + 3 * H, width,
         Real(0), a.dw_hh + 2 * H * H, H);
  } else {
    gemm(blas, Op::T, Op::N, GH, H, TB, Real(1), dgh, GH, h_read, H, Real(0), a.dw_hh, H);
  }
  DeviceMemory ones;
  if (has_bias) {
    ones = uninitialized<Real>(TB);
    fill(ones.as<Real>(), TB, Real(1));
    column_sums(blas, dgx.as<Real>(), TB, GH, ones.as<Real>(), a.db_ih);
    column_sums(blas, static_cast<const Real*>(dgh), TB, GH, ones.as<Real>(), a.db_hh);
  }
  if (a.dx)
    gemm(blas, Op::N, Op::N, TB, I, GH, Real(1), dgx.as<Real>(), GH, a.weights.w_ih, I,
         Real(0), a.dx, I);
  FR_CUDA_CHECK(cudaStreamSynchronize(0));
}

template void forward<float>(const ForwardArgs<float>&);
template void forward<double>(const ForwardArgs<double>&);
template void backward<float>(const BackwardArgs<float>&);
template void backward<double>(const BackwardArgs<double>&);

}  // namespace cuda
}  // namespace fusedrnn
