#include "workspace.h"

#include <array>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>

#if defined(__unix__)
#include <pthread.h>
#endif
#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "rnn_common.h"

namespace fusedrnn {
namespace cpu {

struct ScratchBlock {
  std::unique_ptr<unsigned char[]> data;
  std::size_t size = 0;
  // Atomic: the side blocks are asked for from any thread (a pool worker's call, a
  // release_memory() elsewhere), and a thread's own by release_memory() only from itself.
  std::atomic<bool> in_use{false};
};

namespace {

thread_local ScratchBlock* lent_block = nullptr;  // LentBlock's, else the thread's own

unsigned char* aligned(unsigned char* p) {
  const auto address = reinterpret_cast<std::uintptr_t>(p);
  return p + (Workspace::kAlignment - address % Workspace::kAlignment) % Workspace::kAlignment;
}

}  // namespace

void advise_huge_pages(void* p, std::size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr std::size_t kMinBytes = std::size_t{4} << 20;  // two 2 MB pages: else mostly outside
  static const bool wanted = [] {
    const char* env = std::getenv("FUSEDRNN_MADVISE_HUGEPAGE");
    return !(env && std::strcmp(env, "0") == 0);
  }();
  if (!wanted || bytes < kMinBytes) return;
  // madvise takes whole pages: the part of the block between its first and last page boundary.
  const auto page = static_cast<std::uintptr_t>(sysconf(_SC_PAGESIZE));
  const auto start = reinterpret_cast<std::uintptr_t>(p);
  const std::uintptr_t first = (start + page - 1) / page * page;
  const std::uintptr_t end = (start + bytes) / page * page;
  // Advice only: its result is ignored. Where huge pages are off (or not built into the
  // kernel) the block is served in small pages as before.
  madvise(reinterpret_cast<void*>(first), end - first, MADV_HUGEPAGE);
#else
  (void)p;
  (void)bytes;
#endif
}

KeptMemory& KeptMemory::tapes() { return instance(0); }
KeptMemory& KeptMemory::outputs() { return instance(1); }

KeptMemory& KeptMemory::instance(int kind) {
  // Never destroyed: a tape or an output may outlive static destructors.
  static KeptMemory* const memories = [] {
    auto* made = new KeptMemory[2];
#if defined(__unix__)
    // A fork() while another thread holds a lock would leave the child's copy locked forever.
    pthread_atfork([] { for (int i = 0; i < 2; ++i) instance(i).mutex_.lock(); },
                   [] { for (int i = 0; i < 2; ++i) instance(i).mutex_.unlock(); },
                   [] { for (int i = 0; i < 2; ++i) instance(i).mutex_.unlock(); });
#endif
    return made;
  }();
  return memories[kind];
}

std::unique_ptr<unsigned char[]> KeptMemory::take(std::size_t bytes, std::size_t* capacity) {
  std::unique_ptr<unsigned char[]> stale[kMaxKept];  // freed after the lock is released
  {
    std::lock_guard<std::mutex> lock(mutex_);
    Block* best = nullptr;
    for (Block& b : blocks_) {
      const bool fits = b.data && b.size >= bytes && b.size / 2 <= bytes;
      if (fits && (!best || b.size < best->size)) best = &b;
    }
    if (best) {
      *capacity = best->size;
      return std::move(best->data);
    }
    // No kept block fits: the buffers changed sizes (T or B). The kept blocks are freed before
    // the new one is allocated, so that they never sit beside fresh memory.
    for (std::size_t i = 0; i < kMaxKept; ++i) stale[i] = std::move(blocks_[i].data);
    ++fresh_;
  }
  for (auto& block : stale) block.reset();
  std::unique_ptr<unsigned char[]> block(new unsigned char[bytes]);
  advise_huge_pages(block.get(), bytes);
  *capacity = bytes;
  return block;
}

void KeptMemory::give_back(std::unique_ptr<unsigned char[]> block, std::size_t capacity) {
  std::unique_ptr<unsigned char[]> evicted;  // freed after the lock is released
  std::lock_guard<std::mutex> lock(mutex_);
  const auto large = [](std::size_t size) { return size >= kLargeBytes; };
  std::size_t large_kept = 0;
  for (const Block& b : blocks_) large_kept += b.data && large(b.size);
  // A large block over the large ones' limit takes the least recent large one's place; any
  // other block an empty slot, or else the least recent one's.
  const bool among_large = large(capacity) && large_kept >= kMaxKeptLarge;
  Block* slot = nullptr;
  for (Block& b : blocks_) {
    if (!b.data && !among_large) {
      slot = &b;
      break;
    }
    if (!b.data || (among_large && !large(b.size))) continue;
    if (!slot || b.given < slot->given) slot = &b;
  }
  evicted = std::move(slot->data);
  *slot = {std::move(block), capacity, ++clock_};
}

void KeptMemory::release_all() {
  std::unique_ptr<unsigned char[]> freed[kMaxKept];  // after the lock is released
  std::lock_guard<std::mutex> lock(mutex_);
  for (std::size_t i = 0; i < kMaxKept; ++i) freed[i] = std::move(blocks_[i].data);
}

void KeptMemory::count(int64_t* blocks, int64_t* bytes, int64_t* fresh) {
  std::lock_guard<std::mutex> lock(mutex_);
  *fresh = fresh_;
  *blocks = *bytes = 0;
  for (const Block& b : blocks_) {
    if (!b.data) continue;
    *blocks += 1;
    *bytes += static_cast<int64_t>(b.size);
  }
}

ScratchBlock& this_thread_block() {
  thread_local ScratchBlock block;
  return block;
}

ScratchBlock& side_block(int call) {
  static ScratchBlock* const blocks = new ScratchBlock[2];  // never destroyed, as KeptMemory
  if (call != 0 && call != 1) detail::fail("side_block: expected call 0 or 1");
  return blocks[call];
}

LentBlock::LentBlock(ScratchBlock& block) : outer_(lent_block) { lent_block = &block; }
LentBlock::~LentBlock() { lent_block = outer_; }

void Workspace::release(ScratchBlock& block) {
  if (block.in_use.exchange(true)) return;  // a call is using it
  block.data.reset();
  block.size = 0;
  block.in_use = false;
}

Workspace::Workspace(std::size_t bytes) {
  ScratchBlock& block = lent_block ? *lent_block : this_thread_block();
  if (block.in_use.exchange(true)) {  // never share a block (not expected: none nests)
    own_.reset(new unsigned char[bytes]);
    next_ = aligned(own_.get());
    return;
  }
  if (block.size < bytes) {
    // A quarter more than asked: a training step's backward asks for a little more than its
    // forward did, and growing then would map a whole fresh block while the tape is held (the
    // freed one often stays with malloc). Pages never touched cost no memory.
    const std::size_t grown = bytes + bytes / 4;
    block.data.reset();  // free before allocating: never hold both
    block.size = 0;
    try {
      block.data.reset(new unsigned char[grown]);
    } catch (...) {
      block.in_use = false;  // no destructor runs for a constructor that throws
      throw;
    }
    block.size = grown;
  }
  block_ = &block;
  next_ = aligned(block.data.get());
}

Workspace::~Workspace() {
  if (!block_) return;
  if (block_->size > kMaxRetainedBytes) {
    block_->data.reset();
    block_->size = 0;
  }
  block_->in_use = false;
}

}  // namespace cpu
}  // namespace fusedrnn
