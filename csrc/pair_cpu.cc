// Two independent calls (a bidirectional layer's directions) side by side, one thread each,
// where neither's steps can be shared among the threads to any profit.
//
// A step of a small model is a few microseconds of work. Cut over two threads it waits at a
// fork-join every step, or runs on one thread while the other spins. Given a call each, the
// threads wait nowhere. Alternated in one process on a Zen 5 (two cores), bidirectional, T=200:
// LSTM B=1 H=128 training 1.59-1.63x as fast, inference 1.75x; B=4 training 1.22-1.98x, B=7
// 1.26-1.66x; GRU B=4 training 1.50-1.58x; RNN B=1 H=256 1.79x. Where the threads walk the batch
// in row blocks without a fork-join (LSTM B=16 H=128) a prototype ran side by side 0.97x as fast
// in a fast spell of this machine, 1.12x in a slow one; with more weights it lost: H=256 B=4
// 0.93x, B=1 H=1024 0.64x (two W_hh streaming from one L3).
#include <exception>
#include <initializer_list>
#include <string>

#include "cells_cpu.h"
#include "cpu_isa.h"
#include "fusedrnn/rnn.h"
#include "rnn_common.h"
#include "thread_pool.h"
#include "workspace.h"

namespace fusedrnn {
namespace {

// Whether a call runs better on one thread beside another call than on all the threads: its
// weights fit in half a core's L2 (so each thread keeps its own call's there), and its batch has
// fewer rows than two of the recurrent tile's, too few for two row blocks to walk the sequence
// apart (cells_cpu.h's row_blocks), so that every step forks and joins across the threads, or
// runs on one. (A rule of thumb: the tile's rows are those of the forward's packed h·W_hhᵀ,
// whatever product the call then takes.) And it is worth handing to a thread at all: at least a
// step block's flops (cells_cpu.h's kStepBlockFlops). Below, waking the other thread costs more
// than it saves: LSTM training T=1 B=1 H=32 ran 10% slower side by side, T=20 level.
template <typename T>
bool runs_best_on_one_thread(Cell cell, const Dims& d) {
  const int64_t weights = gate_count(cell) * d.H * (d.I + d.H);
  const int64_t tile_rows = cpu::RecurrentProduct<T>::row_step(
      cpu::StepProducts<T>::main_shape(cell, d.H, true), true);
  const double flops = 2.0 * double(d.T) * double(d.B) * double(weights);  // a forward's
  return weights * int64_t{sizeof(T)} <= cpu::l2_cache_bytes() / 2 && d.B < 2 * tile_rows &&
         flops >= cpu::kStepBlockFlops;
}

// run(a), run(b): side by side where `side_by_side` and the pool has two threads or more, as
// one job of two chunks. The pool serves that job alone until both calls end: meanwhile another
// thread's calls run on their own thread (thread_pool.h). Nested parallel loops run inline on
// the thread of their call, and no result depends on the threads that compute it, so the bits
// are those of one call after the other.
template <typename Args, typename Run>
void run_pair(const Args& a, const Args& b, bool side_by_side, const Run& run) {
  if (!side_by_side || cpu::pool_threads() < 2) {
    run(a);
    run(b);
    return;
  }
  // A call on the calling thread takes its block, as any call; one on a pool worker takes a
  // side block of its own, which release_memory() reaches and no other call on a worker wants.
  cpu::ScratchBlock& caller_block = cpu::this_thread_block();
  std::exception_ptr failed[2];
  cpu::parallel_for(2, [&](int64_t i) {
    const bool on_caller = &cpu::this_thread_block() == &caller_block;
    const cpu::LentBlock lent(on_caller ? caller_block : cpu::side_block(static_cast<int>(i)));
    try {
      run(i == 0 ? a : b);
    } catch (...) {  // a worker must not throw: rethrown on the calling thread below
      failed[i] = std::current_exception();
    }
  });
  for (const std::exception_ptr& e : failed)
    if (e) std::rethrow_exception(e);
}

// The outputs of two calls that would run at once must be apart; the C++ API takes pointers and
// can only check that no two are the same (y's halves of one array are the glue's to check).
struct OutputPair {
  const char* name;
  const void* a;
  const void* b;
};

void check_apart(std::initializer_list<OutputPair> outputs) {
  for (const OutputPair& o : outputs)
    if (o.a && o.a == o.b)
      detail::fail(std::string(o.name) + ": expected the two calls' own outputs, got one array "
                   "for both");
}

}  // namespace

template <typename Real>
void forward_pair(const ForwardArgs<Real>& a, const ForwardArgs<Real>& b) {
  detail::check_forward_args(a, a.lengths);
  detail::check_forward_args(b, b.lengths);
  check_apart({{"y", a.y, b.y}, {"h_n", a.h_n, b.h_n}, {"c_n", a.c_n, b.c_n},
               {"tape", a.tape, b.tape}});
  const bool side_by_side = runs_best_on_one_thread<Real>(a.cell, a.dims) &&
                            runs_best_on_one_thread<Real>(b.cell, b.dims);
  run_pair(a, b, side_by_side, [](const ForwardArgs<Real>& args) { forward(args); });
}

template <typename Real>
void backward_pair(const BackwardArgs<Real>& a, const BackwardArgs<Real>& b) {
  detail::check_backward_args(a);
  detail::check_backward_args(b);
  check_apart({{"dx", a.dx, b.dx}, {"dh0", a.dh0, b.dh0}, {"dc0", a.dc0, b.dc0},
               {"dw_ih", a.dw_ih, b.dw_ih}, {"dw_hh", a.dw_hh, b.dw_hh},
               {"db_ih", a.db_ih, b.db_ih}, {"db_hh", a.db_hh, b.db_hh}});
  const bool side_by_side = runs_best_on_one_thread<Real>(a.tape->cell(), a.tape->dims()) &&
                            runs_best_on_one_thread<Real>(b.tape->cell(), b.tape->dims());
  run_pair(a, b, side_by_side, [](const BackwardArgs<Real>& args) { backward(args); });
}

template void forward_pair<float>(const ForwardArgs<float>&, const ForwardArgs<float>&);
template void forward_pair<double>(const ForwardArgs<double>&, const ForwardArgs<double>&);
template void backward_pair<float>(const BackwardArgs<float>&, const BackwardArgs<float>&);
template void backward_pair<double>(const BackwardArgs<double>&, const BackwardArgs<double>&);

}  // namespace fusedrnn
