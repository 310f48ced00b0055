"""LSTM, GRU and RNN layers with torch.nn's arguments, parameter names and semantics.

A layer stacks :func:`fusedrnn.ops.forward` over layers and directions; stacking,
bidirectionality, dropout between layers and the batch_first/unbatched forms are handled here,
once for every cell.

``device="cuda"`` keeps the parameters on the GPU as CuPy arrays (``pip install
"fusedrnn[cuda]"``) and composes the layers there with CuPy; the inputs may be arrays of any
library on the GPU (taken without a copy through DLPack) or host arrays (copied over), and the
results come back as arrays of the input's library (NumPy for host input). ``tf32=True`` (GPU,
float32) lets the matrix products use TF32 tensor cores (see :func:`fusedrnn.ops.forward`).
"""

import functools
import numbers

import numpy as np

from . import _backend, _device, ops
from ._checks import (as_array, as_dtype, check_memory, checked_state_dict, contiguous, flag,
                      float_array, lengths_array, optional_seed, positive_int, type_name)


LAYER_BACKENDS = ("auto", "cpu", "numpy")
DEVICES = ("cpu", "cuda")


def _cupy(device):
    """CuPy, which holds a GPU layer's parameters, or a ValueError saying how to get it."""
    try:
        import cupy
    except ImportError as exc:
        raise ValueError(f"device: {device!r} keeps the parameters in CuPy arrays, and CuPy is "
                         f"not installed ({exc}); pip install 'fusedrnn[cuda]'") from exc
    return cupy


def _host_array(value, label):
    """A torch tensor or a GPU array (CuPy, JAX, ...) as something NumPy reads; else value."""
    if hasattr(value, "detach"):  # a torch tensor
        try:
            return value.detach().cpu().numpy()
        except (TypeError, RuntimeError) as exc:  # bfloat16 and the like
            raise TypeError(f"{label}: expected a float32 or float64 array, got a "
                            f"{type_name(value)} NumPy cannot hold ({exc})") from exc
    if _device.cuda_device(value) is not None:  # CuPy, JAX, ... on a GPU
        return _cupy("cuda").asnumpy(_cupy("cuda").from_dlpack(value))
    return value


class Tape:
    """What :meth:`RNNBase.forward` with ``training=True`` keeps for :meth:`RNNBase.backward`."""

    __slots__ = ("owner", "op_tapes", "masks", "layout", "wrap", "nbytes")

    def __init__(self, owner, op_tapes, masks, layout, wrap):
        self.owner = owner        # the layer that made it; backward refuses other layers' tapes
        self.op_tapes = op_tapes  # [layer][direction] -> ops.Tape
        self.masks = masks        # [layer] -> dropout mask applied to that layer's output, or None
        self.layout = layout      # (batch_first, unbatched, T, B)
        self.wrap = wrap          # turns results into arrays of the forward input's library
        self.nbytes = sum((t.nbytes or 0) for row in op_tapes for t in row) + sum(
            m.nbytes for m in masks if m is not None)


