// See thread_pool.h for why the kernels have their own threads.
//
// One job is in flight at a time. Its chunks are dealt into one slice per thread, in order
// (the caller's first), and each thread works through its own slice before it helps with the
// others'. So a thread gets the same chunks at every step of a sequence, and what they touch
// (its share of W_hh, of the pre-activations, of the c state) stays in its core's caches from
// step to step. Claimed from one counter, chunks went to whichever thread asked first: GRU
// training T=20 B=16 H=1024 took 35.7-36.8 ms that way and 30.6-31.6 this way, LSTM inference
// T=200 B=16 H=512 34.0-34.6 against 32.6-33.4.
//
// A slice's chunks are claimed through one 64-bit word: the job's sequence number in the high
// half, the slice's next unclaimed chunk in the low half. A thread claims a chunk with a
// compare-and-swap that also proves the job is still the one it read the fields of (every word
// is closed before any field changes), so a worker that wakes late can never run a chunk of a
// finished job. The caller waits only for chunks that were claimed, never for workers that are
// asleep or descheduled. All atomics are sequentially consistent: a few per chunk, each chunk
// microseconds or more.
//
// A job may be the steps of a recurrence (parallel_steps_chunks): each slice then holds its
// thread's blocks of every step, and a chunk may be claimed only once its step is open, every
// chunk of the step before done (done_ counts them). A thread that finds nothing open waits for
// done_ to move, which only a claimed chunk can make it do; a descheduled worker's blocks are
// taken by the threads still running, as in any job. Each step then costs the threads one exchange of done_'s
// line rather than a fork-join: publishing the job, the worker's wake-up, its claim and the
// caller's wait for done_. Alternated in one process on a Zen 5 (both orders of the builds,
// geometric means), against a parallel_for a step: RNN T=200 B=1 H=512 5% faster (inference and
// training), LSTM inference T=200 B=1 H=256 5.6%, H=512 2%, GRU inference H=512 1.7%, LSTM
// training H=512 0.7%; level (within 1%) GRU training T=200 B=1 H=1024, RNN training H=1024,
// LSTM training T=20 B=1 H=1024 and LSTM T=20 B=16 H=512, whose steps are long beside a
// fork-join.
//
// Every thread runs a job's chunks in the caller's floating-point mode (x86: MXCSR's rounding,
// flush-to-zero and denormals-are-zero bits; elsewhere the rounding mode). The mode is each
// thread's own, and a worker left in the one it started with gave a caller that flushes
// denormals (torch.set_flush_denormal(True)) its own rows flushed and the worker's not: results
// that changed with the thread count.
//
// Inside torch, the jobs can run on torch's OpenMP threads instead (share_openmp_threads). After
// each of torch's parallel ops its libgomp workers spin for milliseconds (GOMP_SPINCOUNT), on the
// cores the pool's workers then need: a training loop's LSTM step (T=200, B=16, H=128) took
// 9.5-11.7 ms with torch as installed and 7.2-7.5 with torch's spinning cut short. Run as an
// OpenMP region (GOMP_parallel), a job's chunks go to those spinning threads and no third thread
// competes for the cores: the same step took 6.5-8.0 ms (torch.nn's 8.4-10.0). The claims are
// the same: the region's threads work through the slices as the pool's workers do, and the
// pool's own workers stop meanwhile. An empty job costs about the same either way (0.45-0.49 us
// against 0.33-0.43), but a region ends at a barrier where every thread of the team must
// arrive: a descheduled OpenMP thread stalls the job, as it stalls torch's own ops.
#include "thread_pool.h"

#include <pthread.h>
#include <sched.h>
#if defined(__linux__)
#include <dlfcn.h>
#endif

#include <atomic>
#include <cfenv>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "rnn_common.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FR_CPU_RELAX() _mm_pause()
#else
#define FR_CPU_RELAX() std::this_thread::yield()
#endif

