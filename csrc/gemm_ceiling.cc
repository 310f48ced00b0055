// The GEMM ceiling that `fusedrnn bench` reports each case's speed against: what the kernels'
// GEMM for their big products (chunk_product.h: BLAS through parallel_gemm.h, or fusedrnn's own
// kernel where that is faster; same threads) reaches on a large square product, packing
// included.
#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

#include "chunk_product.h"
#include "fusedrnn/rnn.h"
#include "rnn_common.h"

namespace fusedrnn {
namespace {

template <typename T>
double median_gflops(int64_t n, int repeats) {
  // Values in [0, 1): no denormals or overflow that could slow the product down.
  std::vector<T> a(n * n), b(n * n), c(n * n);
  for (int64_t i = 0; i < n * n; ++i) {
    a[i] = T((i * 7919) % 1000) / T(1000);
    b[i] = T((i * 104729) % 1000) / T(1000);
  }
  const cpu::ProductShape shape{true, n, 1, n};  // C = A·Bᵀ
  std::vector<T> packing(static_cast<std::size_t>(cpu::ChunkProduct<T>::packing_size(shape)));
  const auto product = [&] {
    T* scratch = packing.empty() ? nullptr : packing.data();
    const cpu::ChunkProduct<T> b_t(shape, b.data(), n, scratch);
    b_t(a.data(), n, false, n, c.data(), n, false);
  };
  product();  // warm-up: BLAS thread start and buffer allocation
  std::vector<double> seconds;
  for (int r = 0; r < repeats; ++r) {
    const auto start = std::chrono::steady_clock::now();
    product();
    seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::nth_element(seconds.begin(), seconds.begin() + repeats / 2, seconds.end());
  return 2.0 * double(n) * double(n) * double(n) / seconds[repeats / 2] / 1e9;
}

}  // namespace

double gemm_gflops(bool double_precision, int64_t n, int repeats) {
  if (n < 1 || n > 16384) detail::fail("n: expected 1..16384, got " + std::to_string(n));
  if (repeats < 1 || repeats > 1000)
    detail::fail("repeats: expected 1..1000, got " + std::to_string(repeats));
  return double_precision ? median_gflops<double>(n, repeats) : median_gflops<float>(n, repeats);
}

}  // namespace fusedrnn
