// pybind11 glue: checks what Python hands over (it does not trust the Python layer), converts,
// releases the GIL and calls the C++ kernels. No math here.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "fusedrnn/rnn.h"

namespace py = pybind11;
using fusedrnn::Cell;

namespace {

std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

std::string type_name(const py::handle& obj) {
  return std::string(py::str(py::type::of(obj).attr("__name__")));
}

// A new uninitialised array; one of kMinKeptOutputBytes or more in an OutputBuffer, whose block
// is kept for a later output once the array is dropped (see rnn.h).
// The shape's sizes are >= 0; a ValueError names it when the array cannot fit in memory.
py::array output_array(const py::dtype& dtype, const std::vector<py::ssize_t>& shape) {
  py::ssize_t bytes = dtype.itemsize();
  for (const py::ssize_t n : shape)
    if (__builtin_mul_overflow(bytes, n, &bytes))
      throw py::value_error("shape: expected an array that fits in memory, got " +
                            shape_str(std::vector<int64_t>(shape.begin(), shape.end())));
  if (static_cast<std::size_t>(bytes) < fusedrnn::OutputBuffer::kMinKeptOutputBytes)
    return py::array(dtype, shape);
  auto buffer = std::make_unique<fusedrnn::OutputBuffer>(bytes);
  void* const data = buffer->data();
  const py::capsule owner(buffer.get(),
                          [](void* p) { delete static_cast<fusedrnn::OutputBuffer*>(p); });
  buffer.release();  // the capsule owns it now
  return py::array(dtype, shape, data, owner);
}

// An array of the given dtype and shape, or a TypeError/ValueError naming it.
py::array typed(const py::handle& obj, const char* name, const py::dtype& dtype,
                const std::vector<int64_t>& shape) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(std::string(name) + ": expected a numpy.ndarray, got " +
                         type_name(obj));
  auto a = py::reinterpret_borrow<py::array>(obj);
  if (!a.dtype().is(dtype) && !a.dtype().equal(dtype))
    throw py::type_error(std::string(name) + ": expected dtype " +
                         std::string(py::str(dtype)) + ", got " + std::string(py::str(a.dtype())));
  bool same = a.ndim() == static_cast<py::ssize_t>(shape.size());
  for (std::size_t i = 0; same && i < shape.size(); ++i) same = a.shape(i) == shape[i];
  if (!same)
    throw py::value_error(std::string(name) + ": expected shape " + shape_str(shape) + ", got " +
                          shape_str(a));
  return a;
}

bool aligned(const py::array& a) {
  return reinterpret_cast<std::uintptr_t>(a.data()) % a.itemsize() == 0;
}

// A C-contiguous array of the given dtype and shape, or a ValueError/TypeError naming it.
py::array checked(const py::handle& obj, const char* name, const py::dtype& dtype,
                  const std::vector<int64_t>& shape) {
  auto a = typed(obj, name, dtype, shape);
  // Aligned too: the kernels' loops may use aligned vector loads on element pointers.
  const bool contiguous = a.flags() & py::array::c_style;
  if (!contiguous || !aligned(a))
    throw py::value_error(std::string(name) + ": expected an aligned, C-contiguous array, got " +
                          (contiguous ? "an unaligned" : "a strided") +
                          " one (numpy.require(a, requirements='CA') makes one)");
  return a;
}

template <typename T>
const T* cptr(const std::optional<py::array>& a) {
  return a ? static_cast<const T*>(a->data()) : nullptr;
}

template <typename T>
T* mptr(py::array& a) {
  return static_cast<T*>(a.mutable_data());
}

struct Inputs {
  Cell cell;
  fusedrnn::Dims dims;
  py::dtype dtype;
  py::array x, w_ih, w_hh;
  std::optional<py::array> h0, c0, b_ih, b_hh, lengths;
};

// A forward's tape plus the arrays backward needs again, kept alive with it. A tape rebuilt from
// arrays (tape_from_arrays) views them and keeps them alive too.
class PyTape {
 public:
  std::variant<std::unique_ptr<fusedrnn::Tape<float>>, std::unique_ptr<fusedrnn::Tape<double>>>
      tape;
  py::array x, w_ih, w_hh;
  std::optional<py::array> b_ih, b_hh;
  py::dtype dtype;
  std::vector<py::array> viewed;  // the buffers a rebuilt tape views

  // Keeps the forward's x and weights (the tape itself is set after).
  explicit PyTape(const Inputs& in)
      : x(in.x), w_ih(in.w_ih), w_hh(in.w_hh), b_ih(in.b_ih), b_hh(in.b_hh), dtype(in.dtype) {}