class RNNBase:
    """Shared machinery; use :class:`LSTM`, :class:`GRU` or :class:`RNN`."""

    _cell = None  # the ops cell name

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, dtype="float32", seed=None, *, backend="auto",
                 device="cpu", tf32=False):
        if self._cell is None:
            raise TypeError(f"{type(self).__name__}: expected one of LSTM, GRU or RNN (RNNBase is "
                            "their shared base), got a direct instantiation")
        self.input_size = positive_int(input_size, "input_size")
        self.hidden_size = positive_int(hidden_size, "hidden_size")
        self.num_layers = positive_int(num_layers, "num_layers")
        self.bias = flag(bias, "bias")
        self.batch_first = flag(batch_first, "batch_first")
        self.bidirectional = flag(bidirectional, "bidirectional")
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real):
            raise TypeError(f"dropout: expected a float in [0, 1), got {type_name(dropout)} "
                            f"{dropout!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout: expected a float in [0, 1), got {dropout}")
        self.dropout = float(dropout)
        self.dtype = as_dtype(dtype)
        optional_seed(seed)
        if backend == "cuda":  # a layer's device says where it runs
            raise ValueError(f"backend: expected one of {LAYER_BACKENDS}, got 'cuda' (a layer "
                             "runs on the GPU with device='cuda')")
        _backend.resolve(backend)
        if not isinstance(device, str) or device not in DEVICES:
            raise ValueError(f"device: expected one of {DEVICES}, got {device!r}")
        if device == "cuda":
            if backend != "auto":
                raise ValueError(f"backend: expected 'auto' for a layer with device='cuda', got "
                                 f"{backend!r}")
            _backend.resolve("cuda")
        self.tf32 = flag(tf32, "tf32")
        if self.tf32 and device != "cuda":
            raise ValueError("tf32: expected False for a layer on the CPU (TF32 is a GPU option), "
                             "got True")
        self._xp = _cupy(device) if device == "cuda" else np  # where the arrays live
        self.backend = backend
        self.device = device
        # Before the parameters are drawn (uniform() draws float64, then casts).
        check_memory((8 + self.dtype.itemsize) * self._param_count(),
                     f"input_size={self.input_size}, hidden_size={self.hidden_size}, "
                     f"num_layers={self.num_layers}: the parameters")
        self._rng = np.random.default_rng(seed)
        self._params = self._init_params()

    # -- parameters -----------------------------------------------------------------------
    @property
    def num_directions(self):
        return 2 if self.bidirectional else 1

    @property
    def _kernel_cell(self):
        return ops.kernel_cell(self._cell, getattr(self, "reset_after", True))

    def _param_count(self):
        """The number of parameter values, computed without building _shapes()."""
        H, G, D = self.hidden_size, ops.GATES[self._kernel_cell], self.num_directions
        per_dir = G * H * (H + (2 if self.bias else 0))
        first = D * (per_dir + G * H * self.input_size)
        return first + (self.num_layers - 1) * D * (per_dir + G * H * D * H)

    def _forward_nbytes(self, T, B, training):
        """What forward allocates, for check_memory: ops.forward per layer and direction, plus
        the stacked outputs and dropout masks; in training every layer's tape is kept."""
        # GATES by the public cell name: both of GRU's kernels have three gates, and the
        # kernel's name (_kernel_cell) costs a check of reset_after at every call.
        D, H, G, L = self.num_directions, self.hidden_size, ops.GATES[self._cell], self.num_layers
        first = ops.forward_nbytes(self.dtype, T, B, self.input_size, H, G, training)
        other = ops.forward_nbytes(self.dtype, T, B, D * H, H, G, training) if L > 1 else 0
        stacked = 3 * self.dtype.itemsize * T * B * D * H
        if training:
            return D * (first + (L - 1) * other) + L * stacked
        return D * max(first, other) + stacked

    def _shapes(self):
        """torch's parameter names and shapes, in torch's order."""
        H, G = self.hidden_size, ops.GATES[self._kernel_cell]
        shapes = {}
        for layer in range(self.num_layers):
            width = self.input_size if layer == 0 else self.num_directions * H
            for direction in range(self.num_directions):
                w_ih, w_hh, b_ih, b_hh = self._weight_names(layer, direction)
                shapes[w_ih] = (G * H, width)
                shapes[w_hh] = (G * H, H)
                if self.bias:
                    shapes[b_ih] = (G * H,)
                    shapes[b_hh] = (G * H,)
        return shapes

    def _init_params(self):
        # torch.nn's initialisation: every parameter uniform in ±1/√H.
        bound = 1.0 / np.sqrt(self.hidden_size)
        return {name: self._xp.asarray(self._rng.uniform(-bound, bound, shape).astype(self.dtype))
                for name, shape in self._shapes().items()}

    def state_dict(self):
        """Copies of the parameters as host NumPy arrays, keyed and shaped as torch.nn's
        state_dict()."""
        if self.device == "cuda":
            return {name: self._xp.asnumpy(p) for name, p in self._params.items()}
        return {name: p.copy() for name, p in self._params.items()}

    def load_state_dict(self, state_dict):
        """Strict: every key present, none unknown, every shape right. Values are copied and cast
        to the layer's dtype; on any error nothing changes."""
        new = checked_state_dict(state_dict, self._shapes(), self.dtype, _host_array)
        self._params = {name: self._xp.asarray(p) for name, p in new.items()}

    def _layer_weights(self, layer, direction):
        p = self._params
        w_ih, w_hh, b_ih, b_hh = self._weight_names(layer, direction)
        return p[w_ih], p[w_hh], p.get(b_ih), p.get(b_hh)

    @staticmethod
    @functools.lru_cache(maxsize=None)
    def _weight_names(layer, direction):
        """The keys of a layer's and direction's w_ih, w_hh, b_ih, b_hh: made once, not at
        every call (formatted anew, they took ~1 us of a small model's 20 us call)."""
        s = f"l{layer}{'_reverse' if direction else ''}"
        return f"weight_ih_{s}", f"weight_hh_{s}", f"bias_ih_{s}", f"bias_hh_{s}"

    # -- forward ----------------------------------------------------------------------------
    def __call__(self, x, state=None, lengths=None):
        """Inference: returns (y, state)."""
        y, state, _ = self.forward(x, state, lengths, training=False)
        return y, state

    def forward(self, x, state=None, lengths=None, training=False):
        """Returns (y, state, tape); tape is None unless ``training``. Dropout between layers
        acts only in training."""
        training = flag(training, "training")
        wrap = self._results_like(x)
        x, layout = self._time_major(self._on_device(x, "x"))
        batch_first, unbatched, T, B = layout
        # All of it up front, before anything is made: a failure after the first layer would
        # have drawn dropout masks.
        check_memory(self._forward_nbytes(T, B, training),
                     lambda: f"x: T={T} steps of B={B} rows with hidden_size={self.hidden_size}, "
                             f"num_layers={self.num_layers}: forward(training={training})")
        # No state: None for every op, which reads it as zeros (no zero arrays made and indexed).
        h0, c0 = (None, None) if state is None else self._initial_state(state, B, unbatched)
        if lengths is not None:
            if unbatched:
                raise ValueError("lengths: expected None for unbatched (T, I) input, got "
                                 f"{type_name(lengths)}")
            lengths = lengths_array(lengths, B, T)
        xp = self._xp
        x = self._kernel_array(x)  # once, rather than in each direction's op
        backend = None if self.device == "cuda" else _backend.resolve(self.backend)
        D, H = self.num_directions, self.hidden_size
        h_n = xp.empty((self.num_layers * D, B, H), self.dtype)
        c_n = xp.empty_like(h_n) if self._cell == "lstm" else None
        op_tapes, masks = [], []
        inp = x
        for layer in range(self.num_layers):
            outs, tapes = [], []
            # On the CPU both directions write their halves of one output: joined afterwards, the
            # copy and the fresh memory it faults in cost a bidirectional LSTM inference at T=200,
            # B=128, H=512 ~15% of its time. The compiled backend's memory is that of dropped
            # outputs where it can, as its own y's are.
            y_both = None
            if D > 1 and backend is not None:
                shape = (T, B, D * H)
                y_both = (_backend._core.empty(shape, self.dtype) if backend == "cpu"
                          else xp.empty(shape, self.dtype))
            # The two directions of the compiled CPU kernels go in one call: side by side where
            # their steps are too small to share among the threads (csrc/pair_cpu.cc). Its
            # arguments are spelled out here and below rather than made by a helper, which cost
            # the one-direction path 1 us of an LSTM T=20 B=1 H=32 training step's 37.
            pair = (ops.run_forward_pair(self._kernel_cell, [
                (inp, *self._layer_weights(layer, d), None if h0 is None else h0[layer * 2 + d],
                 None if c0 is None else c0[layer * 2 + d], lengths, bool(d), training,
                 y_both[..., d * H:(d + 1) * H]) for d in (0, 1)])
                if D == 2 and backend == "cpu" else None)
            for d in range(D):
                k = layer * D + d
                if pair is not None:
                    res = pair[d]
                elif backend is None:
                    res = ops.forward(self._cell, inp, *self._layer_weights(layer, d),
                                      None if h0 is None else h0[k],
                                      None if c0 is None else c0[k], lengths=lengths,
                                      reverse=bool(d), training=training,
                                      reset_after=getattr(self, "reset_after", True),
                                      backend="cuda", tf32=self.tf32)
                else:
                    # The parameters were checked when set, x and the state above: no checks
                    # per direction (the C++ glue still checks what it gets).
                    y_d = None if y_both is None else y_both[..., d * H:(d + 1) * H]
                    res = ops.run_forward(self._kernel_cell, backend, inp,
                                          *self._layer_weights(layer, d),
                                          None if h0 is None else h0[k],
                                          None if c0 is None else c0[k], lengths, bool(d),
                                          training, y_d)
                if y_both is None:
                    outs.append(res.y)
                tapes.append(res.tape)
                h_n[k] = res.h_n
                if c_n is not None:
                    c_n[k] = res.c_n
            if y_both is None:  # one direction, or on the GPU
                inp = outs[0] if D == 1 else xp.concatenate(outs, axis=2)
            else:
                inp = y_both
            mask = None
            if training and self.dropout > 0 and layer < self.num_layers - 1:
                keep = self._rng.random(inp.shape) >= self.dropout
                # Drawn on the host: the same seed gives the same masks on every device.
                mask = xp.asarray(keep.astype(self.dtype) / self.dtype.type(1.0 - self.dropout))
                with np.errstate(invalid="ignore"):  # inf * 0: NaN, silently, as in the kernels
                    inp = inp * mask
            op_tapes.append(tapes)
            masks.append(mask)
        y = wrap(self._from_time_major(inp, layout))
        state_out = self._final_state(wrap(h_n), None if c_n is None else wrap(c_n), unbatched)
        tape = Tape(self, op_tapes, masks, layout, wrap) if training else None
        return y, state_out, tape

    def step(self, x, state=None):
        """One time step of the whole stack, for feeding a model its own output (sampling):
        x (B, input_size), or (input_size,) unbatched, and the state as in forward; returns
        (y, state) with y (B, hidden_size). It is ``forward`` with T=1, so it runs the same
        compiled kernels; inference only, and unidirectional only (a reverse direction needs the
        whole sequence)."""
        if self.bidirectional:
            raise ValueError("step: expected a unidirectional layer, got bidirectional=True (the "
                             "reverse direction needs the whole sequence; use forward)")
        x = float_array(x, "x", self.dtype, ndim=(1, 2))
        if x.shape[-1] != self.input_size:
            raise ValueError(f"x: expected shape (B, {self.input_size}) or ({self.input_size},) "
                             f"(input_size), got {x.shape}")
        seq = x[:, None] if self.batch_first and x.ndim == 2 else x[None]
        y, state = self(seq, state)
        return (y[:, 0] if self.batch_first and x.ndim == 2 else y[0]), state

    # -- backward ---------------------------------------------------------------------------
    def backward(self, tape, dy, dstate=None, *, need_dx=True):
        """Gradients for a forward(training=True): returns (dx, dstate0, dparams), dx shaped as x,
        dstate0 as the initial state, dparams keyed as state_dict(). dy is shaped as y; dstate
        (shaped as the returned state) may be None for zero. With ``need_dx=False`` dx is None
        and the first layer skips its product (an input that needs no gradient, such as data:
        a quarter of that layer's backward flops at input_size = hidden_size)."""
        if not isinstance(tape, Tape):
            raise TypeError(f"tape: expected the tape of this layer's forward(training=True), "
                            f"got {type_name(tape)}")
        if tape.owner is not self:
            raise ValueError("tape: expected a tape made by this layer's forward, got one made "
                             "by another layer")
        batch_first, unbatched, T, B = tape.layout
        D, H, L = self.num_directions, self.hidden_size, self.num_layers
        need_dx = flag(need_dx, "need_dx")
        if dy is None:
            raise TypeError("dy: expected an array shaped as y, got None")
        dy = float_array(self._on_device(dy, "dy"), "dy", self.dtype)
        expect = (T, D * H) if unbatched else (B, T, D * H) if batch_first else (T, B, D * H)
        if dy.shape != expect:
            raise ValueError(f"dy: expected shape {expect} (as y), got {dy.shape}")
        dh_n, dc_n = (None, None) if dstate is None else self._initial_state(
            dstate, B, unbatched, name="dstate")
        # Once here: a batch_first dy is a transposed view.
        dy = self._kernel_array(self._time_major(dy, layout=tape.layout)[0])
        xp = self._xp
        dparams = {}
        dh0 = xp.empty((L * D, B, H), self.dtype)
        dc0 = xp.empty_like(dh0) if self._cell == "lstm" else None
        for layer in reversed(range(L)):
            if tape.masks[layer] is not None:
                with np.errstate(invalid="ignore"):
                    dy = dy * tape.masks[layer]
            dx = None
            need = need_dx or layer > 0
            # As forward ran them: the directions of the compiled CPU kernels in one call.
            pair = (ops.run_backward_pair([
                (tape.op_tapes[layer][d], dy[:, :, d * H:(d + 1) * H],
                 None if dh_n is None else dh_n[layer * 2 + d],
                 None if dc_n is None else dc_n[layer * 2 + d], need) for d in (0, 1)])
                if D == 2 and tape.op_tapes[layer][0].backend == "cpu" else None)
            for d in range(D):
                k = layer * D + d
                if pair is not None:
                    g = pair[d]
                else:
                    dy_d = dy if D == 1 else dy[:, :, d * H:(d + 1) * H]
                    dh_k = None if dh_n is None else dh_n[k]
                    dc_k = None if dc_n is None else dc_n[k]
                    op_tape = tape.op_tapes[layer][d]
                    if self.device == "cuda":
                        g = ops.backward(op_tape, xp.ascontiguousarray(dy_d), dh_k, dc_k,
                                         need_dx=need)
                    else:  # dy_d's rows need only be evenly spaced
                        g = ops.run_backward(op_tape, dy_d, dh_k, dc_k, need)
                with np.errstate(invalid="ignore", over="ignore"):  # inf - inf, as in the kernels
                    if dx is None:
                        dx = g.dx
                    elif need:  # in place: no fresh memory to fault in
                        xp.add(dx, g.dx, out=dx)
                dh0[k] = g.dh0
                if dc0 is not None:
                    dc0[k] = g.dc0
                w_ih, w_hh, b_ih, b_hh = self._weight_names(layer, d)
                dparams[w_ih], dparams[w_hh] = g.dw_ih, g.dw_hh
                if self.bias:
                    dparams[b_ih], dparams[b_hh] = g.db_ih, g.db_hh
            dy = dx
        wrap = tape.wrap
        # In state_dict's order, which the parameters keep (_shapes() made anew costs ~2 us).
        dparams = {name: wrap(dparams[name]) for name in self._params}
        return (None if dy is None else wrap(self._from_time_major(dy, tape.layout)),
                self._final_state(wrap(dh0), None if dc0 is None else wrap(dc0), unbatched),
                dparams)

    def _kernel_array(self, a):
        """a as the kernels take it: C-contiguous, and on the CPU aligned too."""
        if self._xp is np:
            return contiguous(a)
        return self._xp.ascontiguousarray(a)

    # -- devices ----------------------------------------------------------------------------
    def _on_device(self, value, name):
        """value where this layer computes: as given on the CPU (the checks follow); on the GPU a
        CuPy array, taken over without a copy from any library's CUDA array, else copied from
        the host."""
        where = _device.cuda_device(value)
        if self.device == "cpu":
            if where is not None:
                raise ValueError(f"{name}: expected a host array for a layer on the CPU, got a "
                                 f"{type_name(value)} on CUDA device {where} (build the layer "
                                 "with device='cuda')")
            return value
        if where is not None:
            return self._xp.from_dlpack(value)
        return self._xp.asarray(as_array(value, name))

    def _results_like(self, x):
        """How results are handed back: as computed on the CPU; on the GPU as arrays of x's
        library (zero-copy), or as NumPy arrays when x was a host array."""
        if self.device == "cpu":
            return _same
        if _device.cuda_device(x) is not None:
            return _device.importer(x)
        return self._xp.asnumpy

    # -- layouts ----------------------------------------------------------------------------
    def _time_major(self, x, layout=None):
        """A (T, B, I) view (ops.forward copies it once memory is known to suffice), and the
        layout needed to undo it."""
        name = "x" if layout is None else "dy"
        x = float_array(x, name, self.dtype, ndim=(2, 3))
        width = self.input_size if layout is None else self.num_directions * self.hidden_size
        if x.shape[-1] != width:
            what = "input_size" if layout is None else "num_directions * hidden_size"
            raise ValueError(f"{name}: expected last dimension {width} ({what}), got shape "
                             f"{x.shape}")
        if min(x.shape) == 0:
            raise ValueError(f"{name}: expected a non-empty array, got shape {x.shape}")
        unbatched = x.ndim == 2
        if unbatched:
            x = x[:, None, :]
        elif self.batch_first:
            x = x.transpose(1, 0, 2)
        T, B = x.shape[:2]
        return x, (self.batch_first, unbatched, T, B)

    def _from_time_major(self, y, layout):
        batch_first, unbatched, _, _ = layout
        if unbatched:
            return y[:, 0, :]
        return self._xp.ascontiguousarray(y.transpose(1, 0, 2)) if batch_first else y

    def _initial_state(self, state, B, unbatched, name="state"):
        """A given state (not None) as (h0, c0), (L*D, B, H) arrays (c0 None unless LSTM)."""
        shape = (self.num_layers * self.num_directions, B, self.hidden_size)
        want = shape[::2] if unbatched else shape
        is_lstm = self._cell == "lstm"
        if is_lstm:
            if not isinstance(state, (tuple, list)) or len(state) != 2:
                raise TypeError(f"{name}: expected a tuple (h, c) of arrays shaped {want}, "
                                f"got {type_name(state)}")
            parts = [(state[0], f"{name}[0] (h)"), (state[1], f"{name}[1] (c)")]
        else:
            if isinstance(state, (tuple, list)):
                raise TypeError(f"{name}: expected one array shaped {want}, got a "
                                f"{type_name(state)}")
            parts = [(state, name)]
        out = []
        for value, label in parts:
            arr = float_array(self._on_device(value, label), label, self.dtype)
            if arr.shape != want:
                raise ValueError(f"{label}: expected shape {want}, got {arr.shape}")
            arr = arr.reshape(shape)
            out.append(self._kernel_array(arr))
        return out[0], (out[1] if is_lstm else None)

    @staticmethod
    def _final_state(h, c, unbatched):
        if unbatched:
            h = h[:, 0, :]
            c = None if c is None else c[:, 0, :]
        return h if c is None else (h, c)

    def __repr__(self):
        extra = "".join(f", {k}={v!r}" for k, v in self._repr_extra().items())
        return (f"{type(self).__name__}({self.input_size}, {self.hidden_size}, "
                f"num_layers={self.num_layers}, bias={self.bias}, batch_first={self.batch_first}"
                f", dropout={self.dropout}, bidirectional={self.bidirectional}, "
                f"dtype='{self.dtype.name}'{extra})")

    def _repr_extra(self):
        extra = {"device": self.device} if self.device != "cpu" else {}
        return {**extra, "tf32": True} if self.tf32 else extra


class LSTM(RNNBase):
    """Long short-term memory layers, as torch.nn.LSTM (gate order i, f, g, o).
    State is a tuple (h, c), each (num_layers * num_directions, B, hidden_size)."""

    _cell = "lstm"


class GRU(RNNBase):
    """Gated recurrent unit layers, as torch.nn.GRU (gate order r, z, n). ``reset_after=False``
    applies the reset gate before the recurrent product (Cho et al. 2014) with the same
    parameters."""

    _cell = "gru"

    def __init__(self, *args, reset_after=True, **kwargs):
        self.reset_after = flag(reset_after, "reset_after")
        super().__init__(*args, **kwargs)

    def _repr_extra(self):
        return {**super()._repr_extra(), "reset_after": self.reset_after}


class RNN(RNNBase):
    """Elman RNN layers, as torch.nn.RNN, with ``nonlinearity`` 'tanh' or 'relu'."""

    def __init__(self, *args, nonlinearity="tanh", **kwargs):
        if not isinstance(nonlinearity, str) or nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        self._cell = f"rnn_{nonlinearity}"
        super().__init__(*args, **kwargs)

    def _repr_extra(self):
        return {**super()._repr_extra(), "nonlinearity": self.nonlinearity}


def _same(result):
    return result
