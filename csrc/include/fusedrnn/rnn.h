// fusedrnn C++ API: one layer, one direction of an LSTM, GRU or vanilla RNN, forward and
// backpropagation through time, on the CPU.
//
// Conventions (PyTorch's):
//   T time steps, B batch rows, I input features, H hidden units, G gates (LSTM 4, GRU 3, RNN 1).
//   Sequences are time-major: x[t, b, i] lives at x[(t * B + b) * I + i].
//   Weights are PyTorch's: w_ih [G*H, I], w_hh [G*H, H], b_ih [G*H], b_hh [G*H], gate blocks in
//   order (i, f, g, o) for LSTM and (r, z, n) for GRU.
//   lengths (optional) follow PackedSequence: row b is valid for t < lengths[b]; outputs past it
//   are 0, its final state is the state after its last valid step, and the reverse direction
//   starts at its last valid step.
//
// Every entry point validates its arguments and throws std::invalid_argument with a message
// naming the argument; nothing is written before validation succeeds. All pointers are to
// contiguous host memory the caller owns; the functions keep none of them after returning.
//
// Use (examples/cpp/lstm_example.cpp is a complete program):
//
//   fusedrnn::ForwardArgs<float> f;             // fill dims, x, weights, y/ldy, h_n (and c_n)
//   fusedrnn::Tape<float> tape(f.cell, f.dims, f.reverse, f.lengths);
//   f.tape = &tape;                             // training; leave nullptr for inference
//   fusedrnn::forward(f);
//   fusedrnn::BackwardArgs<float> b;            // tape, the same x and weights, dy, outputs
//   b.tape = &tape;
//   fusedrnn::backward(b);
//
// Installed as a CMake package: find_package(fusedrnn) and
// target_link_libraries(app fusedrnn::fusedrnn) (C++17, links OpenBLAS from scipy-openblas32
// and the platform's threads). set_num_threads sets the kernels' threads for the whole process.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace fusedrnn {

enum class Cell : int {
  LSTM = 0,
  GRU = 1,               // reset gate applied after the recurrent product (PyTorch, cuDNN)
  GRU_RESET_BEFORE = 2,  // reset gate applied before it (Cho et al. 2014)
  RNN_TANH = 3,
  RNN_RELU = 4,
};

const char* cell_name(Cell cell);
int gate_count(Cell cell);          // G
bool has_cell_state(Cell cell);     // LSTM's c
int tape_gate_width(Cell cell);     // values per hidden unit per row that the tape keeps

struct Dims {
  int64_t T = 0, B = 0, I = 0, H = 0;
};

template <typename T>
struct Weights {
  const T* w_ih = nullptr;  // [G*H, I]
  const T* w_hh = nullptr;  // [G*H, H]
  const T* b_ih = nullptr;  // [G*H], or nullptr for a layer without bias
  const T* b_hh = nullptr;  // [G*H], or nullptr for a layer without bias
};

// What a training forward keeps for backward. Its size in bytes is
//   sizeof(T) * ((T+1)·B·H · (1 + [LSTM]) + T·B·H · tape_gate_width) + 8·B (with lengths),
// i.e. for float32: LSTM 24·T·B·H, GRU 20·T·B·H, RNN 4·T·B·H bytes (plus one state slot).
//
// h_states holds T+1 slots of [B, H]; slot k is the state between time positions k-1 and k: the
// forward direction reads slot t and writes slot t+1 at step t, the reverse direction reads slot
// t+1 and writes slot t. c_states likewise for LSTM. gates holds [T, B, tape_gate_width*H]:
//   LSTM (i, f, g, o) activated; GRU (r, z, n) activated and hn = W_hn·h + b_hn;
//   GRU_RESET_BEFORE (r, z, n) activated and r⊙h; RNN nothing (h_states suffices).
//
// A tape either owns its buffers or views buffers its caller owns: a framework binding keeps
// them as the framework's own arrays between forward and backward (TapeBuffers).
template <typename T>
struct TapeBuffers {
  T* h_states = nullptr;  // [T+1, B, H]
  T* c_states = nullptr;  // [T+1, B, H] for LSTM, else nullptr
  T* gates = nullptr;     // [T, B, tape_gate_width*H], nullptr when that width is 0
};