  const fusedrnn::Dims& dims() const {
    return std::visit([](const auto& t) -> const fusedrnn::Dims& { return t->dims(); }, tape);
  }
  Cell cell() const { return std::visit([](const auto& t) { return t->cell(); }, tape); }
  bool reverse() const { return std::visit([](const auto& t) { return t->reverse(); }, tape); }
  std::size_t bytes() const { return std::visit([](const auto& t) { return t->bytes(); }, tape); }
};

// Taken as objects rather than int/bool parameters: pybind11's own conversion failure lists the
// whole signature without saying which argument was wrong.
Cell to_cell(const py::object& obj) {
  const std::string expected = "cell: expected 0..4 (lstm, gru, gru_reset_before, rnn_tanh, "
                               "rnn_relu), got ";
  if (!py::isinstance<py::int_>(obj) || py::isinstance<py::bool_>(obj))
    throw py::type_error(expected + type_name(obj));
  if (obj < py::int_(0) || obj > py::int_(4))
    throw py::value_error(expected + std::string(py::str(obj)));
  return static_cast<Cell>(obj.cast<int>());
}

bool to_flag(const py::object& obj, const char* name) {
  if (!py::isinstance<py::bool_>(obj))
    throw py::type_error(std::string(name) + ": expected True or False, got " + type_name(obj));
  return obj.cast<bool>();
}

std::optional<py::array> optional_array(const py::object& obj, const char* name,
                                        const py::dtype& dtype, std::vector<int64_t> shape) {
  if (obj.is_none()) return std::nullopt;
  return checked(obj, name, dtype, shape);
}

// A (T, B, H) array whose rows (t, b) lie at a uniform stride `ld` >= H elements, each row's H
// values contiguous: a C-contiguous array (ld = H), or the columns [j, j + H) of a C-contiguous
// (T, B, W) one, as a bidirectional layer's two directions write and read y's halves.
struct RowStrided {
  py::array a;
  int64_t ld;
};

std::optional<RowStrided> optional_rows(const py::object& obj, const char* name,
                                        const py::dtype& dtype, int64_t T, int64_t B, int64_t H,
                                        bool writable) {
  if (obj.is_none()) return std::nullopt;
  auto a = typed(obj, name, dtype, {T, B, H});
  if (writable && !a.writeable())
    throw py::value_error(std::string(name) + ": expected a writeable array, got a read-only one");
  if (!aligned(a))
    throw py::value_error(std::string(name) + ": expected an aligned array, got an unaligned one");
  // Empty: nothing to read or write (the kernels refuse T or B of 0 themselves).
  if (a.size() == 0) return RowStrided{a, H};
  // Strides of axes of length 1 are never used: take them as a packed layout's. Row (t, b) lies
  // at (t·B + b)·ld, so with B = 1 the step stride is the row stride.
  const py::ssize_t size = a.itemsize();
  const py::ssize_t unit = H > 1 ? a.strides(2) : size;
  const py::ssize_t row = B > 1 ? a.strides(1) : T > 1 ? a.strides(0) : H * size;
  py::ssize_t step = 0;
  const bool uniform = unit == size && row % size == 0 && row >= H * size &&
                       !__builtin_mul_overflow(static_cast<py::ssize_t>(B), row, &step) &&
                       (T == 1 || a.strides(0) == step);
  if (!uniform)
    throw py::value_error(std::string(name) + ": expected an array whose (t, b) rows are "
                          "contiguous and evenly spaced (C-contiguous, or a slice of the last "
                          "axis of one), got strides " + shape_str({a.strides(0), a.strides(1),
                          a.strides(2)}) + " with itemsize " + std::to_string(size));
  return RowStrided{a, static_cast<int64_t>(row / size)};
}

// The bytes from an array's lowest element to the end of its highest (non-empty arrays).
std::pair<const char*, const char*> byte_span(const py::array& a) {
  const char* lo = static_cast<const char*>(a.data());
  const char* hi = lo;
  for (py::ssize_t i = 0; i < a.ndim(); ++i) {
    const py::ssize_t reach = (a.shape(i) - 1) * a.strides(i);
    (reach < 0 ? lo : hi) += reach;
  }
  return {lo, hi + a.itemsize()};
}

// Whether two arrays' spans overlap: they may share memory (arrays interleaved without
// touching count too).
bool may_share_memory(const py::array& a, const py::array& b) {
  if (a.size() == 0 || b.size() == 0) return false;
  const auto [a0, a1] = byte_span(a);
  const auto [b0, b1] = byte_span(b);
  return a0 < b1 && b0 < a1;
}

