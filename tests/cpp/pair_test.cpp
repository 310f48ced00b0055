// fusedrnn::forward_pair and backward_pair, as a C++ program calls them: a bidirectional LSTM
// layer's two directions run as a pair give, bit for bit, the results of the calls one after
// the other; two calls that share an output are refused with std::invalid_argument before
// anything is written. Prints what failed and exits 1, or exits 0.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "fusedrnn/rnn.h"

namespace {

// Small enough that the pair runs side by side on two threads (as in tests/test_pair.py).
constexpr int64_t T = 40, B = 1, I = 32, H = 64, G = 4;  // G: LSTM's four gates
const fusedrnn::Dims kDims{T, B, I, H};

std::vector<float> wave(int64_t n, double phase, double scale) {
  std::vector<float> v(static_cast<std::size_t>(n));
  for (int64_t k = 0; k < n; ++k) v[k] = static_cast<float>(scale * std::sin(0.7 * k + phase));
  return v;
}

const std::vector<float> x = wave(T * B * I, 0.0, 1.0);
const std::vector<float> dy = wave(T * B * 2 * H, 0.5, 1.0);  // both directions' halves

// One direction: its weights, its outputs and its gradients, all filled with NaN at first.
struct Direction {
  explicit Direction(bool reverse)
      : reverse(reverse),
        w_ih(wave(G * H * I, reverse ? 1.0 : 2.0, 0.2)),
        w_hh(wave(G * H * H, reverse ? 3.0 : 4.0, 0.2)),
        b_ih(wave(G * H, reverse ? 5.0 : 6.0, 0.2)),
        b_hh(wave(G * H, reverse ? 7.0 : 8.0, 0.2)),
        tape(std::make_unique<fusedrnn::Tape<float>>(fusedrnn::Cell::LSTM, kDims, reverse,
                                                     nullptr)) {}

  fusedrnn::Weights<float> weights() const {
    return {w_ih.data(), w_hh.data(), b_ih.data(), b_hh.data()};
  }

  // Writes its half of `y`, whose rows hold both directions' outputs.
  fusedrnn::ForwardArgs<float> forward_args(std::vector<float>& y) {
    fusedrnn::ForwardArgs<float> a;
    a.cell = fusedrnn::Cell::LSTM;
    a.dims = kDims;
    a.reverse = reverse;
    a.x = x.data();
    a.weights = weights();
    a.y = y.data() + (reverse ? H : 0);
    a.ldy = 2 * H;
    a.h_n = h_n.data();
    a.c_n = c_n.data();
    a.tape = tape.get();
    return a;
  }

  // Its dx is its own: the caller adds the two directions' dx.
  fusedrnn::BackwardArgs<float> backward_args() {
    fusedrnn::BackwardArgs<float> b;
    b.tape = tape.get();
    b.x = x.data();
    b.weights = weights();
    b.dy = dy.data() + (reverse ? H : 0);
    b.lddy = 2 * H;
    b.dx = dx.data();
    b.dh0 = dh0.data();
    b.dc0 = dc0.data();
    b.dw_ih = dw_ih.data();
    b.dw_hh = dw_hh.data();
    b.db_ih = db_ih.data();
    b.db_hh = db_hh.data();
    return b;
  }

  // Every output and gradient, for comparing bits.
  std::vector<const std::vector<float>*> results() const {
    return {&h_n, &c_n, &dx, &dh0, &dc0, &dw_ih, &dw_hh, &db_ih, &db_hh};
  }

  static std::vector<float> nans(int64_t n) {
    return std::vector<float>(static_cast<std::size_t>(n),
                              std::numeric_limits<float>::quiet_NaN());
  }

  bool reverse;
  std::vector<float> w_ih, w_hh, b_ih, b_hh;
  std::unique_ptr<fusedrnn::Tape<float>> tape;
  std::vector<float> h_n = nans(B * H), c_n = nans(B * H);
  std::vector<float> dx = nans(T * B * I), dh0 = nans(B * H), dc0 = nans(B * H);
  std::vector<float> dw_ih = nans(G * H * I), dw_hh = nans(G * H * H);
  std::vector<float> db_ih = nans(G * H), db_hh = nans(G * H);
};

// A bidirectional layer: both directions and the y they share.
struct Layer {
  Direction forward_dir{false}, reverse_dir{true};
  std::vector<float> y = Direction::nans(T * B * 2 * H);