namespace fusedrnn {
namespace cpu {
namespace {

constexpr uint64_t kClosed = 0xFFFFFFFFu;  // low half of a claim word: no chunk may be claimed
// How long an idle worker spins before sleeping: long enough to catch the next step of a
// sequence (microseconds away), short enough not to burn a core between calls.
constexpr int kSpinsBeforeSleep = 20000;
constexpr int kSpinsBeforeYield = 2000;

#if defined(__x86_64__) || defined(__i386__)
constexpr unsigned kFpControlBits = 0xFFC0;  // MXCSR less its exception flags (bits 0-5)
unsigned fp_mode() { return _mm_getcsr() & kFpControlBits; }
void set_fp_mode(unsigned mode) { _mm_setcsr((_mm_getcsr() & ~kFpControlBits) | mode); }
#else
unsigned fp_mode() { return static_cast<unsigned>(std::fegetround()); }
void set_fp_mode(unsigned mode) { std::fesetround(static_cast<int>(mode)); }
#endif

// Puts the calling thread in floating-point mode `mode` for its lifetime, if it is not already.
class FpModeScope {
 public:
  explicit FpModeScope(unsigned mode) : outer_(fp_mode()), changed_(mode != outer_) {
    if (changed_) set_fp_mode(mode);
  }
  ~FpModeScope() {
    if (changed_) set_fp_mode(outer_);
  }
  FpModeScope(const FpModeScope&) = delete;
  FpModeScope& operator=(const FpModeScope&) = delete;

 private:
  const unsigned outer_;
  const bool changed_;
};

// GNU libgomp's entry points (also LLVM libomp's, which provides them for GCC's code).
struct OpenMpRuntime {
  void (*parallel)(void (*fn)(void*), void* data, unsigned threads, unsigned flags) = nullptr;
  int (*thread_num)() = nullptr;
};

thread_local bool inside_chunk = false;  // nested loops run on the calling thread

// Marks the calling thread as running a chunk for its lifetime (restored if the chunk throws).
struct InsideChunk {
  bool outer = inside_chunk;
  InsideChunk() { inside_chunk = true; }
  ~InsideChunk() { inside_chunk = outer; }
};
std::atomic<bool> forked_child{false};   // a fork()ed child has no workers: run inline

int available_cores() {
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return CPU_COUNT(&set);
#endif
  const unsigned n = std::thread::hardware_concurrency();
  return n ? static_cast<int>(n) : 1;
}

class Pool {
 public:
  Pool() : threads_(available_cores()) {
    pthread_atfork(nullptr, nullptr, [] { forked_child = true; });
  }

  int threads() const { return threads_; }

  void set_threads(int threads) {
    std::lock_guard<std::mutex> lock(busy_);
    stop_workers();
    threads_ = threads;
  }

  // The pool's own workers stop while another runtime's threads run the jobs.
  void share(const OpenMpRuntime& runtime) {
    std::lock_guard<std::mutex> lock(busy_);
    stop_workers();
    openmp_ = runtime;
    sharing_ = runtime.parallel != nullptr;
  }

  // Without busy_: build_info() asks, and a job may hold busy_ for a whole call.
  bool sharing() const { return sharing_.load(); }

  // Chunks s * blocks + i for steps s and blocks i, each step after the one before.
  void run(int64_t steps, int64_t blocks, ChunkFn fn, const void* ctx) {
    const int64_t chunks = steps * blocks;
    if (chunks <= 0) return;
    const auto run_here = [&] {
      const InsideChunk inside;
      for (int64_t i = 0; i < chunks; ++i) fn(ctx, i);
    };
    // A loop inside a chunk runs here before busy_ is tried: the calling thread of the outer
    // loop holds it, and try_lock on a mutex the thread owns is undefined behaviour.
    if (inside_chunk) return run_here();
    std::unique_lock<std::mutex> lock(busy_, std::try_to_lock);
    if (threads_ == 1 || forked_child || !lock.owns_lock()) return run_here();
    if (openmp_.parallel) {
      if (slices_.size() != static_cast<std::size_t>(threads_))  // (no workers: see share)
        slices_ = std::vector<Slice>(threads_);
    } else if (workers_.empty()) {
      start_workers();
    }
    // Publish: close claiming, write the job, reopen claiming under the next sequence number.
    const uint64_t seq = (slices_[0].claim.load() >> 32) + 1;
    for (Slice& slice : slices_) slice.claim.store(seq << 32 | kClosed);
    fn_.store(fn);
    ctx_.store(ctx);
    fp_mode_.store(fp_mode());
    steps_.store(steps);
    blocks_.store(blocks);
    done_.store(0);
    // Slice 0 last: a worker that finds it open finds every slice open and the fields written.
    for (auto slice = slices_.rbegin(); slice != slices_.rend(); ++slice)
      slice->claim.store(seq << 32);
    if (openmp_.parallel) {
      // The region's threads claim as the workers would, the caller as thread 0. Its team is
      // the runtime's own size (0: torch.set_num_threads'): one of another size would make
      // libgomp end or start threads at every switch between torch's ops and ours. noexcept:
      // an exception unwinding through GOMP_parallel would leave the runtime's team broken.
      struct Region {
        Pool* pool;
        uint64_t seq;
      } region{this, seq};
      openmp_.parallel(
          [](void* p) noexcept {
            const Region& r = *static_cast<const Region*>(p);
            r.pool->work_on(r.seq, r.pool->openmp_.thread_num() % r.pool->threads_);
          },
          &region, 0, 0);
    } else {
      generation_.fetch_add(1);
      if (sleepers_.load() > 0) {
        std::lock_guard<std::mutex> sleep_lock(sleep_mutex_);
        wake_.notify_all();
      }
      work_on(seq, 0);
    }
    for (int spins = 0; done_.load() < chunks; ++spins) {
      if (spins < kSpinsBeforeYield) FR_CPU_RELAX();
      else std::this_thread::yield();
    }
  }