Inputs check_inputs(const py::object& cell_id, const py::object& x_obj, const py::object& h0,
                    const py::object& c0, const py::object& w_ih_obj, const py::object& w_hh_obj,
                    const py::object& b_ih, const py::object& b_hh, const py::object& lengths) {
  Inputs in;
  in.cell = to_cell(cell_id);
  if (!py::isinstance<py::array>(x_obj))
    throw py::type_error("x: expected a numpy.ndarray, got " +
                         type_name(x_obj));
  auto x = py::reinterpret_borrow<py::array>(x_obj);
  if (x.ndim() != 3)
    throw py::value_error("x: expected a 3-d array (T, B, I), got shape " + shape_str(x));
  in.dtype = x.dtype();
  if (!in.dtype.equal(py::dtype::of<float>()) && !in.dtype.equal(py::dtype::of<double>()))
    throw py::type_error("x: expected dtype float32 or float64, got " +
                         std::string(py::str(in.dtype)));
  const int64_t T = x.shape(0), B = x.shape(1), I = x.shape(2);
  if (!py::isinstance<py::array>(w_hh_obj))
    throw py::type_error("w_hh: expected a numpy.ndarray, got " +
                         type_name(w_hh_obj));
  if (py::reinterpret_borrow<py::array>(w_hh_obj).ndim() != 2)
    throw py::value_error("w_hh: expected a 2-d array (G*H, H), got shape " +
                          shape_str(py::reinterpret_borrow<py::array>(w_hh_obj)));
  const int64_t H = py::reinterpret_borrow<py::array>(w_hh_obj).shape(1);
  const int64_t GH = fusedrnn::gate_count(in.cell) * H;
  in.dims = {T, B, I, H};
  in.x = checked(x, "x", in.dtype, {T, B, I});
  in.w_ih = checked(w_ih_obj, "w_ih", in.dtype, {GH, I});
  in.w_hh = checked(w_hh_obj, "w_hh", in.dtype, {GH, H});
  in.b_ih = optional_array(b_ih, "b_ih", in.dtype, {GH});
  in.b_hh = optional_array(b_hh, "b_hh", in.dtype, {GH});
  in.h0 = optional_array(h0, "h0", in.dtype, {B, H});
  if (fusedrnn::has_cell_state(in.cell)) in.c0 = optional_array(c0, "c0", in.dtype, {B, H});
  else if (!c0.is_none())
    throw py::value_error("c0: expected None for a cell without c state, got " +
                          type_name(c0));
  in.lengths = optional_array(lengths, "lengths", py::dtype::of<int64_t>(), {B});
  return in;
}

// A forward call's outputs and arguments, from its checked inputs to the tuple it returns.
template <typename T>
struct ForwardCall {
  // (The arrays are made in the initialisers: a default py::array is a new empty NumPy array.)
  ForwardCall(Inputs& inputs, const std::optional<RowStrided>& y_out, bool reverse,
              bool training)
      : in(inputs),
        training(training),
        y(y_out ? y_out->a : output_array(in.dtype, {in.dims.T, in.dims.B, in.dims.H})),
        h_n(in.dtype, std::vector<py::ssize_t>{in.dims.B, in.dims.H}) {
    const auto& d = in.dims;
    const bool has_c = fusedrnn::has_cell_state(in.cell);
    if (has_c) c_n = py::array(in.dtype, std::vector<py::ssize_t>{d.B, d.H});
    args.cell = in.cell;
    args.dims = d;
    args.reverse = reverse;
    args.x = static_cast<const T*>(in.x.data());
    args.h0 = cptr<T>(in.h0);
    args.c0 = cptr<T>(in.c0);
    args.weights = {static_cast<const T*>(in.w_ih.data()), static_cast<const T*>(in.w_hh.data()),
                    cptr<T>(in.b_ih), cptr<T>(in.b_hh)};
    args.lengths = cptr<int64_t>(in.lengths);
    args.y = mptr<T>(y);
    args.ldy = y_out ? y_out->ld : d.H;
    args.h_n = mptr<T>(h_n);
    args.c_n = has_c ? mptr<T>(*c_n) : nullptr;
  }

  // Without the GIL: a training call's tape (its memory may be a fresh block's).
  void make_tape() {
    if (!training) return;
    tape = std::make_unique<fusedrnn::Tape<T>>(in.cell, in.dims, args.reverse, args.lengths);
    args.tape = tape.get();
  }

  // (y, h_n, c_n or None, tape or None), after the call.
  py::tuple results() {
    py::object tape_obj = py::none();
    if (training) {
      auto t = std::make_unique<PyTape>(in);
      t->tape = std::move(tape);
      tape_obj = py::cast(std::move(t));
    }
    return py::make_tuple(y, h_n, c_n ? py::object(*c_n) : py::object(py::none()), tape_obj);
  }

  Inputs& in;
  const bool training;
  py::array y, h_n;
  std::optional<py::array> c_n;
  fusedrnn::ForwardArgs<T> args;
  std::unique_ptr<fusedrnn::Tape<T>> tape;
};

