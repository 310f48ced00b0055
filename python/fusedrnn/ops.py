"""Functional ops: one layer, one direction, forward and backward.

This is the unit every backend implements and what other frameworks embed; the layers in
:mod:`fusedrnn.layers` compose it. Arrays are time-major and use PyTorch's parameter layout::

    x     (T, B, I)        input sequence
    w_ih  (G*H, I)         input weights, gate blocks (i, f, g, o) for LSTM, (r, z, n) for GRU
    w_hh  (G*H, H)         recurrent weights
    b_ih, b_hh (G*H,)      biases, or None for a layer without bias
    h0, c0 (B, H)          initial state (c0 for LSTM only); None means zeros
    lengths (B,) ints      optional, PackedSequence semantics: row b is valid for t < lengths[b]

G is 4 (LSTM), 3 (GRU) or 1 (RNN). Example::

    y, h_n, c_n, tape = fusedrnn.ops.forward("lstm", x, w_ih, w_hh, b_ih, b_hh, training=True)
    grads = fusedrnn.ops.backward(tape, dy)        # grads.dx, grads.dw_ih, ...

Arrays on a CUDA device (torch.Tensor, cupy.ndarray, JAX arrays: anything with ``__dlpack__``)
run on the CUDA backend without a copy, and the results come back as arrays of the same library.
There every array must be C-contiguous and on x's device; lengths stay a host array.
"""

from collections import namedtuple

import numpy as np

from . import _backend, _device, reference
from ._checks import (check_memory, contiguous, flag, float_array, lengths_array, shaped,
                      type_name)

CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
_KERNEL_CELLS = ("lstm", "gru", "gru_reset_before", "rnn_tanh", "rnn_relu")  # _core's numbering
GATES = reference.GATES

ForwardResult = namedtuple("ForwardResult", "y h_n c_n tape")
Gradients = namedtuple("Gradients", "dx dh0 dc0 dw_ih dw_hh db_ih db_hh")


class Tape:
    """What a training forward keeps for :func:`backward`. It holds references to x and the
    weights it was given: changing those arrays in place before backward changes the gradients.
    Its kernel part takes ``nbytes`` bytes: (T+1)·B·H·(1+[LSTM]) + T·B·H·W values, with W = 4 for
    LSTM and GRU and 0 for RNN (see csrc/include/fusedrnn/rnn.h)."""

    __slots__ = ("backend", "cell", "shape", "dtype", "_impl", "_wrap")

    def __init__(self, backend, cell, shape, dtype, impl, wrap=None):
        self.backend, self.cell, self.shape, self.dtype, self._impl = (backend, cell, shape,
                                                                        dtype, impl)
        self._wrap = wrap  # cuda: turns results into arrays of the forward's library

    @property
    def nbytes(self):
        return self._impl.nbytes if self.backend in ("cpu", "cuda") else None

    def __repr__(self):
        return f"<fusedrnn.ops.Tape {self.cell} {self.backend} (T, B, I, H)={self.shape}>"


def forward_nbytes(dtype, T, B, I, H, G, training):
    """A generous estimate of what one forward allocates: contiguous copies of x and the weights,
    the input projection, y, the states and, when training, the tape (Python ints: no overflow)."""
    T, B, I, H, G = map(int, (T, B, I, H, G))
    per_row = I + G * H * (3 if training else 1) + 2 * H
    return np.dtype(dtype).itemsize * (T * B * per_row + G * H * (I + H + 2) + 4 * B * H)


def kernel_cell(cell, reset_after=True):
    """The kernel variant for a public cell name (GRU's two reset forms are two kernels)."""
    if not isinstance(cell, str) or cell not in CELLS:
        raise ValueError(f"cell: expected one of {CELLS}, got {cell!r}")
    flag(reset_after, "reset_after")
    if cell == "gru" and not reset_after:
        return "gru_reset_before"
    return cell


