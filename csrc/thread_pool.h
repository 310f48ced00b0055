// The threads of the CPU kernels. OpenBLAS runs single-threaded; every parallel loop (GEMM
// blocks, pointwise rows) goes through parallel_for here, which hands out fixed chunks to its
// threads, the calling thread included: each thread the same chunks every time it can (see the
// .cc), the rest to whichever thread is free.
//
// Why not OpenBLAS's own threads: a recurrent step is a small GEMM, and OpenBLAS's fork-join
// waits for every worker. When another process holds a core, a descheduled worker stalls each
// step for a whole scheduler time slice (seen here: a GRU step 100x slower on a loaded 2-core
// machine). Here the caller takes every chunk nobody else has claimed, so a missing worker
// slows a step down to one thread's speed, not to a time slice.
//
// Chunk boundaries depend on the problem's sizes only, never on which thread runs a chunk, and
// on the thread count in one place only, where the cut changes no bit (cells_cpu.h's walk of a
// W_hh read from L3), so results are bitwise identical whatever the threads.
#pragma once

#include <cstdint>

namespace fusedrnn {
namespace cpu {

// Threads that run parallel loops, the caller included (>= 1). Defaults to the cores this
// process may use.
int pool_threads();
void set_pool_threads(int threads);

using ChunkFn = void (*)(const void* ctx, int64_t chunk);

// Runs fn(ctx, i) once for every i in [0, chunks) and returns when all have run. Safe to call
// from several threads at once (a call that finds the pool busy runs its chunks itself) and
// from inside a chunk (the inner loop runs on the calling thread). fn must not throw: a chunk
// that can fails by storing its exception for the caller (pair_cpu.cc's run_pair).
void parallel_for_chunks(int64_t chunks, ChunkFn fn, const void* ctx);

// Runs fn(ctx, s * blocks + i) once for every step s in [0, steps) and block i in [0, blocks),
// each step's blocks only once every block of the step before has returned, and returns when
// all have run: the steps of a recurrence in one job, each thread working through its own
// blocks of step after step (the same blocks as parallel_for_chunks(blocks) would deal it), so
// that no step pays a fork-join. Otherwise as parallel_for_chunks.
void parallel_steps_chunks(int64_t steps, int64_t blocks, ChunkFn fn, const void* ctx);

// Whether the calling thread is running a chunk of a parallel loop, where a loop runs inline.
bool inside_parallel_loop();

// Runs the pool's jobs on the threads of the OpenMP runtime (GNU libgomp's entry points) at
// `library_path`, which the process must have loaded already (torch's), instead of on the pool's
// own workers; "" goes back to them. A job's team is then the runtime's (its number of threads,
// torch.set_num_threads'), its chunks dealt as for pool_threads() threads. False, and nothing
// changed, where that library is not loaded or lacks the entry points. See the .cc for why.
bool share_openmp_threads(const char* library_path);
bool sharing_openmp_threads();

template <typename F>
void parallel_for(int64_t chunks, const F& body) {
  if (chunks == 1) return body(int64_t{0});
  parallel_for_chunks(
      chunks, [](const void* ctx, int64_t i) { (*static_cast<const F*>(ctx))(i); }, &body);
}

// body(step, block) for every step in [0, steps) and block in [0, blocks), as
// parallel_steps_chunks runs them.
template <typename F>
void parallel_steps(int64_t steps, int64_t blocks, const F& body) {
  struct Context {
    const F* body;
    int64_t blocks;
  } context{&body, blocks};
  parallel_steps_chunks(
      steps, blocks,
      [](const void* ctx, int64_t chunk) {
        const Context& c = *static_cast<const Context*>(ctx);
        (*c.body)(chunk / c.blocks, chunk % c.blocks);
      },
      &context);
}

}  // namespace cpu
}  // namespace fusedrnn
