// pybind11 glue of the CUDA backend: takes any array that exports itself through DLPack on a
// CUDA device (torch, CuPy, JAX, ...) without a copy, checks it (it does not trust the Python
// layer), releases the GIL and calls the CUDA kernels. Results are DeviceArray objects that export
// themselves through DLPack, so that the caller's library takes them over without a copy.
//
// Streams: inputs are requested for the legacy default stream (DLPack's stream=1), which makes
// the producer order its pending work before ours; the kernels run there and synchronize before
// returning, so the results may be consumed on any stream.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "dlpack_abi.h"
#include "fusedrnn/rnn.h"
#include "fusedrnn/rnn_cuda.h"

namespace py = pybind11;
namespace dl = fusedrnn::dlpack;
namespace frc = fusedrnn::cuda;
using fusedrnn::Cell;

namespace {

constexpr int kLegacyDefaultStream = 1;  // DLPack's name for CUDA's legacy default stream

std::string type_name(const py::handle& obj) {
  return std::string(py::str(py::type::of(obj).attr("__name__")));
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

// The element types this backend computes in: float32 and float64.
enum class DType { F32, F64 };

const char* dtype_name(DType t) { return t == DType::F32 ? "float32" : "float64"; }
int itemsize(DType t) { return t == DType::F32 ? 4 : 8; }

std::string dl_dtype_name(const dl::DLDataType& t) {
  static const char* codes[] = {"int", "uint", "float", "opaque", "bfloat", "complex", "bool"};
  const std::string code = t.code < 7 ? codes[t.code] : "code" + std::to_string(t.code);
  return code + std::to_string(t.bits) + (t.lanes != 1 ? "x" + std::to_string(t.lanes) : "");
}

// ---------------------------------------------------------------------------------------------
// Arrays borrowed from another library.

// One array taken over through DLPack; the producer's deleter runs when this is destroyed. That
// is with the GIL held (a tape dropped by Python) or without (a tape's last view freed by its
// consumer on a thread of its own, torch's autograd workers say): a deleter that needs the GIL
// takes it (NumPy's does), as DLPack asks of producers.
class Imported {
 public:
  Imported(dl::DLManagedTensor* legacy, dl::DLManagedTensorVersioned* versioned)
      : legacy_(legacy), versioned_(versioned) {}
  ~Imported() {
    if (legacy_ && legacy_->deleter) legacy_->deleter(legacy_);
    if (versioned_ && versioned_->deleter) versioned_->deleter(versioned_);
  }
  Imported(const Imported&) = delete;
  Imported& operator=(const Imported&) = delete;

  const dl::DLTensor& tensor() const { return legacy_ ? legacy_->dl_tensor : versioned_->dl_tensor; }
  const void* data() const {
    return static_cast<const char*>(tensor().data) + tensor().byte_offset;
  }
  std::vector<int64_t> shape() const {
    return std::vector<int64_t>(tensor().shape, tensor().shape + tensor().ndim);
  }
  int device() const { return tensor().device.device_id; }

 private:
  dl::DLManagedTensor* legacy_;
  dl::DLManagedTensorVersioned* versioned_;
};

// Asks obj for a DLPack capsule on the legacy default stream (the 1.0 form first, as the
// specification says; producers older than it reject max_version with a TypeError).
py::object request_capsule(const py::handle& obj) {
  try {
    return obj.attr("__dlpack__")(py::arg("stream") = kLegacyDefaultStream,
                                  py::arg("max_version") = py::make_tuple(1, 0));
  } catch (py::error_already_set& e) {
    if (!e.matches(PyExc_TypeError)) throw;
  }
  return obj.attr("__dlpack__")(py::arg("stream") = kLegacyDefaultStream);
}

// obj as a CUDA array, or a TypeError/ValueError naming it.
std::shared_ptr<Imported> import_array(const py::handle& obj, const char* name) {
  if (!py::hasattr(obj, "__dlpack__") || !py::hasattr(obj, "__dlpack_device__"))
    throw py::type_error(std::string(name) + ": expected an array on a CUDA device (one with "
                         "__dlpack__, e.g. a torch.Tensor or cupy.ndarray), got " +
                         type_name(obj));
  const auto where = obj.attr("__dlpack_device__")().cast<std::pair<int, int>>();
  if (where.first != dl::kDLCUDA)
    throw py::value_error(std::string(name) + ": expected an array on a CUDA device (DLPack "
                          "device type 2), got a " + type_name(obj) + " on device type " +
                          std::to_string(where.first) +
                          (where.first == dl::kDLCPU ? " (CPU)" : ""));
  py::object capsule = request_capsule(obj);
  PyObject* cap = capsule.ptr();
  if (PyCapsule_IsValid(cap, "dltensor_versioned")) {
    auto* m = static_cast<dl::DLManagedTensorVersioned*>(
        PyCapsule_GetPointer(cap, "dltensor_versioned"));
    if (m->version.major != 1) {
      // Not ours to delete: the capsule keeps it, and its destructor frees it.
      throw py::value_error(std::string(name) + ": expected DLPack version 1.x, got " +
                            std::to_string(m->version.major) + "." +
                            std::to_string(m->version.minor));
    }
    if (PyCapsule_SetName(cap, "used_dltensor_versioned") != 0) throw py::error_already_set();
    return std::make_shared<Imported>(nullptr, m);
  }
  if (PyCapsule_IsValid(cap, "dltensor")) {
    auto* m = static_cast<dl::DLManagedTensor*>(PyCapsule_GetPointer(cap, "dltensor"));
    if (PyCapsule_SetName(cap, "used_dltensor") != 0) throw py::error_already_set();
    return std::make_shared<Imported>(m, nullptr);
  }
  throw py::type_error(std::string(name) + ": __dlpack__ of " + type_name(obj) +
                       " returned no DLPack capsule");
}

// The checks every array gets: device, dtype, shape, C-contiguity and alignment.
void check_array(const Imported& a, const char* name, int device, DType dtype,
                 const std::vector<int64_t>& shape) {
  const dl::DLTensor& t = a.tensor();
  if (t.device.device_type != dl::kDLCUDA || t.device.device_id != device)
    throw py::value_error(std::string(name) + ": expected an array on CUDA device " +
                          std::to_string(device) + " (that of x), got one on device type " +
                          std::to_string(t.device.device_type) + " index " +
                          std::to_string(t.device.device_id));
  if (t.dtype.code != dl::kDLFloat || t.dtype.lanes != 1 || t.dtype.bits != 8 * itemsize(dtype))
    throw py::type_error(std::string(name) + ": expected dtype " + dtype_name(dtype) +
                         " (that of x), got " + dl_dtype_name(t.dtype));
  if (a.shape() != shape)
    throw py::value_error(std::string(name) + ": expected shape " + shape_str(shape) + ", got " +
                          shape_str(a.shape()));
  // C-contiguous: strides absent, or each the product of the later extents (extent-1 axes may
  // have any stride).
  int64_t expected = 1;
  for (int i = t.ndim - 1; t.strides && i >= 0; --i) {
    if (t.shape[i] != 1 && t.strides[i] != expected)
      throw py::value_error(std::string(name) + ": expected a C-contiguous array, got a strided "
                            "one (.contiguous() in torch, cupy.ascontiguousarray in CuPy)");
    expected *= t.shape[i];
  }
  if (reinterpret_cast<std::uintptr_t>(a.data()) % itemsize(dtype) != 0)
    throw py::value_error(std::string(name) + ": expected an array aligned to its element size");
}

// The dtype of x, which every other array must share.
DType dtype_of(const Imported& x) {
  const dl::DLDataType& t = x.tensor().dtype;
  if (t.code == dl::kDLFloat && t.lanes == 1 && t.bits == 32) return DType::F32;
  if (t.code == dl::kDLFloat && t.lanes == 1 && t.bits == 64) return DType::F64;
  throw py::type_error("x: expected dtype float32 or float64, got " + dl_dtype_name(t));
}

std::shared_ptr<Imported> optional_import(const py::object& obj, const char* name, int device,
                                          DType dtype, const std::vector<int64_t>& shape) {
  if (obj.is_none()) return nullptr;
  auto a = import_array(obj, name);
  check_array(*a, name, device, dtype, shape);
  return a;
}

template <typename T>
const T* cptr(const std::shared_ptr<Imported>& a) {
  return a ? static_cast<const T*>(a->data()) : nullptr;
}

// ---------------------------------------------------------------------------------------------
// Arrays this module hands out.

// What an exported DLManagedTensor points back to: keeps the memory's owner alive until the
// consumer calls the deleter, which may happen on any thread and without the GIL (a tape that
// goes with its last view releases its Imported arrays then: see Imported).
struct ExportContext {
  std::shared_ptr<const void> owner;
  std::vector<int64_t> shape;
};

template <typename Managed>
void delete_managed(Managed* self) {
  delete static_cast<ExportContext*>(self->manager_ctx);
  delete self;
}

// A capsule that was never consumed still owns its tensor.
template <typename Managed>
void capsule_destructor(PyObject* cap, const char* name) {
  if (!PyCapsule_IsValid(cap, name)) return;  // consumed (renamed "used_...")
  auto* m = static_cast<Managed*>(PyCapsule_GetPointer(cap, name));
  if (m && m->deleter) m->deleter(m);
}

// A float array in device memory: a result of forward/backward, or a view of a tape's buffers.
// Any DLPack consumer takes it over without a copy: torch.from_dlpack(a), cupy.from_dlpack(a),
// jax.dlpack.from_dlpack(a).
class DeviceArray {
 public:
  // Fresh memory on the current device.
  DeviceArray(DType dtype, std::vector<int64_t> shape) : shape_(std::move(shape)), dtype_(dtype) {
    int64_t n = 1;
    for (int64_t e : shape_) n *= e;
    auto memory = std::make_shared<frc::DeviceMemory>(std::size_t(n) * itemsize(dtype));
    data_ = memory->get();
    device_ = memory->device();
    owner_ = std::move(memory);
  }
  // A view of memory on `device` that `owner` keeps alive.
  DeviceArray(std::shared_ptr<const void> owner, void* data, int device, DType dtype,
              std::vector<int64_t> shape)
      : owner_(std::move(owner)), data_(data), device_(device), shape_(std::move(shape)),
        dtype_(dtype) {}

  template <typename T>
  T* data() const { return static_cast<T*>(data_); }
  int device() const { return device_; }
  py::tuple shape() const {
    py::tuple t(shape_.size());
    for (std::size_t i = 0; i < shape_.size(); ++i) t[i] = shape_[i];
    return t;
  }
  std::string dtype() const { return dtype_name(dtype_); }

  py::tuple dlpack_device() const { return py::make_tuple(int(dl::kDLCUDA), device()); }

  // The data is complete when this object exists (the kernels synchronized), so any stream the
  // consumer names may use it at once.
  py::object dlpack(const py::object& /*stream*/, const py::object& max_version,
                    const py::object& dl_device, const py::object& copy) const {
    if (!dl_device.is_none()) {
      const auto want = dl_device.cast<std::pair<int, int>>();
      if (want.first != dl::kDLCUDA || want.second != device())
        throw py::buffer_error("dl_device: this array lives on CUDA device " +
                               std::to_string(device()) + " and cannot be exported elsewhere");
    }
    if (!copy.is_none() && copy.cast<bool>())
      throw py::buffer_error("copy: a DeviceArray is exported without a copy only; copy it in "
                             "the consumer");
    auto* ctx = new ExportContext{owner_, shape_};
    dl::DLTensor t{};
    t.data = data_;
    t.device = {dl::kDLCUDA, device()};
    t.ndim = static_cast<int32_t>(ctx->shape.size());
    t.dtype = {dl::kDLFloat, static_cast<uint8_t>(8 * itemsize(dtype_)), 1};
    t.shape = ctx->shape.data();
    t.strides = nullptr;
    t.byte_offset = 0;
    const bool versioned =
        !max_version.is_none() && max_version.cast<std::pair<int, int>>().first >= 1;
    if (versioned) {
      auto* m = new dl::DLManagedTensorVersioned{
          {1, 0}, ctx, delete_managed<dl::DLManagedTensorVersioned>, 0, t};
      return py::reinterpret_steal<py::object>(PyCapsule_New(m, "dltensor_versioned", [](PyObject* c) {
        capsule_destructor<dl::DLManagedTensorVersioned>(c, "dltensor_versioned");
      }));
    }
    auto* m = new dl::DLManagedTensor{t, ctx, delete_managed<dl::DLManagedTensor>};
    return py::reinterpret_steal<py::object>(PyCapsule_New(m, "dltensor", [](PyObject* c) {
      capsule_destructor<dl::DLManagedTensor>(c, "dltensor");
    }));
  }

 private:
  std::shared_ptr<const void> owner_;
  void* data_ = nullptr;
  int device_ = -1;
  std::vector<int64_t> shape_;
  DType dtype_;
};

// ---------------------------------------------------------------------------------------------
// forward and backward.

// A training forward's tape plus the arrays backward reads again, kept alive with it. Held by
// shared_ptr: the views of its buffers that arrays() hands out keep it alive too.
class CudaTape {
 public:
  // Declared before the tape, so that a tape made from arrays goes before what it views.
  std::shared_ptr<Imported> h_states, c_states, gates;  // what a tape made from arrays views
  std::shared_ptr<Imported> x, w_ih, w_hh, b_ih, b_hh;
  std::variant<std::unique_ptr<frc::DeviceTape<float>>, std::unique_ptr<frc::DeviceTape<double>>>
      tape;
  DType dtype;
  bool tf32;

  const fusedrnn::Dims& dims() const {
    return std::visit([](const auto& t) -> const fusedrnn::Dims& { return t->dims(); }, tape);
  }
  Cell cell() const { return std::visit([](const auto& t) { return t->cell(); }, tape); }
  bool reverse() const { return std::visit([](const auto& t) { return t->reverse(); }, tape); }
  int device() const { return std::visit([](const auto& t) { return t->device(); }, tape); }
  std::size_t bytes() const { return std::visit([](const auto& t) { return t->bytes(); }, tape); }
};

struct Inputs {
  Cell cell;
  fusedrnn::Dims dims;
  DType dtype;
  int device;
  std::shared_ptr<Imported> x, w_ih, w_hh, b_ih, b_hh, h0, c0;
  std::optional<py::array> lengths;  // host int64 [B]
};

Cell to_cell(int cell) {
  if (cell < 0 || cell > 4)
    throw py::value_error("cell: expected 0..4 (lstm, gru, gru_reset_before, rnn_tanh, "
                          "rnn_relu), got " + std::to_string(cell));
  return static_cast<Cell>(cell);
}

std::optional<py::array> host_lengths(const py::object& obj, int64_t B) {
  if (obj.is_none()) return std::nullopt;
  if (!py::isinstance<py::array>(obj))
    throw py::type_error("lengths: expected a host numpy.ndarray of int64, got " + type_name(obj));
  auto a = py::reinterpret_borrow<py::array>(obj);
  if (!a.dtype().equal(py::dtype::of<int64_t>()))
    throw py::type_error("lengths: expected dtype int64, got " + std::string(py::str(a.dtype())));
  if (a.ndim() != 1 || a.shape(0) != B || !(a.flags() & py::array::c_style))
    throw py::value_error("lengths: expected a contiguous array of shape (" + std::to_string(B) +
                          ",)");
  return a;
}

Inputs check_inputs(int cell_id, const py::object& x_obj, const py::object& h0,
                    const py::object& c0, const py::object& w_ih, const py::object& w_hh_obj,
                    const py::object& b_ih, const py::object& b_hh, const py::object& lengths) {
  Inputs in;
  in.cell = to_cell(cell_id);
  in.x = import_array(x_obj, "x");
  if (in.x->tensor().ndim != 3)
    throw py::value_error("x: expected a 3-d array (T, B, I), got shape " +
                          shape_str(in.x->shape()));
  in.dtype = dtype_of(*in.x);
  in.device = in.x->device();
  const auto xs = in.x->shape();
  const int64_t T = xs[0], B = xs[1], I = xs[2];
  check_array(*in.x, "x", in.device, in.dtype, xs);
  in.w_hh = import_array(w_hh_obj, "w_hh");
  if (in.w_hh->tensor().ndim != 2)
    throw py::value_error("w_hh: expected a 2-d array (G*H, H), got shape " +
                          shape_str(in.w_hh->shape()));
  const int64_t H = in.w_hh->shape()[1];
  const int64_t GH = fusedrnn::gate_count(in.cell) * H;
  in.dims = {T, B, I, H};
  check_array(*in.w_hh, "w_hh", in.device, in.dtype, {GH, H});
  in.w_ih = optional_import(w_ih, "w_ih", in.device, in.dtype, {GH, I});
  if (!in.w_ih) throw py::type_error("w_ih: expected an array on a CUDA device, got None");
  if (b_ih.is_none() != b_hh.is_none())
    throw py::value_error("b_ih, b_hh: expected both or neither, got only one");
  in.b_ih = optional_import(b_ih, "b_ih", in.device, in.dtype, {GH});
  in.b_hh = optional_import(b_hh, "b_hh", in.device, in.dtype, {GH});
  in.h0 = optional_import(h0, "h0", in.device, in.dtype, {B, H});
  if (fusedrnn::has_cell_state(in.cell)) in.c0 = optional_import(c0, "c0", in.device, in.dtype, {B, H});
  else if (!c0.is_none())
    throw py::value_error("c0: expected None for a cell without c state, got " + type_name(c0));
  in.lengths = host_lengths(lengths, B);
  return in;
}

// A CudaTape holding what backward reads again of a forward's inputs; the caller sets its tape.
std::shared_ptr<CudaTape> tape_keeping(const Inputs& in, bool tf32) {
  auto t = std::make_shared<CudaTape>();
  t->x = in.x;
  t->w_ih = in.w_ih;
  t->w_hh = in.w_hh;
  t->b_ih = in.b_ih;
  t->b_hh = in.b_hh;
  t->dtype = in.dtype;
  t->tf32 = tf32;
  return t;
}

template <typename T>
py::tuple forward_typed(Inputs& in, bool reverse, bool training, bool tf32) {
  const auto& d = in.dims;
  const bool has_c = fusedrnn::has_cell_state(in.cell);
  const int64_t* lengths = in.lengths ? static_cast<const int64_t*>(in.lengths->data()) : nullptr;
  std::optional<DeviceArray> y, h_n, c_n;
  std::unique_ptr<frc::DeviceTape<T>> tape;
  {
    py::gil_scoped_release release;
    frc::DeviceGuard guard(in.device);
    y.emplace(in.dtype, std::vector<int64_t>{d.T, d.B, d.H});
    h_n.emplace(in.dtype, std::vector<int64_t>{d.B, d.H});
    if (has_c) c_n.emplace(in.dtype, std::vector<int64_t>{d.B, d.H});
    if (training) tape = std::make_unique<frc::DeviceTape<T>>(in.cell, d, reverse, lengths);
    frc::ForwardArgs<T> a;
    a.cell = in.cell;
    a.dims = d;
    a.reverse = reverse;
    a.x = cptr<T>(in.x);
    a.h0 = cptr<T>(in.h0);
    a.c0 = cptr<T>(in.c0);
    a.weights = {cptr<T>(in.w_ih), cptr<T>(in.w_hh), cptr<T>(in.b_ih), cptr<T>(in.b_hh)};
    a.lengths = lengths;
    a.y = y->data<T>();
    a.ldy = d.H;
    a.h_n = h_n->data<T>();
    a.c_n = has_c ? c_n->data<T>() : nullptr;
    a.tape = tape.get();
    a.tf32 = tf32;
    frc::forward(a);
  }
  py::object tape_obj = py::none();
  if (training) {
    auto t = tape_keeping(in, tf32);
    t->tape = std::move(tape);
    tape_obj = py::cast(std::move(t));
  }
  const py::object c = c_n ? py::cast(std::move(*c_n)) : py::object(py::none());
  return py::make_tuple(std::move(*y), std::move(*h_n), c, tape_obj);
}

py::tuple forward(int cell, const py::object& x, const py::object& h0, const py::object& c0,
                  const py::object& w_ih, const py::object& w_hh, const py::object& b_ih,
                  const py::object& b_hh, const py::object& lengths, bool reverse, bool training,
                  bool tf32) {
  Inputs in = check_inputs(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths);
  if (in.dtype == DType::F32) return forward_typed<float>(in, reverse, training, tf32);
  return forward_typed<double>(in, reverse, training, tf32);
}

template <typename T>
py::tuple backward_typed(const CudaTape& ct, const frc::DeviceTape<T>& tape,
                         const std::shared_ptr<Imported>& dy,
                         const std::shared_ptr<Imported>& dh_n,
                         const std::shared_ptr<Imported>& dc_n) {
  const auto& d = tape.dims();
  const bool has_c = fusedrnn::has_cell_state(tape.cell());
  const bool has_bias = ct.b_ih != nullptr;
  const int64_t GH = fusedrnn::gate_count(tape.cell()) * d.H;
  const DType dt = ct.dtype;
  std::optional<DeviceArray> dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh;
  {
    py::gil_scoped_release release;
    frc::DeviceGuard guard(tape.device());
    dx.emplace(dt, std::vector<int64_t>{d.T, d.B, d.I});
    dh0.emplace(dt, std::vector<int64_t>{d.B, d.H});
    if (has_c) dc0.emplace(dt, std::vector<int64_t>{d.B, d.H});
    dw_ih.emplace(dt, std::vector<int64_t>{GH, d.I});
    dw_hh.emplace(dt, std::vector<int64_t>{GH, d.H});
    if (has_bias) {
      db_ih.emplace(dt, std::vector<int64_t>{GH});
      db_hh.emplace(dt, std::vector<int64_t>{GH});
    }
    frc::BackwardArgs<T> a;
    a.tape = &tape;
    a.x = cptr<T>(ct.x);
    a.weights = {cptr<T>(ct.w_ih), cptr<T>(ct.w_hh), cptr<T>(ct.b_ih), cptr<T>(ct.b_hh)};
    a.dy = cptr<T>(dy);
    a.lddy = d.H;
    a.dh_n = cptr<T>(dh_n);
    a.dc_n = cptr<T>(dc_n);
    a.dx = dx->data<T>();
    a.dh0 = dh0->data<T>();
    a.dc0 = has_c ? dc0->data<T>() : nullptr;
    a.dw_ih = dw_ih->data<T>();
    a.dw_hh = dw_hh->data<T>();
    a.db_ih = has_bias ? db_ih->data<T>() : nullptr;
    a.db_hh = has_bias ? db_hh->data<T>() : nullptr;
    a.tf32 = ct.tf32;
    frc::backward(a);
  }
  const auto or_none = [](std::optional<DeviceArray>& arr) -> py::object {
    return arr ? py::cast(std::move(*arr)) : py::object(py::none());
  };
  return py::make_tuple(or_none(dx), or_none(dh0), or_none(dc0), or_none(dw_ih), or_none(dw_hh),
                        or_none(db_ih), or_none(db_hh));
}

py::tuple backward(const py::object& tape_obj, const py::object& dy, const py::object& dh_n,
                   const py::object& dc_n) {
  if (!py::isinstance<CudaTape>(tape_obj))
    throw py::type_error("tape: expected a fusedrnn._cuda.Tape from a training forward, got " +
                         type_name(tape_obj));
  const CudaTape& ct = tape_obj.cast<const CudaTape&>();
  const auto& d = ct.dims();
  const int device = ct.device();
  auto dy_a = optional_import(dy, "dy", device, ct.dtype, {d.T, d.B, d.H});
  auto dh_a = optional_import(dh_n, "dh_n", device, ct.dtype, {d.B, d.H});
  std::shared_ptr<Imported> dc_a;
  if (fusedrnn::has_cell_state(ct.cell())) dc_a = optional_import(dc_n, "dc_n", device, ct.dtype, {d.B, d.H});
  else if (!dc_n.is_none())
    throw py::value_error("dc_n: expected None for a cell without c state, got " +
                          type_name(dc_n));
  return std::visit([&](const auto& t) { return backward_typed(ct, *t, dy_a, dh_a, dc_a); },
                    ct.tape);
}

// Views of a tape's buffers as DeviceArrays (the layout of rnn.h), each keeping the tape alive.
py::tuple tape_arrays(const std::shared_ptr<CudaTape>& ct) {
  const auto& d = ct->dims();
  const int64_t width = fusedrnn::tape_gate_width(ct->cell());
  return std::visit([&](const auto& tape) {
    const auto view = [&](auto* data, std::vector<int64_t> shape) -> py::object {
      if (!data) return py::none();
      return py::cast(DeviceArray(ct, data, ct->device(), ct->dtype, std::move(shape)));
    };
    return py::make_tuple(view(tape->h_states(), {d.T + 1, d.B, d.H}),
                          view(tape->c_states(), {d.T + 1, d.B, d.H}),
                          view(tape->gates(), {d.T, d.B, width * d.H}));
  }, ct->tape);
}

// A tape rebuilt from the arrays tape_arrays gave (or copies of them, e.g. a framework's tensors)
// and the forward's inputs, for backward. It views the arrays: no copy.
std::shared_ptr<CudaTape> tape_from_arrays(int cell, const py::object& x, const py::object& w_ih,
                                           const py::object& w_hh, const py::object& b_ih,
                                           const py::object& b_hh, const py::object& lengths,
                                           bool reverse, const py::object& h_states,
                                           const py::object& c_states, const py::object& gates,
                                           bool tf32) {
  Inputs in = check_inputs(cell, x, py::none(), py::none(), w_ih, w_hh, b_ih, b_hh, lengths);
  const auto& d = in.dims;
  const int64_t width = fusedrnn::tape_gate_width(in.cell);
  auto t = tape_keeping(in, tf32);
  t->h_states = optional_import(h_states, "h_states", in.device, in.dtype, {d.T + 1, d.B, d.H});
  if (!t->h_states) throw py::type_error("h_states: expected an array on a CUDA device, got None");
  if (fusedrnn::has_cell_state(in.cell)) {
    t->c_states = optional_import(c_states, "c_states", in.device, in.dtype, {d.T + 1, d.B, d.H});
    if (!t->c_states)
      throw py::type_error("c_states: expected an array on a CUDA device for LSTM, got None");
  } else if (!c_states.is_none()) {
    throw py::value_error("c_states: expected None for a cell without c state, got " +
                          type_name(c_states));
  }
  if (width) {
    t->gates = optional_import(gates, "gates", in.device, in.dtype, {d.T, d.B, width * d.H});
    if (!t->gates) throw py::type_error("gates: expected an array on a CUDA device, got None");
  } else if (!gates.is_none()) {
    throw py::value_error("gates: expected None for an RNN cell, got " + type_name(gates));
  }
  const int64_t* host_lengths =
      in.lengths ? static_cast<const int64_t*>(in.lengths->data()) : nullptr;
  const auto make = [&](auto zero) {
    using T = decltype(zero);
    const auto ptr = [](const std::shared_ptr<Imported>& a) {
      return a ? static_cast<T*>(const_cast<void*>(a->data())) : nullptr;
    };
    const fusedrnn::TapeBuffers<T> buffers{ptr(t->h_states), ptr(t->c_states), ptr(t->gates)};
    py::gil_scoped_release release;  // the lengths' copy waits for the device
    frc::DeviceGuard guard(in.device);
    return std::make_unique<frc::DeviceTape<T>>(in.cell, d, reverse, host_lengths, buffers);
  };
  if (in.dtype == DType::F32) t->tape = make(0.0f);
  else t->tape = make(0.0);
  return t;
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "fusedrnn CUDA kernels (one layer, one direction); use the fusedrnn package API";
  m.attr("__version__") = FUSEDRNN_VERSION;

  py::class_<DeviceArray>(m, "DeviceArray",
                          "A result in device memory; import it with your library's from_dlpack.")
      .def_property_readonly("shape", &DeviceArray::shape)
      .def_property_readonly("dtype", &DeviceArray::dtype)
      .def_property_readonly("device", &DeviceArray::device, "CUDA device index")
      .def("__dlpack_device__", &DeviceArray::dlpack_device)
      .def("__dlpack__", &DeviceArray::dlpack, py::kw_only(), py::arg("stream") = py::none(),
           py::arg("max_version") = py::none(), py::arg("dl_device") = py::none(),
           py::arg("copy") = py::none());

  py::class_<CudaTape, std::shared_ptr<CudaTape>>(
      m, "Tape", "What a training forward keeps for backward (opaque but for arrays()).")
      .def_property_readonly("cell", [](const CudaTape& t) { return fusedrnn::cell_name(t.cell()); })
      .def_property_readonly("reverse", &CudaTape::reverse)
      .def_property_readonly("dtype", [](const CudaTape& t) { return dtype_name(t.dtype); })
      .def_property_readonly("device", &CudaTape::device)
      .def_property_readonly("shape", [](const CudaTape& t) {
        const auto& d = t.dims();
        return py::make_tuple(d.T, d.B, d.I, d.H);
      }, "(T, B, I, H)")
      .def_property_readonly("nbytes", &CudaTape::bytes, "device bytes the tape holds (see rnn.h)")
      .def("arrays", &tape_arrays,
           "(h_states, c_states or None, gates or None): views of the tape's buffers, which keep "
           "it alive");

  m.def("forward", &forward, py::arg("cell"), py::arg("x"), py::arg("h0"), py::arg("c0"),
        py::arg("w_ih"), py::arg("w_hh"), py::arg("b_ih"), py::arg("b_hh"), py::arg("lengths"),
        py::arg("reverse"), py::arg("training"), py::arg("tf32"),
        "One layer, one direction. Returns (y, h_n, c_n or None, tape or None) as DeviceArrays.");
  m.def("backward", &backward, py::arg("tape"), py::arg("dy"), py::arg("dh_n"), py::arg("dc_n"),
        "Returns (dx, dh0, dc0 or None, dw_ih, dw_hh, db_ih or None, db_hh or None).");
  m.def("tape_from_arrays", &tape_from_arrays, py::arg("cell"), py::arg("x"), py::arg("w_ih"),
        py::arg("w_hh"), py::arg("b_ih"), py::arg("b_hh"), py::arg("lengths"), py::arg("reverse"),
        py::arg("h_states"), py::arg("c_states"), py::arg("gates"), py::arg("tf32"),
        "A tape for backward that views the arrays Tape.arrays() gave and the forward's inputs.");
  m.def("set_poison_allocations", &frc::set_poison_allocations, py::arg("on"),
        "Tests: fill every new device allocation with NaN bytes (catches unwritten elements).");
  m.def("availability", []() {
    const auto a = frc::availability();
    return py::make_tuple(a.ok, a.reason);
  }, "(ok, reason): whether the kernels can run on the current device, and why not.");
  m.def("build_info", []() {
    const auto b = frc::build_info();
    py::dict d;
    d["cuda_version"] = b.cuda_version;
    d["cublas_version"] = b.cublas_version;
    d["architectures"] = b.architectures;
    return d;
  });
  m.def("device_info", []() {
    const auto i = frc::device_info();
    py::dict d;
    d["device"] = i.device;
    d["name"] = i.name;
    d["compute_capability"] = py::make_tuple(i.compute_capability_major,
                                             i.compute_capability_minor);
    d["multiprocessors"] = i.multiprocessors;
    d["total_memory"] = i.total_memory;
    d["driver_version"] = i.driver_version;
    d["runtime_version"] = i.runtime_version;
    d["cublas_version"] = i.cublas_version;
    return d;
  }, "The current device (raises RuntimeError when there is none).");
}