 private:
  // Slice j holds blocks [first(j), first(j + 1)) of every step: its n-th chunk is block
  // first(j) + n % size of step n / size.
  int64_t slice_start(int64_t blocks, int64_t j) const { return blocks * j / threads_; }

  // Claims and runs chunks of job `seq` until none is left (or the job is not `seq` any more):
  // those of slice `home` first, then each other slice's in turn, each chunk only once its step
  // is open (every chunk of the steps before it done). A thread that finds nothing open waits
  // for a chunk that another thread has claimed, never for one nobody has.
  void work_on(uint64_t seq, int home) {
    const ChunkFn fn = fn_.load();
    const void* ctx = ctx_.load();
    const int64_t steps = steps_.load(), blocks = blocks_.load();
    const FpModeScope caller_mode(fp_mode_.load());
    for (;;) {
      // One reading of done_ a pass: a step that opens mid-pass is taken from home first.
      // (A job of one step is all open: no reading of the line every chunk's end writes.)
      const int64_t done = steps > 1 ? done_.load() : 0;
      bool waiting = false, ran = false;
      for (int s = 0; s < threads_ && !ran; ++s) {
        const int j = (home + s) % threads_;
        const int64_t first = slice_start(blocks, j), size = slice_start(blocks, j + 1) - first;
        std::atomic<uint64_t>& word = slices_[j].claim;
        uint64_t claim = word.load();
        for (;;) {
          if (claim >> 32 != seq) return;
          // (A closed word of this job cannot be met: slice 0, from which the job was taken,
          // opened last.)
          const int64_t next = static_cast<int64_t>(claim & 0xFFFFFFFFu);
          if (next >= size * steps) break;
          const int64_t step = next / size;
          if (done < step * blocks) {
            waiting = true;
            break;
          }
          if (!word.compare_exchange_weak(claim, claim + 1)) continue;  // claim was reloaded
          {
            const InsideChunk inside;
            fn(ctx, step * blocks + first + next % size);
          }
          done_.fetch_add(1);
          // After a chunk of a job of steps the pass starts again from home, whose block of
          // the next step comes first; a job of one step goes on in this slice.
          if (steps > 1) {
            ran = true;
            break;
          }
          claim = word.load();
        }
      }
      if (ran) continue;
      if (!waiting) return;
      // (Or until the job is over: a thread that missed every count in between, descheduled,
      // must not wait on the next job's done_ coming back to the same count.)
      for (int spins = 0; done_.load() == done && slices_[home].claim.load() >> 32 == seq;
           ++spins) {
        if (spins < kSpinsBeforeYield) FR_CPU_RELAX();
        else std::this_thread::yield();
      }
    }
  }

  void worker_loop(int home) {
    uint64_t seen = generation_.load();
    for (;;) {
      uint64_t now = generation_.load();
      for (int spins = 0; now == seen && spins < kSpinsBeforeSleep && !stop_.load(); ++spins) {
        FR_CPU_RELAX();
        now = generation_.load();
      }
      if (now == seen) {
        std::unique_lock<std::mutex> sleep_lock(sleep_mutex_);
        sleepers_.fetch_add(1);
        wake_.wait(sleep_lock, [&] { return generation_.load() != seen || stop_.load(); });
        sleepers_.fetch_sub(1);
        now = generation_.load();
      }
      if (stop_.load()) return;
      seen = now;
      // A job is taken only from an open slice 0: its fields were all written before. A closed
      // one is a job being published, whose fields may still be its predecessor's; the
      // generation moves on once it is open. The fields read in work_on then belong to the
      // sequence number read here, or the compare-and-swap fails: the claim words change before
      // any field does.
      const uint64_t word = slices_[0].claim.load();
      if ((word & 0xFFFFFFFFu) != kClosed) work_on(word >> 32, home);
    }
  }