// The name of the first of a call's inputs `in` that a y may share memory with (the y of the
// same call, or of the other call of a pair), or null.
const char* input_sharing_memory(const RowStrided& y, const Inputs& in) {
  const auto present = [](const std::optional<py::array>& a) { return a ? &*a : nullptr; };
  const std::pair<const char*, const py::array*> inputs[] = {
      {"x", &in.x}, {"w_ih", &in.w_ih}, {"w_hh", &in.w_hh}, {"b_ih", present(in.b_ih)},
      {"b_hh", present(in.b_hh)}, {"h0", present(in.h0)}, {"c0", present(in.c0)},
      {"lengths", present(in.lengths)}};
  for (const auto& [name, arr] : inputs)
    if (arr && may_share_memory(y.a, *arr)) return name;
  return nullptr;
}

// A forward call's checked inputs and flags; what `forward` and `forward_pair` take.
struct CheckedForward {
  Inputs in;
  bool reverse, training;
  std::optional<RowStrided> y;
};

CheckedForward check_forward(const py::object& cell, const py::object& x, const py::object& h0,
                             const py::object& c0, const py::object& w_ih,
                             const py::object& w_hh, const py::object& b_ih,
                             const py::object& b_hh, const py::object& lengths,
                             const py::object& reverse, const py::object& training,
                             const py::object& y) {
  CheckedForward c{check_inputs(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths),
                   to_flag(reverse, "reverse"), to_flag(training, "training"), std::nullopt};
  const auto& d = c.in.dims;
  c.y = optional_rows(y, "y", c.in.dtype, d.T, d.B, d.H, true);
  // The kernels read the inputs while they write y: they must not share memory.
  if (c.y)
    if (const char* name = input_sharing_memory(*c.y, c.in))
      throw py::value_error(std::string("y: expected an array apart from the inputs' memory, "
                                        "got one that may share memory with ") + name);
  return c;
}

template <typename T>
py::tuple forward_typed(CheckedForward& c) {
  ForwardCall<T> call(c.in, c.y, c.reverse, c.training);
  {
    py::gil_scoped_release release;
    call.make_tape();
    fusedrnn::forward(call.args);
  }
  return call.results();
}

py::tuple forward(const py::object& cell, const py::object& x, const py::object& h0,
                  const py::object& c0, const py::object& w_ih, const py::object& w_hh,
                  const py::object& b_ih, const py::object& b_hh, const py::object& lengths,
                  const py::object& reverse, const py::object& training, const py::object& y) {
  CheckedForward c = check_forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse,
                                   training, y);
  if (c.in.dtype.equal(py::dtype::of<float>())) return forward_typed<float>(c);
  return forward_typed<double>(c);
}

// Whether two row-strided arrays of Ha and Hb values a row may overlap: rows of a common stride
// whose columns lie apart (the two halves of a bidirectional y) do not, though their spans
// interleave.
bool rows_may_overlap(const RowStrided& a, int64_t Ha, const RowStrided& b, int64_t Hb) {
  if (!may_share_memory(a.a, b.a)) return false;
  if (a.ld != b.ld || a.a.itemsize() != b.a.itemsize()) return true;
  const int64_t size = a.a.itemsize(), row = a.ld * size;
  const auto start = [](const py::array& arr) { return static_cast<const char*>(arr.data()); };
  const int64_t gap = ((start(b.a) - start(a.a)) % row + row) % row;  // b's columns past a's
  return gap < Ha * size || gap + Hb * size > row;
}

// A pair's call: a tuple of `size` items, or a TypeError naming the call.
py::tuple call_tuple(const py::handle& call, const char* name, std::size_t size,
                     const char* items) {
  if (!py::isinstance<py::tuple>(call))
    throw py::type_error(std::string(name) + ": expected a tuple " + items + ", got " +
                         type_name(call));
  const auto t = py::reinterpret_borrow<py::tuple>(call);
  if (t.size() != size)  // PyTuple_Size: a subclass's __len__ does not count
    throw py::type_error(std::string(name) + ": expected a tuple " + items + ", got a tuple of " +
                         std::to_string(t.size()));
  return t;
}

// check(), its ValueError or TypeError saying which call of a pair it is about.
template <typename Check>
auto for_call(const char* name, const Check& check) {
  try {
    return check();
  } catch (const py::value_error& e) {
    throw py::value_error(std::string(name) + ": " + e.what());
  } catch (const py::type_error& e) {
    throw py::type_error(std::string(name) + ": " + e.what());
  }
}

// A pair's forward call: `forward`'s arguments, in its order.
CheckedForward check_call(const py::handle& call, const char* name) {
  const py::tuple t = call_tuple(call, name, 12, "of forward's 12 arguments");
  return for_call(name, [&] {
    return check_forward(t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8], t[9], t[10],
                         t[11]);
  });
}

