#include "workspace.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace fusedrnn {
namespace cpu {
namespace {

struct ThreadBlock {
  std::unique_ptr<unsigned char[]> data;
  std::size_t size = 0;
  bool in_use = false;
};

thread_local ThreadBlock thread_block;

// TapeMemory's blocks, least recently given back first. Tapes are dropped on whichever thread
// releases them (Python's), hence the lock.
struct KeptBlock {
  std::unique_ptr<unsigned char[]> data;
  std::size_t size;
};
std::mutex kept_mutex;
std::vector<KeptBlock> kept_blocks;

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

std::unique_ptr<unsigned char[]> TapeMemory::take(std::size_t bytes, std::size_t* capacity) {
  {
    std::lock_guard<std::mutex> lock(kept_mutex);
    auto best = kept_blocks.end();
    for (auto it = kept_blocks.begin(); it != kept_blocks.end(); ++it) {
      const bool fits = it->size >= bytes && it->size / 2 <= bytes;
      if (fits && (best == kept_blocks.end() || it->size < best->size)) best = it;
    }
    if (best != kept_blocks.end()) {
      std::unique_ptr<unsigned char[]> block = std::move(best->data);
      *capacity = best->size;
      kept_blocks.erase(best);
      return block;
    }
  }
  std::unique_ptr<unsigned char[]> block(new unsigned char[bytes]);
  advise_huge_pages(block.get(), bytes);
  *capacity = bytes;
  return block;
}

void TapeMemory::give_back(std::unique_ptr<unsigned char[]> block, std::size_t capacity) {
  std::unique_ptr<unsigned char[]> oldest;  // freed after the lock is released
  std::lock_guard<std::mutex> lock(kept_mutex);
  if (kept_blocks.size() == kMaxKept) {
    oldest = std::move(kept_blocks.front().data);
    kept_blocks.erase(kept_blocks.begin());
  }
  kept_blocks.push_back({std::move(block), capacity});
}

void TapeMemory::release_all() {
  std::vector<KeptBlock> blocks;
  {
    std::lock_guard<std::mutex> lock(kept_mutex);
    blocks.swap(kept_blocks);
  }
}

void Workspace::release_thread_block() {
  ThreadBlock& block = thread_block;
  if (block.in_use) return;  // a call on this thread is using it (not expected: none nests)
  block.data.reset();
  block.size = 0;
}

Workspace::Workspace(std::size_t bytes) {
  ThreadBlock& block = thread_block;
  if (block.in_use) {  // not expected (the drivers do not nest), but never share a block
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
    block.data.reset(new unsigned char[grown]);
    block.size = grown;
  }
  block.in_use = true;
  uses_thread_block_ = true;
  next_ = aligned(block.data.get());
}

Workspace::~Workspace() {
  if (!uses_thread_block_) return;
  ThreadBlock& block = thread_block;
  block.in_use = false;
  if (block.size > kMaxRetainedBytes) {
    block.data.reset();
    block.size = 0;
  }
}

}  // namespace cpu
}  // namespace fusedrnn