template <typename T>
class Tape {
 public:
  // Allocates its own buffers.
  Tape(Cell cell, const Dims& dims, bool reverse, const int64_t* lengths);
  // Views `buffers`, which must outlive the tape; throws std::invalid_argument when a buffer
  // the cell needs is null or one it does not use is given. lengths are copied.
  Tape(Cell cell, const Dims& dims, bool reverse, const int64_t* lengths,
       const TapeBuffers<T>& buffers);
  // A tape's own buffers are kept for the next tape (release_memory() frees them).
  ~Tape();
  Tape(const Tape&) = delete;
  Tape& operator=(const Tape&) = delete;

  Cell cell() const { return cell_; }
  const Dims& dims() const { return dims_; }
  bool reverse() const { return reverse_; }
  const int64_t* lengths() const { return lengths_.empty() ? nullptr : lengths_.data(); }
  std::size_t bytes() const;
  static std::size_t bytes_for(Cell cell, const Dims& dims, bool with_lengths);

  T* h_states() { return buffers_.h_states; }
  T* c_states() { return buffers_.c_states; }
  T* gates() { return buffers_.gates; }
  const T* h_states() const { return buffers_.h_states; }
  const T* c_states() const { return buffers_.c_states; }
  const T* gates() const { return buffers_.gates; }

 private:
  Cell cell_;
  Dims dims_;
  bool reverse_;
  std::vector<int64_t> lengths_;
  std::unique_ptr<unsigned char[]> owned_;  // the buffers, when the tape allocated them
  std::size_t owned_bytes_ = 0;             // that block's size
  TapeBuffers<T> buffers_;
};

// Memory for an output of a call (y, dx, a weight gradient), uninitialised. Dropped, its block
// is kept for a later output as a dropped tape's is (release_memory() frees them): a training
// loop drops and allocates the same outputs at every step, and fresh memory is faulted in and
// cleared page by page. From glibc's first mmap threshold (128 KB) up, malloc keeps them no
// better: it hands its heap's free top back to the system once that reaches twice the largest
// block it has unmapped, and a step's y and dx, dropped together, are two such blocks. In fresh
// processes, GRU and RNN training T=200 B=128 H=32 (two 3.3 MB outputs) faulted 1568 pages a
// step, LSTM training T=200 B=16 H=128 (1.6 MB) 842, T=50 (410 KB) 196, and a 2-layer
// bidirectional one 4592. Smaller outputs come from malloc's heap, which keeps them.
// The data start on a cache line, so that the rows of a large weight gradient do too: the
// product that writes one streams its lines whole (chunk_product.h's streams_c).
class OutputBuffer {
 public:
  static constexpr std::size_t kMinKeptOutputBytes = std::size_t{128} << 10;
  static constexpr std::size_t kAlignment = 64;
  explicit OutputBuffer(std::size_t bytes);
  ~OutputBuffer();
  OutputBuffer(const OutputBuffer&) = delete;
  OutputBuffer& operator=(const OutputBuffer&) = delete;
  void* data() const {
    const auto address = reinterpret_cast<std::uintptr_t>(block_.get());
    return block_.get() + (kAlignment - address % kAlignment) % kAlignment;
  }

 private:
  std::size_t capacity_ = 0;  // before block_: block_'s initialiser sets it
  std::unique_ptr<unsigned char[]> block_;
};

template <typename T>
struct ForwardArgs {
  Cell cell = Cell::LSTM;
  Dims dims;
  bool reverse = false;
  const T* x = nullptr;              // [T, B, I]
  const T* h0 = nullptr;             // [B, H], nullptr means zeros
  const T* c0 = nullptr;             // [B, H] (LSTM only), nullptr means zeros
  Weights<T> weights;
  const int64_t* lengths = nullptr;  // [B] in [1, T], or nullptr: every row has length T
  T* y = nullptr;                    // [T, B, *]: y[t, b, j] at y[(t * B + b) * ldy + j]
  int64_t ldy = 0;                   // row stride of y, >= H (2H writes one half of a BiRNN)
  T* h_n = nullptr;                  // [B, H] final hidden state
  T* c_n = nullptr;                  // [B, H] final cell state (LSTM only)
  Tape<T>* tape = nullptr;           // training: filled for backward; nullptr: inference
};