template <typename T>
py::tuple forward_pair_typed(CheckedForward& ca, CheckedForward& cb) {
  ForwardCall<T> a(ca.in, ca.y, ca.reverse, ca.training);
  ForwardCall<T> b(cb.in, cb.y, cb.reverse, cb.training);
  {
    py::gil_scoped_release release;
    a.make_tape();
    b.make_tape();
    fusedrnn::forward_pair(a.args, b.args);
  }
  return py::make_tuple(a.results(), b.results());
}

py::tuple forward_pair(const py::object& call_a, const py::object& call_b) {
  CheckedForward a = check_call(call_a, "call_a"), b = check_call(call_b, "call_b");
  if (!b.in.dtype.equal(a.in.dtype))
    throw py::type_error("call_b: expected x of call_a's dtype " +
                         std::string(py::str(a.in.dtype)) + ", got " +
                         std::string(py::str(b.in.dtype)));
  // Each call writes its y while the other may run: neither y may meet the other call's inputs
  // or its y.
  if (a.y)
    if (const char* name = input_sharing_memory(*a.y, b.in))
      throw py::value_error(std::string("call_a: expected a y apart from call_b's inputs, got one "
                                        "that may share memory with its ") + name);
  if (b.y)
    if (const char* name = input_sharing_memory(*b.y, a.in))
      throw py::value_error(std::string("call_b: expected a y apart from call_a's inputs, got one "
                                        "that may share memory with its ") + name);
  if (a.y && b.y && rows_may_overlap(*a.y, a.in.dims.H, *b.y, b.in.dims.H))
    throw py::value_error("call_b: expected a y apart from call_a's y (e.g. the other half of "
                          "each row), got one that may share memory with it");
  if (a.in.dtype.equal(py::dtype::of<float>())) return forward_pair_typed<float>(a, b);
  return forward_pair_typed<double>(a, b);
}

// A backward call's outputs and arguments, from its checked inputs to the tuple it returns.
template <typename T>
struct BackwardCall {
  // (The arrays are made in the initialisers: a default py::array is a new empty NumPy array.)
  BackwardCall(const PyTape& pt, const fusedrnn::Tape<T>& tape,
               const std::optional<RowStrided>& dy, const std::optional<py::array>& dh_n,
               const std::optional<py::array>& dc_n, bool need_dx)
      : d(tape.dims()),
        GH(fusedrnn::gate_count(tape.cell()) * d.H),
        dx(need_dx ? std::optional<py::array>(output_array(pt.dtype, {d.T, d.B, d.I}))
                   : std::nullopt),
        dh0(pt.dtype, std::vector<py::ssize_t>{d.B, d.H}),
        dw_ih(output_array(pt.dtype, {GH, d.I})),
        dw_hh(output_array(pt.dtype, {GH, d.H})) {
    const auto& dt = pt.dtype;
    if (fusedrnn::has_cell_state(tape.cell()))
      dc0 = py::array(dt, std::vector<py::ssize_t>{d.B, d.H});
    if (pt.b_ih) {
      db_ih = py::array(dt, std::vector<py::ssize_t>{GH});
      db_hh = py::array(dt, std::vector<py::ssize_t>{GH});
    }
    args.tape = &tape;
    args.x = static_cast<const T*>(pt.x.data());
    args.weights = {static_cast<const T*>(pt.w_ih.data()), static_cast<const T*>(pt.w_hh.data()),
                    cptr<T>(pt.b_ih), cptr<T>(pt.b_hh)};
    args.dy = dy ? static_cast<const T*>(dy->a.data()) : nullptr;
    args.lddy = dy ? dy->ld : d.H;
    args.dh_n = cptr<T>(dh_n);
    args.dc_n = cptr<T>(dc_n);
    const auto optional = [](std::optional<py::array>& a) { return a ? mptr<T>(*a) : nullptr; };
    args.dx = optional(dx);
    args.dh0 = mptr<T>(dh0);
    args.dc0 = optional(dc0);
    args.dw_ih = mptr<T>(dw_ih);
    args.dw_hh = mptr<T>(dw_hh);
    args.db_ih = optional(db_ih);
    args.db_hh = optional(db_hh);
  }

  // (dx, dh0, dc0 or None, dw_ih, dw_hh, db_ih or None, db_hh or None), after the call.
  py::tuple results() const {
    const auto or_none = [](const std::optional<py::array>& a) {
      return a ? py::object(*a) : py::object(py::none());
    };
    return py::make_tuple(or_none(dx), dh0, or_none(dc0), dw_ih, dw_hh, or_none(db_ih),
                          or_none(db_hh));
  }

  const fusedrnn::Dims d;
  const int64_t GH;
  std::optional<py::array> dx;
  py::array dh0, dw_ih, dw_hh;
  std::optional<py::array> dc0, db_ih, db_hh;
  fusedrnn::BackwardArgs<T> args;
};

// A backward call's checked inputs; what `backward` and `backward_pair` take.
struct CheckedBackward {
  py::object tape_obj;  // keeps `tape` alive
  const PyTape& tape;
  std::optional<RowStrided> dy;
  std::optional<py::array> dh_n, dc_n;
  bool need_dx;
};