  void start_workers() {
    stop_ = false;
    slices_ = std::vector<Slice>(threads_);
    for (int i = 1; i < threads_; ++i) {
      workers_.emplace_back([this, i] { worker_loop(i); });
#if defined(__linux__)
      pthread_setname_np(workers_.back().native_handle(), "fusedrnn-pool");  // for top -H
#endif
    }
  }

  void stop_workers() {
    {
      std::lock_guard<std::mutex> sleep_lock(sleep_mutex_);
      stop_ = true;
      wake_.notify_all();
    }
    for (auto& w : workers_) w.join();
    workers_.clear();
  }

  std::mutex busy_;  // held by the one caller whose job is in flight
  int threads_;
  OpenMpRuntime openmp_;  // whose threads run the jobs, if set (under busy_)
  std::atomic<bool> sharing_{false};  // openmp_ is set
  std::vector<std::thread> workers_;
  // One claim word per thread, a cache line each: the chunks of a job are dealt into one
  // slice per thread, the caller's first.
  struct alignas(64) Slice {
    std::atomic<uint64_t> claim{0};
  };
  std::vector<Slice> slices_;
  std::atomic<ChunkFn> fn_{nullptr};
  std::atomic<const void*> ctx_{nullptr};
  std::atomic<int64_t> steps_{0};
  std::atomic<int64_t> blocks_{0};
  std::atomic<unsigned> fp_mode_{0};
  std::atomic<int64_t> done_{0};
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
  std::mutex sleep_mutex_;
  std::condition_variable wake_;
};

// Never destroyed: workers may be parked when the process exits, and joining them from a
// static destructor (after the interpreter has torn down) can hang. The OS reclaims them.
Pool& pool() {
  static Pool* p = new Pool();
  return *p;
}

}  // namespace

int pool_threads() { return pool().threads(); }

bool share_openmp_threads(const char* library_path) {
  if (!library_path || !*library_path) {
    pool().share({});
    return true;
  }
#if defined(__linux__)
  // RTLD_NOLOAD: only a runtime the process has loaded; never a second one of our own. The
  // handle is kept open: the runtime must outlive every job.
  void* library = dlopen(library_path, RTLD_NOW | RTLD_NOLOAD);
  if (!library) return false;
  OpenMpRuntime runtime;
  runtime.parallel = reinterpret_cast<decltype(runtime.parallel)>(
      dlsym(library, "GOMP_parallel"));
  runtime.thread_num = reinterpret_cast<decltype(runtime.thread_num)>(
      dlsym(library, "omp_get_thread_num"));
  if (!runtime.parallel || !runtime.thread_num) {
    dlclose(library);
    return false;
  }
  pool().share(runtime);
  return true;
#else
  return false;
#endif
}

bool sharing_openmp_threads() { return pool().sharing(); }

bool inside_parallel_loop() { return inside_chunk; }

void set_pool_threads(int threads) {
  if (threads < 1 || threads > 1024)
    detail::fail("threads: expected 1..1024, got " + std::to_string(threads));
  pool().set_threads(threads);
}

void parallel_for_chunks(int64_t chunks, ChunkFn fn, const void* ctx) {
  if (chunks >= static_cast<int64_t>(kClosed))
    detail::fail("parallel_for: expected fewer than 2^32-1 chunks, got " + std::to_string(chunks));
  pool().run(1, chunks, fn, ctx);
}

void parallel_steps_chunks(int64_t steps, int64_t blocks, ChunkFn fn, const void* ctx) {
  if (steps < 0 || blocks < 0 || (blocks > 0 && steps >= static_cast<int64_t>(kClosed) / blocks))
    detail::fail("parallel_steps: expected fewer than 2^32-1 chunks, got " +
                 std::to_string(steps) + " steps of " + std::to_string(blocks) + " blocks");
  pool().run(steps, blocks, fn, ctx);
}

}  // namespace cpu
}  // namespace fusedrnn