def forward(cell, x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, c0=None, *, lengths=None,
            reverse=False, training=False, reset_after=True, backend="auto", tf32=False):
    """Runs one layer in one direction. Returns ``ForwardResult(y, h_n, c_n, tape)``: y (T, B, H)
    with zeros past each row's length, h_n and c_n (B, H) (c_n None unless LSTM), tape None
    unless ``training``. ``reset_after=False`` selects the GRU of Cho et al. (2014).

    x on a CUDA device selects the "cuda" backend (``backend`` "auto" or "cuda"). ``tf32=True``
    (cuda, float32 only) lets cuBLAS round the matrix products' inputs to TF32 on tensor cores:
    faster, ~1e-3 relative error; it also applies to the tape's backward."""
    kcell = kernel_cell(cell, reset_after)
    reverse, training = flag(reverse, "reverse"), flag(training, "training")
    tf32 = flag(tf32, "tf32")
    if backend == "cuda" or _device.cuda_device(x) is not None:
        return _forward_cuda(kcell, cell, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse,
                             training, backend, tf32)
    backend = _backend.resolve(backend)
    if tf32:
        raise ValueError(f"tf32: expected False for the {backend!r} backend (TF32 is a "
                         "cuda-backend option), got True")
    x = float_array(x, "x", ndim=3)
    dtype = x.dtype
    T, B, I = x.shape
    if min(x.shape) == 0:
        raise ValueError(f"x: expected a non-empty (T, B, I) array, got shape {x.shape}")
    w_hh = float_array(w_hh, "w_hh", dtype, ndim=2, source="x's")
    H = w_hh.shape[1]
    G = GATES[kcell]
    if H == 0:
        raise ValueError(f"w_hh: expected shape (G*H, H) with H > 0, got {w_hh.shape}")
    w_hh = shaped(w_hh, "w_hh", dtype, (G * H, H), "x's")
    w_ih = shaped(w_ih, "w_ih", dtype, (G * H, I), "x's")
    if (b_ih is None) != (b_hh is None):
        raise ValueError("b_ih, b_hh: expected both or neither, got only one")
    if b_ih is not None:
        b_ih = shaped(b_ih, "b_ih", dtype, (G * H,), "x's")
        b_hh = shaped(b_hh, "b_hh", dtype, (G * H,), "x's")
    h0 = None if h0 is None else shaped(h0, "h0", dtype, (B, H), "x's")
    if kcell != "lstm" and c0 is not None:
        raise ValueError(f"c0: expected None for cell {cell!r} (only LSTM has a cell state), "
                         f"got {type_name(c0)}")
    c0 = None if c0 is None else shaped(c0, "c0", dtype, (B, H), "x's")
    lengths = None if lengths is None else lengths_array(lengths, B, T)
    # Before any copy: a broadcast view can stand for an array far larger than memory.
    check_memory(forward_nbytes(dtype, T, B, I, H, G, training),
                 f"x: shape {x.shape} with H={H}: forward(training={training})")
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = map(contiguous, (x, w_ih, w_hh, b_ih, b_hh, h0, c0))
    return run_forward(kcell, backend, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse,
                       training)


def run_forward(kcell, backend, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse, training,
                y=None):
    """:func:`forward` on arguments already checked and made contiguous (a kernel cell name, a
    resolved backend): what the layers call for their own, already checked, parameters. The C++
    glue checks again regardless. ``y``, a (T, B, H) array whose rows are evenly spaced (one
    direction's columns of a bidirectional output), receives y instead of a new array."""
    B, H = x.shape[1], w_hh.shape[1]
    if backend == "numpy":
        h0 = np.zeros((B, H), x.dtype) if h0 is None else h0
        if kcell == "lstm" and c0 is None:
            c0 = np.zeros((B, H), x.dtype)
        with np.errstate(all="ignore"):  # inf and overflow give NaN silently, as the kernels do
            y_new, h_n, c_n, impl = reference.forward(kcell, x, h0, c0, w_ih, w_hh, b_ih, b_hh,
                                                      lengths, reverse)
        if y is None:
            y = y_new
        elif y.shape != y_new.shape or y.dtype != y_new.dtype:
            raise ValueError(f"y: expected a {y_new.dtype} array of shape {y_new.shape}, got a "
                             f"{y.dtype} one of shape {y.shape}")
        else:
            y[...] = y_new
    else:
        y, h_n, c_n, impl = _backend._core.forward(_KERNEL_CELLS.index(kcell), x, h0, c0, w_ih,
                                                   w_hh, b_ih, b_hh, lengths, reverse, training,
                                                   y)
    return _forward_result(kcell, backend, x, H, training, y, h_n, c_n, impl)


def run_forward_pair(kcell, calls):
    """Two :func:`run_forward` calls of the "cpu" backend at once, each a tuple ``(x, w_ih, w_hh,
    b_ih, b_hh, h0, c0, lengths, reverse, training, y)``: a bidirectional layer's directions,
    whose y may be the two halves of one array's rows. The kernels run them side by side, a
    thread each, where their steps are too small to share among the threads; the results are
    the same either way, bit for bit."""
    cell = _KERNEL_CELLS.index(kcell)
    results = _backend._core.forward_pair(*[
        (cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, training, y)
        for x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse, training, y in calls])
    return [_forward_result(kcell, "cpu", call[0], call[2].shape[1], call[9], *result)
            for call, result in zip(calls, results)]