CheckedBackward check_backward(const py::object& tape_obj, const py::object& dy,
                               const py::object& dh_n, const py::object& dc_n,
                               const py::object& need_dx) {
  if (!py::isinstance<PyTape>(tape_obj))
    throw py::type_error("tape: expected a fusedrnn._core.Tape from a training forward, got " +
                         type_name(tape_obj));
  const PyTape& pt = tape_obj.cast<const PyTape&>();
  const auto& d = pt.dims();
  CheckedBackward c{tape_obj, pt, optional_rows(dy, "dy", pt.dtype, d.T, d.B, d.H, false),
                    optional_array(dh_n, "dh_n", pt.dtype, {d.B, d.H}), std::nullopt,
                    to_flag(need_dx, "need_dx")};
  if (fusedrnn::has_cell_state(pt.cell()))
    c.dc_n = optional_array(dc_n, "dc_n", pt.dtype, {d.B, d.H});
  else if (!dc_n.is_none())
    throw py::value_error("dc_n: expected None for a cell without c state, got " +
                          type_name(dc_n));
  return c;
}

py::tuple backward(const py::object& tape, const py::object& dy, const py::object& dh_n,
                   const py::object& dc_n, const py::object& need_dx) {
  const CheckedBackward c = check_backward(tape, dy, dh_n, dc_n, need_dx);
  return std::visit(
      [&](const auto& t) {
        BackwardCall call(c.tape, *t, c.dy, c.dh_n, c.dc_n, c.need_dx);
        {
          py::gil_scoped_release release;
          fusedrnn::backward(call.args);
        }
        return call.results();
      },
      c.tape.tape);
}

py::tuple backward_pair(const py::object& call_a, const py::object& call_b) {
  const auto check = [](const py::handle& call, const char* name) {
    const py::tuple t = call_tuple(call, name, 5, "(tape, dy, dh_n, dc_n, need_dx)");
    return for_call(name, [&] { return check_backward(t[0], t[1], t[2], t[3], t[4]); });
  };
  const CheckedBackward a = check(call_a, "call_a"), b = check(call_b, "call_b");
  if (!b.tape.dtype.equal(a.tape.dtype))
    throw py::type_error("call_b: expected a tape of call_a's dtype " +
                         std::string(py::str(a.tape.dtype)) + ", got " +
                         std::string(py::str(b.tape.dtype)));
  // Every output is a new array: the two calls share nothing they write.
  return std::visit(
      [&](const auto& ta) {
        const auto& tb = std::get<std::decay_t<decltype(ta)>>(b.tape.tape);
        BackwardCall ba(a.tape, *ta, a.dy, a.dh_n, a.dc_n, a.need_dx);
        BackwardCall bb(b.tape, *tb, b.dy, b.dh_n, b.dc_n, b.need_dx);
        {
          py::gil_scoped_release release;
          fusedrnn::backward_pair(ba.args, bb.args);
        }
        return py::make_tuple(ba.results(), bb.results());
      },
      a.tape.tape);
}

// The tape's buffers as arrays that view it (and keep it alive): h_states (T+1, B, H),
// c_states (T+1, B, H) or None, gates (T, B, W*H) or None.
py::tuple tape_arrays(const py::object& self) {
  const PyTape& pt = self.cast<const PyTape&>();
  const auto& d = pt.dims();
  const int64_t width = fusedrnn::tape_gate_width(pt.cell());
  return std::visit([&](const auto& t) {
    const auto view = [&](auto* data, std::vector<py::ssize_t> shape) -> py::object {
      if (!data) return py::none();
      return py::array(pt.dtype, shape, data, self);
    };
    return py::make_tuple(view(t->h_states(), {d.T + 1, d.B, d.H}),
                          view(t->c_states(), {d.T + 1, d.B, d.H}),
                          view(t->gates(), {d.T, d.B, width * d.H}));
  }, pt.tape);
}

template <typename T>
std::unique_ptr<fusedrnn::Tape<T>> tape_view(const Inputs& in, bool reverse, const py::array& h,
                                             const std::optional<py::array>& c,
                                             const std::optional<py::array>& g) {
  // backward only reads a tape, and this one is only ever handed to backward (held const), so
  // the arrays may be read-only ones: the const_casts below never lead to a write.
  const auto ptr = [](const std::optional<py::array>& a) {
    return a ? const_cast<T*>(static_cast<const T*>(a->data())) : nullptr;
  };
  fusedrnn::TapeBuffers<T> buffers{ptr(h), ptr(c), ptr(g)};
  // std::invalid_argument from its checks reaches Python as ValueError (pybind11's translation).
  return std::make_unique<fusedrnn::Tape<T>>(in.cell, in.dims, reverse, cptr<int64_t>(in.lengths),
                                              buffers);
}

