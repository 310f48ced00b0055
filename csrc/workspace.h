// Scratch memory of the CPU drivers, kept by each calling thread for its next call.
//
// A training step of a mid-sized model allocates tens of MB of buffers that live for one call.
// Fresh from the system, every page costs a fault and a clearing (a tenth of an LSTM step at
// T=100, B=64, H=256 here), and whether malloc hands the same pages back next time depends on
// its heuristics. The drivers' own scratch (input projection, gate gradients) comes from here:
// one block per calling thread (and two for the calls of a pair that pool workers run, see
// pair_cpu.cc), grown to the largest call and reused. A block above kMaxRetainedBytes is freed
// when its call ends, so one huge call does not pin its memory.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <mutex>

namespace fusedrnn {
namespace cpu {

// Asks the kernel to back the whole pages of [p, p + bytes) with huge pages (Linux, blocks of
// 4 MB or more; elsewhere a no-op), before they are first touched. For a block written once and
// then freed, like a training tape: a fresh 4 KB page costs a fault, and the faults of a large
// tape (LSTM T=200 B=128 H=512: 315 MB) took 6.6% of a training step, both threads queueing on
// the kernel's page-table locks. NumPy does the same for its arrays of 4 MB or more, and like
// its NUMPY_MADVISE_HUGEPAGE=0, FUSEDRNN_MADVISE_HUGEPAGE=0 turns it off: on a host with
// fragmented memory a huge-page fault may wait for the kernel to compact memory.
void advise_huge_pages(void* p, std::size_t bytes);

// Blocks of memory dropped by one kind of buffer, kept for the next buffers of that kind:
// tapes, and a call's large outputs (y and dx, [T, B, *]). A training loop allocates the same
// buffers at every step, and memory fresh from the system is faulted in and cleared page by
// page: on this machine's VM, whose freed pages go back to the host within a second or so, at
// 0.5 to 1 GB/s, so that a 2-layer LSTM training step at T=200, B=128, H=512 (two tapes of
// 315 MB) took 2.27 s, against 1.76 s with the tapes' memory reused, and an LSTM inference at
// T=200, B=128, H=1024 931 ms against 863 with its 100 MB y's. At most kMaxKept blocks are
// kept, kMaxKeptLarge of them of kLargeBytes or more, the least recently dropped freed first;
// fusedrnn.release_memory() frees them all. A buffer takes a kept block at most twice its size;
// when none fits (the sizes changed), all are freed before a fresh block is allocated, so kept
// memory is never held beside fresh memory: it raises no step's peak above the previous step's.
// A training step of a 2-layer bidirectional LSTM drops 14 outputs (2 joined y's, and dx, dW_ih
// and dW_hh of each layer and direction), and each missing block would free all the others:
// hence room for 32, but for only 8 large ones, so that a program dropping many large buffers at
// once (a list of 100 MB outputs) keeps no more of them than it kept before the small ones came.
class KeptMemory {
 public:
  static constexpr std::size_t kMaxKept = 32;
  static constexpr std::size_t kMaxKeptLarge = 8;
  static constexpr std::size_t kLargeBytes = std::size_t{4} << 20;

  static KeptMemory& tapes();
  static KeptMemory& outputs();  // fusedrnn::OutputBuffer's

  // A block of at least `bytes`: the smallest kept one that holds them without being more than
  // twice as large (a small buffer does not pin a large block), or else a fresh one, advised
  // for huge pages. `capacity` receives its size.
  std::unique_ptr<unsigned char[]> take(std::size_t bytes, std::size_t* capacity);
  // Keeps a dropped buffer's block (of `capacity` bytes) for a later take.
  void give_back(std::unique_ptr<unsigned char[]> block, std::size_t capacity);
  void release_all();
  // The blocks kept now and their bytes, and how many blocks take has allocated fresh so far.
  void count(int64_t* blocks, int64_t* bytes, int64_t* fresh);

 private:
  KeptMemory() = default;
  static KeptMemory& instance(int kind);  // 0 tapes, 1 outputs
  struct Block {
    std::unique_ptr<unsigned char[]> data;  // null: an empty slot
    std::size_t size = 0;
    uint64_t given = 0;  // when it was given back, for evicting the least recent
  };
  // Buffers are dropped on whichever thread releases them (Python's), hence the lock. A fixed
  // array, so that giving a block back never allocates.
  std::mutex mutex_;
  std::array<Block, kMaxKept> blocks_;
  uint64_t clock_ = 0;
  int64_t fresh_ = 0;
};

// A kept block of scratch: each thread's own, and two lent to the calls of a pair run side by
// side when a pool worker runs them (pair_cpu.cc), so that the memory they keep is never a
// worker's own, which fusedrnn.release_memory() could not reach.
struct ScratchBlock;
ScratchBlock& this_thread_block();
ScratchBlock& side_block(int call);  // call 0 or 1

// While alive, the calling thread's Workspaces take `block` instead of its own.
class LentBlock {
 public:
  explicit LentBlock(ScratchBlock& block);
  ~LentBlock();
  LentBlock(const LentBlock&) = delete;
  LentBlock& operator=(const LentBlock&) = delete;

 private:
  ScratchBlock* outer_;
};

class Workspace {
 public:
  static constexpr std::size_t kMaxRetainedBytes = std::size_t{256} << 20;
  static constexpr std::size_t kAlignment = 64;

  // Bytes for arrays of these element counts, each starting on a kAlignment boundary.
  template <typename T>
  static std::size_t bytes_for(std::initializer_list<int64_t> counts) {
    std::size_t total = kAlignment;  // room to align the block's start
    for (int64_t n : counts) total += round_up(static_cast<std::size_t>(n) * sizeof(T));
    return total;
  }

  // Frees a kept block unless a call is using it (fusedrnn.release_memory()).
  static void release(ScratchBlock& block);

  explicit Workspace(std::size_t bytes);
  ~Workspace();
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;

  // The next `count` elements of the block, uninitialised. The counts taken must be those given
  // to bytes_for, in any order.
  template <typename T>
  T* take(int64_t count) {
    T* p = reinterpret_cast<T*>(next_);
    next_ += round_up(static_cast<std::size_t>(count) * sizeof(T));
    return p;
  }

 private:
  static std::size_t round_up(std::size_t n) { return (n + kAlignment - 1) / kAlignment * kAlignment; }

  std::unique_ptr<unsigned char[]> own_;  // when the block is already in use
  ScratchBlock* block_ = nullptr;         // the kept block taken, if any
  unsigned char* next_ = nullptr;
};

}  // namespace cpu
}  // namespace fusedrnn