def _forward_result(kcell, backend, x, H, training, y, h_n, c_n, impl):
    """A forward's results as ForwardResult, with an ops.Tape around the kernel's when training."""
    public = "gru" if kcell == "gru_reset_before" else kcell
    tape = Tape(backend, public, (*x.shape, H), x.dtype, impl) if training else None
    return ForwardResult(y, h_n, c_n, tape)


def tape_shapes(cell, T, B, H, reset_after=True):
    """Shapes of the arrays :func:`tape_arrays` gives for a layer of `cell`: (h_states,
    c_states, gates), None for those the cell does not keep. Frameworks need them before the
    kernels run (torch's fake tensors, JAX's callbacks)."""
    kcell = kernel_cell(cell, reset_after)
    state = (T + 1, B, H)
    return (state, state if kcell == "lstm" else None,
            (T, B, 4 * H) if GATES[kcell] > 1 else None)


def tape_arrays(tape):
    """The arrays a compiled-kernel tape keeps, as views of it: ``(h_states, c_states, gates)``,
    h_states and c_states (T+1, B, H) (c_states None unless LSTM), gates (T, B, 4*H) (None for
    RNN); NumPy arrays for a CPU tape, the forward input's kind of device array for a CUDA one.
    For frameworks that must carry a forward's residuals as arrays of their own (torch.library
    ops, jax.custom_vjp); :func:`tape_from_arrays` turns them, with the forward's inputs, back into
    a tape."""
    if not isinstance(tape, Tape):
        raise TypeError(f"tape: expected a fusedrnn.ops.Tape, got {type_name(tape)}")
    if tape.backend == "numpy":
        raise ValueError("tape: expected a tape of the compiled kernels (backend 'cpu' or "
                         "'cuda'), got one of backend 'numpy', whose tape is not arrays")
    arrays = tape._impl.arrays()
    return arrays if tape.backend == "cpu" else tuple(
        None if a is None else tape._wrap(a) for a in arrays)


def tape_from_arrays(cell, x, w_ih, w_hh, b_ih, b_hh, h_states, c_states, gates, *, lengths=None,
                     reverse=False, reset_after=True, tf32=False):
    """A tape for :func:`backward` made of a forward's inputs (as given to :func:`forward`, h0
    and c0 aside) and the arrays :func:`tape_arrays` gave, or copies of them. It views the arrays
    without copying them; they must stay unchanged until backward. With x on a CUDA device every
    array must be there (the tape is the CUDA backend's; tf32 as in :func:`forward`)."""
    kcell = kernel_cell(cell, reset_after)
    reverse, tf32 = flag(reverse, "reverse"), flag(tf32, "tf32")
    if _device.cuda_device(x) is not None:
        _backend.resolve("cuda")
        impl = _backend.cuda_module().tape_from_arrays(
            _KERNEL_CELLS.index(kcell), x, w_ih, w_hh, b_ih, b_hh, _cuda_lengths(x, lengths),
            reverse, h_states, c_states, gates, tf32)
        return Tape("cuda", cell, impl.shape, np.dtype(impl.dtype), impl, _device.importer(x))
    _backend.resolve("cpu")  # the NumPy reference's tape is not made of arrays
    if tf32:
        raise ValueError("tf32: expected False for a tape on the CPU (TF32 is a cuda-backend "
                         "option), got True")
    x = float_array(x, "x", ndim=3)
    names = ("w_ih", "w_hh", "b_ih", "b_hh", "h_states", "c_states", "gates")
    arrays = [None if a is None else float_array(a, name, x.dtype, source="x's")
              for a, name in zip((w_ih, w_hh, b_ih, b_hh, h_states, c_states, gates), names)]
    lengths = None if lengths is None else lengths_array(lengths, x.shape[1], x.shape[0])
    x, w_ih, w_hh, b_ih, b_hh, h_states, c_states, gates = map(contiguous, [x] + arrays)
    impl = _backend._core.tape_from_arrays(_KERNEL_CELLS.index(kcell), x, w_ih, w_hh, b_ih, b_hh,
                                           lengths, reverse, h_states, c_states, gates)
    T, B, I = x.shape
    return Tape("cpu", cell, (T, B, I, w_hh.shape[1]), x.dtype, impl)


