// One LSTM layer through the fusedrnn C++ API (fusedrnn/rnn.h): a training forward that keeps
// its tape, the backward of loss = sum(y), and a central finite-difference check of a few weight
// gradients. Prints the final hidden state (tests/test_cpp_package.py recomputes it in Python
// from the same deterministic inputs) and exits 1 if a gradient disagrees.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <numeric>
#include <vector>

#include "fusedrnn/rnn.h"

namespace {

constexpr int64_t T = 4, B = 2, I = 3, H = 5, G = 4;  // G: LSTM's four gates
const fusedrnn::Dims kDims{T, B, I, H};

// Deterministic inputs: v[k] = scale * sin(0.7 * k + phase).
std::vector<double> wave(int64_t n, double phase, double scale) {
  std::vector<double> v(static_cast<std::size_t>(n));
  for (int64_t k = 0; k < n; ++k) v[k] = scale * std::sin(0.7 * double(k) + phase);
  return v;
}

struct Lstm {
  std::vector<double> x = wave(T * B * I, 0.0, 1.0);
  std::vector<double> w_ih = wave(G * H * I, 1.0, 0.4), w_hh = wave(G * H * H, 2.0, 0.4);
  std::vector<double> b_ih = wave(G * H, 3.0, 0.4), b_hh = wave(G * H, 4.0, 0.4);

  fusedrnn::Weights<double> weights() const {
    return {w_ih.data(), w_hh.data(), b_ih.data(), b_hh.data()};
  }
};

// Runs the forward (keeping what backward needs when `tape` is given); returns sum(y).
double forward(const Lstm& m, std::vector<double>& h_n, fusedrnn::Tape<double>* tape) {
  std::vector<double> y(T * B * H), c_n(B * H);
  fusedrnn::ForwardArgs<double> a;
  a.cell = fusedrnn::Cell::LSTM;
  a.dims = kDims;
  a.x = m.x.data();
  a.weights = m.weights();  // h0 and c0 stay nullptr: zero initial state
  a.y = y.data();
  a.ldy = H;
  a.h_n = h_n.data();
  a.c_n = c_n.data();
  a.tape = tape;
  fusedrnn::forward(a);
  return std::accumulate(y.begin(), y.end(), 0.0);
}

}  // namespace

int main() try {
  Lstm m;
  std::vector<double> h_n(B * H);
  fusedrnn::Tape<double> tape(fusedrnn::Cell::LSTM, kDims, /*reverse=*/false, /*lengths=*/nullptr);
  forward(m, h_n, &tape);
  std::printf("h_n");
  for (double v : h_n) std::printf(" %.17g", v);
  std::printf("\ntape: %zu bytes\n", tape.bytes());

  // loss = sum(y): dy is all ones, no gradient arrives through the final state.
  std::vector<double> dy(T * B * H, 1.0), dx(T * B * I), dh0(B * H), dc0(B * H);
  std::vector<double> dw_ih(m.w_ih.size()), dw_hh(m.w_hh.size()), db_ih(G * H), db_hh(G * H);
  fusedrnn::BackwardArgs<double> b;
  b.tape = &tape;
  b.x = m.x.data();
  b.weights = m.weights();
  b.dy = dy.data();
  b.lddy = H;
  b.dx = dx.data();
  b.dh0 = dh0.data();
  b.dc0 = dc0.data();
  b.dw_ih = dw_ih.data();
  b.dw_hh = dw_hh.data();
  b.db_ih = db_ih.data();
  b.db_hh = db_hh.data();
  fusedrnn::backward(b);

  // Central differences have O(eps^2) error; 1e-6 relative leaves room for rounding.
  const double eps = 1e-5;
  double worst = 0.0;
  for (std::size_t k : {std::size_t(0), std::size_t(37), m.w_hh.size() - 1}) {
    const double saved = m.w_hh[k];
    std::vector<double> unused(B * H);
    m.w_hh[k] = saved + eps;
    const double up = forward(m, unused, nullptr);
    m.w_hh[k] = saved - eps;
    const double down = forward(m, unused, nullptr);
    m.w_hh[k] = saved;
    const double numeric = (up - down) / (2 * eps);
    worst = std::fmax(worst, std::fabs(numeric - dw_hh[k]) / std::fmax(std::fabs(numeric), 1e-8));
    std::printf("dloss/dw_hh[%zu]: backward %.10f, finite difference %.10f\n", k, dw_hh[k],
                numeric);
  }
  std::printf("worst relative difference %.2e\n", worst);
  return worst < 1e-6 ? 0 : 1;
} catch (const std::exception& e) {  // fusedrnn reports bad arguments as std::invalid_argument
  std::fprintf(stderr, "fusedrnn: %s\n", e.what());
  return 2;
}