// A tape rebuilt from the arrays tape_arrays gave (or copies of them, e.g. a framework's tensors)
// and the forward's inputs, for backward. It views the arrays: no copy.
py::object tape_from_arrays(const py::object& cell, const py::object& x, const py::object& w_ih,
                            const py::object& w_hh, const py::object& b_ih, const py::object& b_hh,
                            const py::object& lengths, bool reverse, const py::object& h_states,
                            const py::object& c_states, const py::object& gates) {
  Inputs in = check_inputs(cell, x, py::none(), py::none(), w_ih, w_hh, b_ih, b_hh, lengths);
  const auto& d = in.dims;
  const int64_t width = fusedrnn::tape_gate_width(in.cell);
  const py::array h = checked(h_states, "h_states", in.dtype, {d.T + 1, d.B, d.H});
  std::optional<py::array> c, g;
  if (fusedrnn::has_cell_state(in.cell)) c = checked(c_states, "c_states", in.dtype, {d.T + 1, d.B, d.H});
  else if (!c_states.is_none())
    throw py::value_error("c_states: expected None for a cell without c state, got " +
                          type_name(c_states));
  if (width) g = checked(gates, "gates", in.dtype, {d.T, d.B, width * d.H});
  else if (!gates.is_none())
    throw py::value_error("gates: expected None for an RNN cell, got " +
                          type_name(gates));
  auto t = std::make_unique<PyTape>(in);
  if (in.dtype.equal(py::dtype::of<float>())) t->tape = tape_view<float>(in, reverse, h, c, g);
  else t->tape = tape_view<double>(in, reverse, h, c, g);
  t->viewed.push_back(h);
  if (c) t->viewed.push_back(*c);
  if (g) t->viewed.push_back(*g);
  return py::cast(std::move(t));
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "fusedrnn C++ kernels (one layer, one direction); use the fusedrnn package API";
  m.attr("__version__") = FUSEDRNN_VERSION;
  m.attr("CELLS") = py::make_tuple("lstm", "gru", "gru_reset_before", "rnn_tanh", "rnn_relu");

  py::class_<PyTape>(m, "Tape", "What a training forward keeps for backward (opaque).")
      .def_property_readonly("cell", [](const PyTape& t) { return fusedrnn::cell_name(t.cell()); })
      .def_property_readonly("reverse", &PyTape::reverse)
      .def_property_readonly("dtype", [](const PyTape& t) { return t.dtype; })
      .def_property_readonly("shape", [](const PyTape& t) {
        const auto& d = t.dims();
        return py::make_tuple(d.T, d.B, d.I, d.H);
      }, "(T, B, I, H)")
      .def_property_readonly("nbytes", &PyTape::bytes, "bytes the tape holds (see rnn.h)")
      .def("arrays", &tape_arrays,
           "(h_states, c_states or None, gates or None): views of the tape's buffers.");

  m.def("forward", &forward, py::arg("cell"), py::arg("x"), py::arg("h0"), py::arg("c0"),
        py::arg("w_ih"), py::arg("w_hh"), py::arg("b_ih"), py::arg("b_hh"), py::arg("lengths"),
        py::arg("reverse"), py::arg("training"), py::arg("y") = py::none(),
        "One layer, one direction. Returns (y, h_n, c_n or None, tape or None). y, when given,\n"
        "is written in place of a new array: (T, B, H), rows evenly spaced (the columns of one\n"
        "direction in a bidirectional layer's output), sharing no memory with the inputs.");
  m.def("backward", &backward, py::arg("tape"), py::arg("dy"), py::arg("dh_n"), py::arg("dc_n"),
        py::arg("need_dx") = true,
        "Returns (dx or None, dh0, dc0 or None, dw_ih, dw_hh, db_ih or None, db_hh or None); dx\n"
        "is None, and not computed, when need_dx is False. dy's rows may be evenly spaced, as\n"
        "y's (one direction's columns of a bidirectional dy).");
  m.def("forward_pair", &forward_pair, py::arg("call_a"), py::arg("call_b"),
        "Two independent forward calls, each a tuple of forward's arguments (a bidirectional\n"
        "layer's directions; their y may be the two halves of one array's rows). Returns the\n"
        "two calls' results, the same as forward's; side by side on two threads where each\n"
        "call's steps are too small to share among the threads.");
  m.def("backward_pair", &backward_pair, py::arg("call_a"), py::arg("call_b"),
        "Two backward calls, each a tuple (tape, dy, dh_n, dc_n, need_dx); returns their\n"
        "results, the same as backward's.");
  m.def("tape_from_arrays", &tape_from_arrays, py::arg("cell"), py::arg("x"), py::arg("w_ih"),
        py::arg("w_hh"), py::arg("b_ih"), py::arg("b_hh"), py::arg("lengths"), py::arg("reverse"),
        py::arg("h_states"), py::arg("c_states"), py::arg("gates"),
        "A tape for backward that views the arrays Tape.arrays() gave and the forward's inputs.");
  m.def("build_info", []() {
    const auto info = fusedrnn::build_info();
    py::dict d;
    d["compiler"] = info.compiler;
    d["simd"] = info.simd;
    d["recurrent_kernel"] = info.recurrent;
    d["blas"] = info.blas;
    d["threads"] = info.threads;
    d["openmp_threads"] = info.openmp_threads;
    return d;
  });
  m.def("gemm_gflops",
        [](const py::object& dtype, int64_t n, int repeats) {
          const py::dtype dt = py::dtype::from_args(dtype);
          if (!dt.equal(py::dtype::of<float>()) && !dt.equal(py::dtype::of<double>()))
            throw py::type_error("dtype: expected float32 or float64, got " +
                                 std::string(py::str(dt)));
          const bool f64 = dt.equal(py::dtype::of<double>());
          py::gil_scoped_release release;
          return fusedrnn::gemm_gflops(f64, n, repeats);
        },
        py::arg("dtype"), py::arg("n") = 2048, py::arg("repeats") = 5,
        "Median GFLOP/s of n×n×n GEMMs through the kernels' BLAS: the bench's ceiling.");
  m.def(
      "read_gbps",
      [](int64_t bytes, int repeats) {
        py::gil_scoped_release release;
        return fusedrnn::read_gbps(bytes, repeats);
      },
      py::arg("bytes"), py::arg("repeats") = 5,
      "Median GB/s at which the kernels' threads read a buffer of `bytes`, each its share: the\n"
      "bench's bandwidth for a case's W_hh.");
  m.def(
      "core_round_trip_ns",
      [](int repeats) -> std::optional<double> {
        double ns;
        {
          py::gil_scoped_release release;
          ns = fusedrnn::core_round_trip_ns(repeats);
        }
        if (std::isnan(ns)) return std::nullopt;
        return ns;
      },
      py::arg("repeats") = 5,
      "Median ns of a cache line's round trip between two threads on the first two CPUs this\n"
      "process may run on (on a 2-CPU VM: whether its two vCPUs share an L3); None with one CPU\n"
      "or where threads cannot be pinned.");
  m.def("empty",
        [](const std::vector<int64_t>& shape, const py::object& dtype) {
          const py::dtype dt = py::dtype::from_args(dtype);
          if (!dt.equal(py::dtype::of<float>()) && !dt.equal(py::dtype::of<double>()))
            throw py::type_error("dtype: expected float32 or float64, got " +
                                 std::string(py::str(dt)));
          for (const int64_t n : shape)
            if (n < 0) throw py::value_error("shape: expected sizes >= 0, got " + shape_str(shape));
          return output_array(dt, std::vector<py::ssize_t>(shape.begin(), shape.end()));
        },
        py::arg("shape"), py::arg("dtype"),
        "An uninitialised array as forward's y: one of 128 KB or more takes memory kept from\n"
        "dropped outputs (see release_memory).");
  m.def("release_memory", &fusedrnn::release_memory,
        "Frees the scratch memory the calling thread keeps between calls (and the second call\n"
        "of a pair run side by side) and the memory of dropped tapes and outputs kept for the\n"
        "next ones.");
  m.def(
      "kept_memory",
      [] {
        const fusedrnn::KeptMemoryNow now = fusedrnn::kept_memory();
        py::dict kept;
        kept["tapes"] = py::make_tuple(now.tape_blocks, now.tape_bytes, now.tape_fresh);
        kept["outputs"] = py::make_tuple(now.output_blocks, now.output_bytes, now.output_fresh);
        return kept;
      },
      "The memory of dropped tapes and outputs kept now (what release_memory frees), and the\n"
      "blocks taken fresh so far: {'tapes': (blocks, bytes, fresh), 'outputs': (...)}.");
  m.def("share_openmp_threads",
        [](const py::object& path) {
          if (!py::isinstance<py::str>(path))
            throw py::type_error("library_path: expected a str, got " + type_name(path));
          const std::string p = path.cast<std::string>();
          py::gil_scoped_release release;  // waits for a job of another thread to end
          return fusedrnn::share_openmp_threads(p.c_str());
        },
        py::arg("library_path"),
        "Runs the kernels' parallel loops on the threads of the OpenMP runtime (libgomp) the\n"
        "process loaded from library_path, such as torch's; '' goes back to fusedrnn's own.\n"
        "False, changing nothing, where it is not loaded. Results do not change.");
  m.def("set_num_threads", &fusedrnn::set_num_threads, py::arg("threads"),
        "Threads for the kernels (GEMM blocks and pointwise rows); results do not depend on it.");
}
