#include "workspace.h"

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
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

unsigned char* aligned(unsigned char* p) {
  const auto address = reinterpret_cast<std::uintptr_t>(p);
  return p + (Workspace::kAlignment - address % Workspace::kAlignment) % Workspace::kAlignment;
}

constexpr std::size_t kPageBytes = 4096;
constexpr std::size_t kHugePageBytes = std::size_t{2} << 20;

}  // namespace

void advise_huge_pages(void* p, std::size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (bytes < 2 * kHugePageBytes) return;  // mostly outside an aligned huge page anyway
  // madvise takes whole pages: the part of the block from its first page boundary on.
  const auto start = reinterpret_cast<std::uintptr_t>(p);
  const std::uintptr_t first = (start + kPageBytes - 1) / kPageBytes * kPageBytes;
  const std::uintptr_t end = (start + bytes) / kPageBytes * kPageBytes;
  // Advice only: where the kernel refuses (huge pages turned off), the block works as before.
  madvise(reinterpret_cast<void*>(first), end - first, MADV_HUGEPAGE);
#else
  (void)p;
  (void)bytes;
#endif
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