def _cuda_lengths(x, lengths):
    """lengths for the CUDA backend, which takes them as a host array: checked here against
    x's (T, B); the C++ glue checks the device arrays (device, dtype, shape, contiguity) and names
    the argument."""
    if lengths is None:
        return None
    shape = tuple(x.shape)
    if len(shape) != 3:
        raise ValueError(f"x: expected a 3-d array (T, B, I), got shape {shape}")
    return lengths_array(lengths, int(shape[1]), int(shape[0]))


def _forward_cuda(kcell, cell, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse, training,
                  backend, tf32):
    """ops.forward on the CUDA backend."""
    device = _device.cuda_device(x)
    if backend not in ("auto", "cuda"):
        raise ValueError(f"backend: x is on CUDA device {device}, expected 'auto' or 'cuda', "
                         f"got {backend!r}")
    _backend.resolve("cuda")
    if device is None:
        raise TypeError(f"x: backend 'cuda' expects an array on a CUDA device (a torch.Tensor or "
                        f"cupy.ndarray there, say), got {type_name(x)}")
    y, h_n, c_n, impl = _backend.cuda_module().forward(
        _KERNEL_CELLS.index(kcell), x, h0, c0, w_ih, w_hh, b_ih, b_hh, _cuda_lengths(x, lengths),
        reverse, training, tf32)
    wrap = _device.importer(x)
    tape = Tape("cuda", cell, impl.shape, np.dtype(impl.dtype), impl, wrap) if training else None
    return ForwardResult(wrap(y), wrap(h_n), None if c_n is None else wrap(c_n), tape)


def backward(tape, dy=None, dh_n=None, dc_n=None, *, need_dx=True):
    """Backpropagation through time for a :func:`forward` run with ``training=True``.

    dy (T, B, H) is the gradient of y, dh_n and dc_n (B, H) those of the final state; None means
    zero. Returns ``Gradients(dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh)`` (dc0 None unless LSTM,
    the bias gradients None for a layer without bias). With ``need_dx=False`` dx is None: the
    compiled CPU kernels then skip its product, a quarter of the backward's flops at I = H (an
    input that needs no gradient, such as a first layer's data)."""
    if not isinstance(tape, Tape):
        raise TypeError(f"tape: expected the fusedrnn.ops.Tape of a forward(training=True), "
                        f"got {type_name(tape)}")
    need_dx = flag(need_dx, "need_dx")
    if tape.backend == "cuda":  # the C++ glue checks the device arrays
        grads = _backend.cuda_module().backward(tape._impl, dy, dh_n, dc_n)
        grads = Gradients(*(None if g is None else tape._wrap(g) for g in grads))
        return grads if need_dx else grads._replace(dx=None)
    T, B, _, H = tape.shape
    src = "the forward's"
    dy = None if dy is None else shaped(dy, "dy", tape.dtype, (T, B, H), src)
    dh_n = None if dh_n is None else shaped(dh_n, "dh_n", tape.dtype, (B, H), src)
    if tape.cell != "lstm" and dc_n is not None:
        raise ValueError(f"dc_n: expected None for cell {tape.cell!r}, got {type_name(dc_n)}")
    dc_n = None if dc_n is None else shaped(dc_n, "dc_n", tape.dtype, (B, H), src)
    dy, dh_n, dc_n = map(contiguous, (dy, dh_n, dc_n))
    return run_backward(tape, dy, dh_n, dc_n, need_dx)


def run_backward(tape, dy, dh_n, dc_n, need_dx=True):
    """:func:`backward` on arguments already checked and made contiguous, but for dy, whose rows
    need only be evenly spaced (one direction's columns of a bidirectional dy)."""
    if tape.backend == "numpy":
        with np.errstate(all="ignore"):
            grads = Gradients(*reference.backward(tape._impl, dy, dh_n, dc_n))
        return grads if need_dx else grads._replace(dx=None)
    return Gradients(*_backend._core.backward(tape._impl, dy, dh_n, dc_n, need_dx))


def run_backward_pair(calls):
    """Two :func:`run_backward` calls on tapes of the "cpu" backend at once, each a tuple
    ``(tape, dy, dh_n, dc_n, need_dx)``, side by side where :func:`run_forward_pair` would run
    their forwards so."""
    results = _backend._core.backward_pair(*[(tape._impl, *args) for tape, *args in calls])
    return [Gradients(*grads) for grads in results]