template <typename T>
struct BackwardArgs {
  const Tape<T>* tape = nullptr;     // from a training forward with the same x and weights
  const T* x = nullptr;              // [T, B, I]
  Weights<T> weights;
  const T* dy = nullptr;             // [T, B, *] with row stride lddy, or nullptr (zeros)
  int64_t lddy = 0;
  const T* dh_n = nullptr;           // [B, H] gradient of the final state, or nullptr (zeros)
  const T* dc_n = nullptr;           // [B, H] (LSTM only), or nullptr (zeros)
  T* dx = nullptr;                   // [T, B, I], or nullptr: not computed (saves a GEMM)
  T* dh0 = nullptr;                  // [B, H]
  T* dc0 = nullptr;                  // [B, H] (LSTM only)
  T* dw_ih = nullptr;                // [G*H, I]
  T* dw_hh = nullptr;                // [G*H, H]
  T* db_ih = nullptr;                // [G*H], required when weights have biases
  T* db_hh = nullptr;                // [G*H], required when weights have biases
};

// One layer, one direction. float and double are instantiated.
template <typename T>
void forward(const ForwardArgs<T>& args);
template <typename T>
void backward(const BackwardArgs<T>& args);

// Two independent calls, such as a bidirectional layer's two directions: neither may write
// memory the other reads or writes (y may be two halves of one array's rows). The same results,
// bit for bit, as forward(a) then forward(b). Where each call's steps are too small to share
// among the threads (small weights, a batch of a few rows), the two run side by side, one
// thread each; else one after the other. Both are checked before either runs.
template <typename T>
void forward_pair(const ForwardArgs<T>& a, const ForwardArgs<T>& b);
template <typename T>
void backward_pair(const BackwardArgs<T>& a, const BackwardArgs<T>& b);

// Description of the compiled library, for `fusedrnn info`.
struct BuildInfo {
  const char* compiler;
  const char* simd;       // SIMD code the pointwise passes run on this CPU
  const char* recurrent;  // kernel of float's recurrent products: "avx2+fma" or "portable"
  const char* blas;       // BLAS configuration string (OpenBLAS runs single-threaded)
  int threads;            // the kernels' threads (set_num_threads)
  bool openmp_threads;    // whether they are an OpenMP runtime's (share_openmp_threads)
};
BuildInfo build_info();
// Threads for the kernels' GEMMs and pointwise passes, the caller's included; results do not
// depend on it. Default: the cores this process may use.
void set_num_threads(int threads);
// Runs the kernels' parallel loops on the threads of an OpenMP runtime the process has already
// loaded (GNU libgomp's entry points, at `library_path`, such as torch's) rather than on fusedrnn's
// own: inside a program whose OpenMP threads spin between its parallel regions, no third thread
// then competes for the cores. The runtime's number of threads then sets how many run. "" goes
// back to fusedrnn's own threads. Returns false, changing nothing, where the library is not
// loaded or lacks the entry points. Results do not change.
bool share_openmp_threads(const char* library_path);
// Frees the scratch memory the calling thread keeps between calls (the input projection and gate
// gradients of its largest call, up to 256 MB; and that of the second call of a pair run side by
// side) and the memory of dropped tapes and outputs kept for the next ones (up to 32 blocks
// each, 8 of them of 4 MB or more): the next calls allocate them again.
void release_memory();
// The blocks and bytes of dropped tapes and of dropped outputs kept now for the next ones, and
// how many blocks tapes and outputs have taken fresh from the system since the process began.
struct KeptMemoryNow {
  int64_t tape_blocks = 0, tape_bytes = 0, tape_fresh = 0;
  int64_t output_blocks = 0, output_bytes = 0, output_fresh = 0;
};
KeptMemoryNow kept_memory();

// The GEMM ceiling of this machine as the kernels' BLAS reaches it, with its current threads:
// the median GFLOP/s of `repeats` products of two n×n matrices (after one warm-up product).
// What `fusedrnn bench` measures every case against.
double gemm_gflops(bool double_precision, int64_t n, int repeats);

// The read bandwidth of this machine for a buffer of `bytes` (4096..2^34), each of the kernels'
// threads summing its share: the median GB/s of `repeats` timings (after one warm-up read).
// What `fusedrnn bench` measures a case's W_hh against (its steps read all of it).
double read_gbps(int64_t bytes, int repeats);

// The round trip of a cache line between two threads on the first two CPUs this process may run
// on, one writing it and the other answering: the median ns of `repeats` timings of 1000 trips,
// or NaN where the process has one CPU, or where threads cannot be pinned (pinning fails, or
// not Linux). What `fusedrnn bench` sets beside a case: on a 2-CPU cloud VM, whose two vCPUs
// sometimes share an L3 (60-130 ns) and sometimes do not (280-400), it says which kind of
// spell the case ran in; every step whose threads read what the other wrote pays for the second.
// (On larger machines the first two CPUs need not be where the kernels' threads run.)
double core_round_trip_ns(int repeats);

}  // namespace fusedrnn