  std::vector<const std::vector<float>*> results() const {
    std::vector<const std::vector<float>*> all{&y};
    for (const Direction* d : {&forward_dir, &reverse_dir})
      for (const std::vector<float>* r : d->results()) all.push_back(r);
    return all;
  }
};

using Snapshot = std::vector<std::vector<float>>;

Snapshot snapshot(const Layer& layer) {
  Snapshot copy;
  for (const std::vector<float>* r : layer.results()) copy.push_back(*r);
  return copy;
}

bool same_bits(const Snapshot& a, const Snapshot& b) {
  for (std::size_t k = 0; k < a.size(); ++k)
    if (std::memcmp(a[k].data(), b[k].data(), a[k].size() * sizeof(float)) != 0) return false;
  return true;
}

int failures = 0;

void expect(bool ok, const std::string& what) {
  if (!ok) {
    std::printf("FAILED: %s\n", what.c_str());
    ++failures;
  }
}

// `call` must throw std::invalid_argument whose message starts with `argument` + ":", and leave
// every result of `layer` as it was.
void expect_refused(const std::function<void()>& call, const std::string& argument,
                    const Layer& layer) {
  const Snapshot before = snapshot(layer);
  std::string message = "nothing thrown";
  try {
    call();
  } catch (const std::invalid_argument& e) {
    message = e.what();
  }
  expect(message.rfind(argument + ":", 0) == 0,
         "a shared " + argument + " is refused naming it; got: " + message);
  expect(same_bits(snapshot(layer), before),
         "a refused call with a shared " + argument + " writes nothing");
}

}  // namespace

int main() try {
  fusedrnn::set_num_threads(2);
  Layer apart, paired;

  // One call after the other, then the same calls as pairs.
  fusedrnn::forward(apart.forward_dir.forward_args(apart.y));
  fusedrnn::forward(apart.reverse_dir.forward_args(apart.y));
  fusedrnn::backward(apart.forward_dir.backward_args());
  fusedrnn::backward(apart.reverse_dir.backward_args());
  fusedrnn::forward_pair(paired.forward_dir.forward_args(paired.y),
                         paired.reverse_dir.forward_args(paired.y));
  fusedrnn::backward_pair(paired.forward_dir.backward_args(),
                          paired.reverse_dir.backward_args());
  expect(same_bits(snapshot(apart), snapshot(paired)),
         "a pair gives the bits of its calls one after the other");
  bool all_written = true;  // (they start as NaN)
  for (const std::vector<float>* r : paired.results())
    for (float v : *r) all_written = all_written && std::isfinite(v);
  expect(all_written, "a pair writes every output and gradient");

  // Two calls that share an output, or a tape, are refused before either runs.
  Layer fresh;
  auto a = fresh.forward_dir.forward_args(fresh.y);
  auto b = fresh.reverse_dir.forward_args(fresh.y);
  auto shared_h_n = b;
  shared_h_n.h_n = a.h_n;
  expect_refused([&] { fusedrnn::forward_pair(a, shared_h_n); }, "h_n", fresh);
  auto shared_y = b;
  shared_y.y = a.y;
  expect_refused([&] { fusedrnn::forward_pair(a, shared_y); }, "y", fresh);
  auto shared_tape = a;  // a second forward direction, all its outputs b's but a's tape
  shared_tape.y = b.y;
  shared_tape.h_n = b.h_n;
  shared_tape.c_n = b.c_n;
  expect_refused([&] { fusedrnn::forward_pair(a, shared_tape); }, "tape", fresh);

  fusedrnn::forward_pair(a, b);
  auto ba = fresh.forward_dir.backward_args();
  auto bb = fresh.reverse_dir.backward_args();
  auto shared_dw_hh = bb;
  shared_dw_hh.dw_hh = ba.dw_hh;
  expect_refused([&] { fusedrnn::backward_pair(ba, shared_dw_hh); }, "dw_hh", fresh);
  auto shared_dx = bb;
  shared_dx.dx = ba.dx;
  expect_refused([&] { fusedrnn::backward_pair(ba, shared_dx); }, "dx", fresh);

  std::printf(failures ? "%d failed\n" : "all passed\n", failures);
  return failures ? 1 : 0;
} catch (const std::exception& e) {
  std::printf("FAILED: unexpected exception: %s\n", e.what());
  return 1;
}
