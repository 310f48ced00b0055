"""Bad input: every public entry refuses it with a ValueError or TypeError whose message names
the argument, what was expected and what came, and leaves everything as it was.

Each table row is (id, call, exception type, message regex). For the layers, a model and an
identical twin (same seed) both run one good training forward first; after the bad call the model
must have the same parameters, and a good forward/backward must give exactly what the twin's does
(which also checks that the bad call drew no dropout mask). The C++ glue (fusedrnn._core) is
called directly too, since it must not trust the Python layer. NaN and inf inputs must simply run.
"""

from types import SimpleNamespace

import numpy as np
import pytest

import fusedrnn as fr
from fusedrnn import layers, ops
from fusedrnn._backend import _core

F32, F64 = np.float32, np.float64
T, B, I, H = 4, 3, 5, 6            # small, and all different so that shapes are unambiguous
L, D = 2, 2                        # the layers are stacked and bidirectional: state (4, B, H)
HUGE = 10**7                       # T = B = HUGE needs petabytes, on any machine

needs_core = pytest.mark.skipif(_core is None, reason="the compiled extension is not built")
BACKENDS = [pytest.param("cpu", marks=needs_core), "numpy"]


def huge_view(shape, dtype=F32):
    """A zero-stride view standing for an array of `shape` without its memory."""
    return np.broadcast_to(np.zeros((), dtype), shape)


def unaligned(a):
    """A C-contiguous copy of `a` whose data pointer is off by one byte."""
    buf = np.zeros(a.nbytes + 1, np.uint8)
    out = np.frombuffer(buf.data, a.dtype, a.size, offset=1).reshape(a.shape)
    out[...] = a
    return out


def assert_same(a, b):
    """Exact equality of nested tuples/lists/dicts of arrays (None allowed)."""
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for u, v in zip(a, b):
            assert_same(u, v)
    elif a is None:
        assert b is None
    else:
        np.testing.assert_array_equal(a, b, strict=True)


# ------------------------------------------------------------------------------------------
# Constructors
# ------------------------------------------------------------------------------------------

CTOR_CASES = [
    # id, class, args, kwargs, exception, message
    ("input_size=0", fr.LSTM, (0, H), {}, ValueError, r"input_size: expected a positive int, got 0"),
    ("input_size<0", fr.GRU, (-3, H), {}, ValueError, r"input_size: expected a positive int, got -3"),
    ("hidden_size=0", fr.RNN, (I, 0), {}, ValueError, r"hidden_size: expected a positive int, got 0"),
    ("num_layers=0", fr.LSTM, (I, H), {"num_layers": 0}, ValueError,
     r"num_layers: expected a positive int, got 0"),
    ("input_size float", fr.LSTM, (5.0, H), {}, TypeError,
     r"input_size: expected a positive int, got float 5\.0"),
    ("hidden_size str", fr.GRU, (I, "6"), {}, TypeError,
     r"hidden_size: expected a positive int, got str '6'"),
    ("hidden_size None", fr.RNN, (I, None), {}, TypeError,
     r"hidden_size: expected a positive int, got NoneType None"),
    ("input_size bool", fr.LSTM, (True, H), {}, TypeError,
     r"input_size: expected a positive int, got bool True"),
    ("num_layers bool", fr.GRU, (I, H), {"num_layers": True}, TypeError,
     r"num_layers: expected a positive int, got bool True"),
    ("num_layers numpy bool", fr.GRU, (I, H), {"num_layers": np.bool_(True)}, TypeError,
     r"num_layers: expected a positive int, got numpy\.bool_? (np\.)?True"),
    ("bias int", fr.LSTM, (I, H), {"bias": 1}, TypeError, r"bias: expected True or False, got int 1"),
    ("batch_first None", fr.GRU, (I, H), {"batch_first": None}, TypeError,
     r"batch_first: expected True or False, got NoneType None"),
    ("bidirectional str", fr.RNN, (I, H), {"bidirectional": "yes"}, TypeError,
     r"bidirectional: expected True or False, got str 'yes'"),
    ("dropout=1", fr.LSTM, (I, H), {"dropout": 1.0}, ValueError,
     r"dropout: expected a float in \[0, 1\), got 1\.0"),
    ("dropout<0", fr.GRU, (I, H), {"dropout": -0.1}, ValueError,
     r"dropout: expected a float in \[0, 1\), got -0\.1"),
    ("dropout nan", fr.RNN, (I, H), {"dropout": float("nan")}, ValueError,
     r"dropout: expected a float in \[0, 1\), got nan"),
    ("dropout str", fr.LSTM, (I, H), {"dropout": "0.5"}, TypeError,
     r"dropout: expected a float in \[0, 1\), got str '0\.5'"),
    ("dropout bool", fr.LSTM, (I, H), {"dropout": True}, TypeError,
     r"dropout: expected a float in \[0, 1\), got bool True"),
    ("dtype float16", fr.LSTM, (I, H), {"dtype": "float16"}, TypeError,
     r"dtype: expected 'float32' or 'float64', got 'float16'"),
    ("dtype int32", fr.GRU, (I, H), {"dtype": np.int32}, TypeError,
     r"dtype: expected 'float32' or 'float64', got 'int32'"),
    ("dtype unknown name", fr.RNN, (I, H), {"dtype": "float33"}, TypeError,
     r"dtype: expected 'float32' or 'float64', got 'float33'"),
    ("dtype None", fr.LSTM, (I, H), {"dtype": None}, TypeError,
     r"dtype: expected 'float32' or 'float64', got None"),
    ("dtype big-endian", fr.LSTM, (I, H), {"dtype": ">f4"}, TypeError,
     r"dtype: expected 'float32' or 'float64', got '>f4'"),
    ("seed<0", fr.LSTM, (I, H), {"seed": -1}, ValueError,
     r"seed: expected None or a non-negative int, got -1"),
    ("seed float", fr.GRU, (I, H), {"seed": 1.5}, TypeError,
     r"seed: expected None or a non-negative int, got float 1\.5"),
    ("seed bool", fr.RNN, (I, H), {"seed": True}, TypeError,
     r"seed: expected None or a non-negative int, got bool True"),
    ("seed str", fr.LSTM, (I, H), {"seed": "7"}, TypeError,
     r"seed: expected None or a non-negative int, got str '7'"),
    ("backend unknown", fr.LSTM, (I, H), {"backend": "cuda"}, ValueError,
     r"backend: expected one of \('auto', 'cpu', 'numpy'\), got 'cuda'"),
    ("backend None", fr.GRU, (I, H), {"backend": None}, ValueError,
     r"backend: expected one of .*, got None"),
    ("nonlinearity unknown", fr.RNN, (I, H), {"nonlinearity": "sigmoid"}, ValueError,
     r"nonlinearity: expected 'tanh' or 'relu', got 'sigmoid'"),
    ("nonlinearity None", fr.RNN, (I, H), {"nonlinearity": None}, ValueError,
     r"nonlinearity: expected 'tanh' or 'relu', got None"),
    ("nonlinearity array", fr.RNN, (I, H), {"nonlinearity": np.array(["tanh", "relu"])},
     ValueError, r"nonlinearity: expected 'tanh' or 'relu', got array"),
    ("reset_after int", fr.GRU, (I, H), {"reset_after": 0}, TypeError,
     r"reset_after: expected True or False, got int 0"),
    ("unknown keyword", fr.LSTM, (I, H), {"proj_size": 3}, TypeError, r"proj_size"),
    ("RNNBase itself", layers.RNNBase, (I, H), {}, TypeError,
     r"RNNBase: expected one of LSTM, GRU or RNN"),
    ("parameters beyond memory", fr.LSTM, (1, HUGE), {}, ValueError,
     rf"hidden_size={HUGE}.*: the parameters would need [\d.]+ GiB, more than this machine's"),
    ("layers beyond memory", fr.GRU, (1, 1), {"num_layers": 10**15}, ValueError,
     r"num_layers=10{15}: the parameters would need [\d.]+ GiB, more than this machine's"),
]


@pytest.mark.parametrize("cls, args, kwargs, exc, match",
                         [pytest.param(*row[1:], id=row[0]) for row in CTOR_CASES])
def test_constructor_rejects(cls, args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        cls(*args, **kwargs)


# ------------------------------------------------------------------------------------------
# Layers: forward, backward
# ------------------------------------------------------------------------------------------

KINDS = {
    "LSTM": lambda backend: fr.LSTM(I, H, num_layers=L, bidirectional=True, dropout=0.5, seed=3,
                                    backend=backend),
    "GRU": lambda backend: fr.GRU(I, H, num_layers=L, bidirectional=True, dropout=0.5, seed=3,
                                  backend=backend),
    "RNN": lambda backend: fr.RNN(I, H, num_layers=L, bidirectional=True, dropout=0.5, seed=3,
                                  nonlinearity="relu", backend=backend),
}
ALL = "LSTM GRU RNN"
STATE_SHAPE = rf"\({L * D}, {B}, {H}\)"


def layer_context(m):
    """A good training forward (run on a model and on its twin alike) and what it gives."""
    x = np.linspace(-1, 1, T * B * I, dtype=F32).reshape(T, B, I)
    y, state, tape = m.forward(x, training=True)
    return SimpleNamespace(x=x, x_copy=x.copy(), y=y, dy=np.ones_like(y), state=state, tape=tape)


def good_run(m, c):
    y, state, tape = m.forward(c.x, c.state, training=True)
    return y, state, m.backward(tape, c.dy, state)


def h_of(state):
    return state[0] if isinstance(state, tuple) else state


def with_h(state, h):
    """state with its h replaced, in the same form (tuple for LSTM, array otherwise)."""
    return (h, state[1]) if isinstance(state, tuple) else h


def other_layers_tape(m, c):
    twin = type(m)(I, H, num_layers=L, bidirectional=True, backend=m.backend)
    return twin.forward(c.x, training=True)[2]


def ops_tape(c):
    G = 4
    w = np.full((G * H, I), 0.1, F32), np.full((G * H, H), 0.1, F32)
    return ops.forward("lstm", c.x, *w, training=True).tape


LAYER_CASES = [
    # id, kinds, bad call on (model, context), exception, message
    # x: rank, width, emptiness, dtype, form, size
    ("x None", ALL, lambda m, c: m(None), TypeError, r"x: expected an array, got None"),
    ("x 0-d", ALL, lambda m, c: m(F32(1)), ValueError,
     r"x: expected a 2-d or 3-d array, got shape \(\)"),
    ("x 1-d", ALL, lambda m, c: m(c.x[0, 0]), ValueError,
     r"x: expected a 2-d or 3-d array, got shape \(5,\)"),
    ("x 4-d", ALL, lambda m, c: m(c.x[None]), ValueError,
     r"x: expected a 2-d or 3-d array, got shape \(1, 4, 3, 5\)"),
    ("x width", ALL, lambda m, c: m(c.x[..., :4]), ValueError,
     r"x: expected last dimension 5 \(input_size\), got shape \(4, 3, 4\)"),
    ("x no steps", ALL, lambda m, c: m(c.x[:0]), ValueError,
     r"x: expected a non-empty array, got shape \(0, 3, 5\)"),
    ("x no rows", "GRU", lambda m, c: m(c.x[:, :0]), ValueError,
     r"x: expected a non-empty array, got shape \(4, 0, 5\)"),
    ("x int", ALL, lambda m, c: m(c.x.astype(np.int64)), TypeError,
     r"x: expected a float32 array, got dtype int64"),
    ("x bool", "LSTM", lambda m, c: m(c.x > 0), TypeError,
     r"x: expected a float32 array, got dtype bool"),
    ("x float16", ALL, lambda m, c: m(c.x.astype(np.float16)), TypeError,
     r"x: expected a float32 array, got dtype float16"),
    ("x complex", "GRU", lambda m, c: m(c.x.astype(np.complex64)), TypeError,
     r"x: expected a float32 array, got dtype complex64"),
    ("x float64 for float32 model", ALL, lambda m, c: m(c.x.astype(F64)), TypeError,
     r"x: expected dtype float32 \(the model's\), got float64"),
    ("x big-endian", "RNN", lambda m, c: m(c.x.astype(">f4")), TypeError,
     r"x: expected a float32 array, got dtype >f4"),
    ("x strings", "LSTM", lambda m, c: m([["a"] * I] * T), TypeError,
     r"x: expected a float32 array, got dtype str"),
    ("x objects", "LSTM", lambda m, c: m(np.array([{}, None], dtype=object)), TypeError,
     r"x: expected a float32 array, got dtype object"),
    ("x ragged list", ALL, lambda m, c: m([[0.0] * I, [0.0] * (I - 1)]), TypeError,
     r"x: expected an array, got list that NumPy cannot convert"),
    ("x beyond memory", ALL, lambda m, c: m(huge_view((HUGE, HUGE, I))), ValueError,
     rf"x: T={HUGE} steps of B={HUGE} rows .*forward\(training=False\) would need [\d.]+ GiB, "
     r"more than this machine's"),
    ("x beyond memory, training", "LSTM",
     lambda m, c: m.forward(huge_view((HUGE, HUGE, I)), training=True), ValueError,
     rf"x: T={HUGE} steps of B={HUGE} rows .*forward\(training=True\) would need"),
    # state: form, shape, dtype
    ("state single array for LSTM", "LSTM", lambda m, c: m(c.x, c.state[0]), TypeError,
     rf"state: expected a tuple \(h, c\) of arrays shaped {STATE_SHAPE}, got numpy\.ndarray"),
    ("state 1-tuple for LSTM", "LSTM", lambda m, c: m(c.x, (c.state[0],)), TypeError,
     r"state: expected a tuple \(h, c\) .*, got tuple"),
    ("state 3-tuple for LSTM", "LSTM", lambda m, c: m(c.x, (*c.state, c.state[0])), TypeError,
     r"state: expected a tuple \(h, c\) .*, got tuple"),
    ("state dict for LSTM", "LSTM", lambda m, c: m(c.x, {"h": c.state[0]}), TypeError,
     r"state: expected a tuple \(h, c\) .*, got dict"),
    ("state tuple for GRU/RNN", "GRU RNN", lambda m, c: m(c.x, (c.state, c.state)), TypeError,
     rf"state: expected one array shaped {STATE_SHAPE}, got a tuple"),
    ("state None inside LSTM tuple", "LSTM", lambda m, c: m(c.x, (c.state[0], None)), TypeError,
     r"state\[1\] \(c\): expected an array, got None"),
    ("state too few layers", ALL, lambda m, c: m(c.x, with_h(c.state, h_of(c.state)[:2])),
     ValueError, rf"state(\[0\] \(h\))?: expected shape {STATE_SHAPE}, got \(2, 3, 6\)"),
    ("state wrong batch", ALL, lambda m, c: m(c.x, with_h(c.state, h_of(c.state)[:, :2])),
     ValueError, rf"state(\[0\] \(h\))?: expected shape {STATE_SHAPE}, got \(4, 2, 6\)"),
    ("state unbatched form", ALL, lambda m, c: m(c.x, with_h(c.state, h_of(c.state)[:, 0])),
     ValueError, rf"state(\[0\] \(h\))?: expected shape {STATE_SHAPE}, got \(4, 6\)"),
    ("state c misshapen", "LSTM", lambda m, c: m(c.x, (c.state[0], c.state[1][..., :5])),
     ValueError, rf"state\[1\] \(c\): expected shape {STATE_SHAPE}, got \(4, 3, 5\)"),
    ("state float64", ALL, lambda m, c: m(c.x, with_h(c.state, h_of(c.state).astype(F64))),
     TypeError, r"state(\[0\] \(h\))?: expected dtype float32 \(the model's\), got float64"),
    ("state int", "GRU", lambda m, c: m(c.x, c.state.astype(np.int32)), TypeError,
     r"state: expected a float32 array, got dtype int32"),
    ("unbatched x, batched state", ALL, lambda m, c: m(c.x[:, 0], c.state), ValueError,
     rf"state(\[0\] \(h\))?: expected shape \({L * D}, {H}\), got {STATE_SHAPE}"),
    # lengths: range, count, dtype
    ("lengths 0", ALL, lambda m, c: m(c.x, lengths=[T, 0, 1]), ValueError,
     rf"lengths: expected values in \[1, {T}\] \(the sequence length\), got 0"),
    ("lengths > T", ALL, lambda m, c: m(c.x, lengths=[T, T + 1, 1]), ValueError,
     rf"lengths: expected values in \[1, {T}\] \(the sequence length\), got {T + 1}"),
    ("lengths < 0", "RNN", lambda m, c: m(c.x, lengths=np.array([-1, 2, 2])), ValueError,
     r"lengths: expected values in \[1, 4\] .*, got -1"),
    ("lengths too few", ALL, lambda m, c: m(c.x, lengths=[T, T]), ValueError,
     r"lengths: expected shape \(3,\) \(one per batch row\), got \(2,\)"),
    ("lengths too many", "LSTM", lambda m, c: m(c.x, lengths=[T] * (B + 1)), ValueError,
     r"lengths: expected shape \(3,\) \(one per batch row\), got \(4,\)"),
    ("lengths scalar", "GRU", lambda m, c: m(c.x, lengths=T), ValueError,
     r"lengths: expected shape \(3,\) \(one per batch row\), got \(\)"),
    ("lengths 2-d", "GRU", lambda m, c: m(c.x, lengths=[[T] * B]), ValueError,
     r"lengths: expected shape \(3,\) \(one per batch row\), got \(1, 3\)"),
    ("lengths float", ALL, lambda m, c: m(c.x, lengths=[4.0, 3.0, 1.0]), TypeError,
     r"lengths: expected an integer array, got dtype float64"),
    ("lengths bool", "LSTM", lambda m, c: m(c.x, lengths=[True] * B), TypeError,
     r"lengths: expected an integer array, got dtype bool"),
    ("lengths ragged", "LSTM", lambda m, c: m(c.x, lengths=[[1], [1, 2], 3]), TypeError,
     r"lengths: expected an integer array, got list that NumPy cannot convert"),
    ("lengths for unbatched x", ALL, lambda m, c: m(c.x[:, 0], lengths=[T]), ValueError,
     r"lengths: expected None for unbatched \(T, I\) input, got list"),
    ("training not a bool", ALL, lambda m, c: m.forward(c.x, training="yes"), TypeError,
     r"training: expected True or False, got str 'yes'"),
    ("training int", "GRU", lambda m, c: m.forward(c.x, training=1), TypeError,
     r"training: expected True or False, got int 1"),
    # backward: not this layer's training tape
    ("tape None", ALL, lambda m, c: m.backward(None, c.dy), TypeError,
     r"tape: expected the tape of this layer's forward\(training=True\), got NoneType"),
    ("tape of an inference forward", ALL, lambda m, c: m.backward(m.forward(c.x)[2], c.dy),
     TypeError, r"tape: expected the tape of this layer's forward\(training=True\), got NoneType"),
    ("inference result as tape", ALL, lambda m, c: m.backward(m(c.x), c.dy), TypeError,
     r"tape: expected the tape of this layer's forward\(training=True\), got tuple"),
    ("tape of another layer", ALL, lambda m, c: m.backward(other_layers_tape(m, c), c.dy),
     ValueError, r"tape: expected a tape made by this layer's forward, got one made by another"),
    ("tape of ops", ALL, lambda m, c: m.backward(ops_tape(c), c.dy), TypeError,
     r"tape: expected the tape of this layer's .*, got fusedrnn\.ops\.Tape"),
    ("tape of the C++ glue", "LSTM", lambda m, c: m.backward(ops_tape(c)._impl, c.dy), TypeError,
     r"tape: expected the tape of this layer's .*, got fusedrnn\._core\.Tape"),
    ("need_dx 'no'", ALL, lambda m, c: m.backward(c.tape, c.dy, need_dx="no"), TypeError,
     r"need_dx: expected True or False, got str 'no'"),
    # backward: dy, dstate
    ("dy None", ALL, lambda m, c: m.backward(c.tape, None), TypeError,
     r"dy: expected an array shaped as y, got None"),
    ("dy one direction wide", ALL, lambda m, c: m.backward(c.tape, c.dy[..., :H]), ValueError,
     rf"dy: expected shape \({T}, {B}, {D * H}\) \(as y\), got \({T}, {B}, {H}\)"),
    ("dy batch-first", ALL, lambda m, c: m.backward(c.tape, c.dy.transpose(1, 0, 2)), ValueError,
     rf"dy: expected shape \({T}, {B}, {D * H}\) \(as y\), got \({B}, {T}, {D * H}\)"),
    ("dy fewer steps", "RNN", lambda m, c: m.backward(c.tape, c.dy[1:]), ValueError,
     r"dy: expected shape \(4, 3, 12\) \(as y\), got \(3, 3, 12\)"),
    ("dy float64", ALL, lambda m, c: m.backward(c.tape, c.dy.astype(F64)), TypeError,
     r"dy: expected dtype float32 \(the model's\), got float64"),
    ("dy int", "GRU", lambda m, c: m.backward(c.tape, c.dy.astype(np.int64)), TypeError,
     r"dy: expected a float32 array, got dtype int64"),
    ("dstate misshapen", ALL,
     lambda m, c: m.backward(c.tape, c.dy, with_h(c.state, h_of(c.state)[1:])), ValueError,
     rf"dstate(\[0\] \(h\))?: expected shape {STATE_SHAPE}, got \(3, 3, 6\)"),
    ("dstate float64", ALL,
     lambda m, c: m.backward(c.tape, c.dy, with_h(c.state, h_of(c.state).astype(F64))),
     TypeError, r"dstate(\[0\] \(h\))?: expected dtype float32 \(the model's\), got float64"),
    ("dstate single array for LSTM", "LSTM", lambda m, c: m.backward(c.tape, c.dy, c.state[0]),
     TypeError, r"dstate: expected a tuple \(h, c\) .*, got numpy\.ndarray"),
    ("dstate tuple for GRU/RNN", "GRU RNN", lambda m, c: m.backward(c.tape, c.dy, (c.state,)),
     TypeError, r"dstate: expected one array shaped .*, got a tuple"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind, bad, exc, match", [
    pytest.param(kind, bad, exc, match, id=f"{kind}-{name}")
    for name, kinds, bad, exc, match in LAYER_CASES for kind in kinds.split()])
def test_layer_rejects_and_is_unchanged(kind, bad, exc, match, backend):
    m, twin = KINDS[kind](backend), KINDS[kind](backend)
    c, c_twin = layer_context(m), layer_context(twin)
    params = m.state_dict()
    with pytest.raises(exc, match=match):
        bad(m, c)
    assert_same(m.state_dict(), params)
    np.testing.assert_array_equal(c.x, c.x_copy)
    assert_same(good_run(m, c), good_run(twin, c_twin))


# ------------------------------------------------------------------------------------------
# Layers: load_state_dict
# ------------------------------------------------------------------------------------------

def replaced(sd, key, value):
    return {**sd, key: value}


def without(sd, key):
    return {k: v for k, v in sd.items() if k != key}


def all_doubled_but_last_broken(sd):
    """Every entry valid and different except the last: nothing may be applied."""
    out = {k: 2 * v for k, v in sd.items()}
    last = list(out)[-1]
    out[last] = out[last][:-1]
    return out


STATE_DICT_CASES = [
    # id, make a bad state_dict from a good one, exception, message
    ("not a dict", lambda sd: list(sd.items()), TypeError,
     r"state_dict: expected a dict of arrays, got list"),
    ("None", lambda sd: None, TypeError, r"state_dict: expected a dict of arrays, got NoneType"),
    ("missing key", lambda sd: without(sd, "weight_hh_l1"), ValueError,
     r"state_dict: missing keys \['weight_hh_l1'\], unknown keys \[\]"),
    ("unknown key", lambda sd: replaced(sd, "weight_hh_l2", sd["weight_hh_l1"]), ValueError,
     r"state_dict: missing keys \[\], unknown keys \['weight_hh_l2'\]"),
    ("prefixed keys", lambda sd: {f"rnn.{k}": v for k, v in sd.items()}, ValueError,
     r"state_dict: missing keys \['weight_ih_l0', .*unknown keys \['rnn\.weight_ih_l0'"),
    ("non-str key", lambda sd: replaced(sd, 0, sd["bias_ih_l0"]), ValueError,
     r"state_dict: missing keys \[\], unknown keys \[0\]"),
    ("transposed weight", lambda sd: replaced(sd, "weight_ih_l0", sd["weight_ih_l0"].T),
     ValueError, r"state_dict\['weight_ih_l0'\]: expected shape \(\d+, 5\), got \(5, \d+\)"),
    ("layer-1 weight of layer-0 width", lambda sd: replaced(sd, "weight_ih_l1", sd["weight_ih_l0"]),
     ValueError, r"state_dict\['weight_ih_l1'\]: expected shape \(\d+, 12\), got \(\d+, 5\)"),
    ("bias 2-d", lambda sd: replaced(sd, "bias_hh_l0", sd["bias_hh_l0"][None]), ValueError,
     r"state_dict\['bias_hh_l0'\]: expected shape \(\d+,\), got \(1, \d+\)"),
    ("bias scalar", lambda sd: replaced(sd, "bias_hh_l0", 0.5), ValueError,
     r"state_dict\['bias_hh_l0'\]: expected shape \(\d+,\), got \(\)"),
    ("int values", lambda sd: replaced(sd, "bias_ih_l1", sd["bias_ih_l1"].astype(np.int64)),
     TypeError, r"state_dict\['bias_ih_l1'\]: expected a float32 or float64 array, got dtype int64"),
    ("bool values", lambda sd: replaced(sd, "bias_ih_l1", sd["bias_ih_l1"] > 0), TypeError,
     r"state_dict\['bias_ih_l1'\]: expected a float32 or float64 array, got dtype bool"),
    ("float16 values", lambda sd: replaced(sd, "weight_hh_l0", sd["weight_hh_l0"].astype("f2")),
     TypeError, r"state_dict\['weight_hh_l0'\]: expected a float32 or float64 array, got dtype float16"),
    ("complex values", lambda sd: replaced(sd, "weight_hh_l0", sd["weight_hh_l0"] + 0j), TypeError,
     r"state_dict\['weight_hh_l0'\]: expected a float32 or float64 array, got dtype complex\d+"),
    ("None value", lambda sd: replaced(sd, "bias_hh_l1", None), TypeError,
     r"state_dict\['bias_hh_l1'\]: expected an array, got None"),
    ("str value", lambda sd: replaced(sd, "bias_hh_l1", "zeros"), TypeError,
     r"state_dict\['bias_hh_l1'\]: expected a float32 or float64 array, got dtype str"),
    ("ragged value", lambda sd: replaced(sd, "bias_hh_l1", [[0.0], [0.0, 1.0]]), TypeError,
     r"state_dict\['bias_hh_l1'\]: expected an array, got list that NumPy cannot convert"),
    ("all good but the last", all_doubled_but_last_broken, ValueError,
     r"state_dict\['bias_hh_l1_reverse'\]: expected shape \(\d+,\), got \(\d+,\)"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("make_bad, exc, match",
                         [pytest.param(*row[1:], id=row[0]) for row in STATE_DICT_CASES])
def test_load_state_dict_rejects_and_is_unchanged(make_bad, exc, match, kind, backend):
    m, twin = KINDS[kind](backend), KINDS[kind](backend)
    c, c_twin = layer_context(m), layer_context(twin)
    params = m.state_dict()
    with pytest.raises(exc, match=match):
        m.load_state_dict(make_bad(m.state_dict()))
    assert_same(m.state_dict(), params)
    assert_same(good_run(m, c), good_run(twin, c_twin))


# ------------------------------------------------------------------------------------------
# Functional ops: forward, backward
# ------------------------------------------------------------------------------------------

def ops_context(cell, backend):
    """Good arguments for ops.forward, and a training tape made with them."""
    G = ops.GATES[cell]
    rng = np.random.default_rng(0)
    u = lambda *shape: rng.uniform(-0.5, 0.5, shape).astype(F32)  # noqa: E731
    args = dict(cell=cell, x=u(T, B, I), w_ih=u(G * H, I), w_hh=u(G * H, H), b_ih=u(G * H),
                b_hh=u(G * H), h0=u(B, H), c0=u(B, H) if cell == "lstm" else None,
                lengths=np.array([T, 2, 1]), backend=backend)
    res = ops.forward(**args, training=True)
    grads = dict(dy=u(T, B, H), dh_n=u(B, H), dc_n=u(B, H) if cell == "lstm" else None)
    return SimpleNamespace(args=args, tape=res.tape, grads=grads, res=res)


def fwd(c, **changes):
    return ops.forward(**{**c.args, **changes})


def bwd(c, tape=None, **changes):
    return ops.backward(c.tape if tape is None else tape, **{**c.grads, **changes})


def layer_tape(c):
    m = fr.LSTM(I, H)
    return m.forward(c.args["x"], training=True)[2]


CELLS = ("lstm", "gru")
GH = {"lstm": 4 * H, "gru": 3 * H}

OPS_CASES = [
    # id, cells, bad call on the context, exception, message
    ("cell unknown", "lstm", lambda c: fwd(c, cell="lstmx"), ValueError,
     r"cell: expected one of \('lstm', 'gru', 'rnn_tanh', 'rnn_relu'\), got 'lstmx'"),
    ("cell kernel name", "gru", lambda c: fwd(c, cell="gru_reset_before"), ValueError,
     r"cell: expected one of .*, got 'gru_reset_before'"),
    ("cell int", "lstm", lambda c: fwd(c, cell=0), ValueError, r"cell: expected one of .*, got 0"),
    ("backend unknown", "lstm", lambda c: fwd(c, backend="gpu"), ValueError,
     r"backend: expected one of \('auto', 'cpu', 'cuda', 'numpy'\), got 'gpu'"),
    ("reverse not a bool", "gru", lambda c: fwd(c, reverse="no"), TypeError,
     r"reverse: expected True or False, got str 'no'"),
    ("training None", "lstm", lambda c: fwd(c, training=None), TypeError,
     r"training: expected True or False, got NoneType None"),
    ("reset_after int", "gru", lambda c: fwd(c, reset_after=0), TypeError,
     r"reset_after: expected True or False, got int 0"),
    # x
    ("x None", CELLS, lambda c: fwd(c, x=None), TypeError, r"x: expected an array, got None"),
    ("x 2-d", CELLS, lambda c: fwd(c, x=c.args["x"][0]), ValueError,
     r"x: expected a 3-d array, got shape \(3, 5\)"),
    ("x no rows", CELLS, lambda c: fwd(c, x=c.args["x"][:, :0]), ValueError,
     r"x: expected a non-empty \(T, B, I\) array, got shape \(4, 0, 5\)"),
    ("x no features", "lstm", lambda c: fwd(c, x=c.args["x"][..., :0]), ValueError,
     r"x: expected a non-empty \(T, B, I\) array, got shape \(4, 3, 0\)"),
    ("x int", CELLS, lambda c: fwd(c, x=c.args["x"].astype(np.int32)), TypeError,
     r"x: expected a float32 or float64 array, got dtype int32"),
    ("x float16", "lstm", lambda c: fwd(c, x=c.args["x"].astype(np.float16)), TypeError,
     r"x: expected a float32 or float64 array, got dtype float16"),
    ("x ragged", "gru", lambda c: fwd(c, x=[[[0.0]], [[0.0, 1.0]]]), TypeError,
     r"x: expected an array, got list that NumPy cannot convert"),
    # weights
    ("w_ih None", CELLS, lambda c: fwd(c, w_ih=None), TypeError,
     r"w_ih: expected an array, got None"),
    ("w_ih width", CELLS, lambda c: fwd(c, w_ih=c.args["w_ih"][:, :4]), ValueError,
     r"w_ih: expected shape \(\d+, 5\), got \(\d+, 4\)"),
    ("w_ih float64", CELLS, lambda c: fwd(c, w_ih=c.args["w_ih"].astype(F64)), TypeError,
     r"w_ih: expected dtype float32 \(x's\), got float64"),
    ("w_hh 1-d", CELLS, lambda c: fwd(c, w_hh=c.args["w_hh"].ravel()), ValueError,
     r"w_hh: expected a 2-d array, got shape \(\d+,\)"),
    ("w_hh H=0", "lstm", lambda c: fwd(c, w_hh=np.zeros((0, 0), F32)), ValueError,
     r"w_hh: expected shape \(G\*H, H\) with H > 0, got \(0, 0\)"),
    ("w_hh gates of another cell", "lstm", lambda c: fwd(c, w_hh=c.args["w_hh"][:3 * H]),
     ValueError, r"w_hh: expected shape \(24, 6\), got \(18, 6\)"),
    ("w_hh not square", "gru", lambda c: fwd(c, w_hh=c.args["w_hh"][:, :5]), ValueError,
     r"w_hh: expected shape \(15, 5\), got \(18, 5\)"),
    ("w_hh int", "gru", lambda c: fwd(c, w_hh=c.args["w_hh"].astype(np.int64)), TypeError,
     r"w_hh: expected a float32 array, got dtype int64"),
    ("b_ih only", CELLS, lambda c: fwd(c, b_hh=None), ValueError,
     r"b_ih, b_hh: expected both or neither, got only one"),
    ("b_hh misshapen", CELLS, lambda c: fwd(c, b_hh=c.args["b_hh"][:-1]), ValueError,
     r"b_hh: expected shape \(\d+,\), got \(\d+,\)"),
    ("b_ih float64", "gru", lambda c: fwd(c, b_ih=c.args["b_ih"].astype(F64)), TypeError,
     r"b_ih: expected dtype float32 \(x's\), got float64"),
    # state
    ("h0 layer-shaped", CELLS, lambda c: fwd(c, h0=c.args["h0"][None]), ValueError,
     r"h0: expected shape \(3, 6\), got \(1, 3, 6\)"),
    ("h0 float64", CELLS, lambda c: fwd(c, h0=c.args["h0"].astype(F64)), TypeError,
     r"h0: expected dtype float32 \(x's\), got float64"),
    ("c0 for a GRU", "gru", lambda c: fwd(c, c0=c.args["h0"]), ValueError,
     r"c0: expected None for cell 'gru' \(only LSTM has a cell state\), got numpy\.ndarray"),
    ("c0 misshapen", "lstm", lambda c: fwd(c, c0=c.args["c0"].T), ValueError,
     r"c0: expected shape \(3, 6\), got \(6, 3\)"),
    # lengths
    ("lengths 0", CELLS, lambda c: fwd(c, lengths=[0, 1, 1]), ValueError,
     r"lengths: expected values in \[1, 4\] \(the sequence length\), got 0"),
    ("lengths > T", CELLS, lambda c: fwd(c, lengths=[5, 1, 1]), ValueError,
     r"lengths: expected values in \[1, 4\] \(the sequence length\), got 5"),
    ("lengths count", CELLS, lambda c: fwd(c, lengths=[4, 4, 4, 4]), ValueError,
     r"lengths: expected shape \(3,\) \(one per batch row\), got \(4,\)"),
    ("lengths float", "lstm", lambda c: fwd(c, lengths=np.ones(B, F32)), TypeError,
     r"lengths: expected an integer array, got dtype float32"),
    ("lengths huge unsigned", "gru", lambda c: fwd(c, lengths=np.full(B, 2**63, np.uint64)),
     ValueError, rf"lengths: expected values in \[1, 4\] .*, got {2**63}"),
    # impossible allocations: zero-stride views stand for arrays far beyond any memory
    ("x beyond memory", CELLS, lambda c: fwd(c, x=huge_view((HUGE, HUGE, I)), h0=None, c0=None,
                                             lengths=None), ValueError,
     rf"x: shape \({HUGE}, {HUGE}, 5\) with H=6: forward\(training=False\) would need [\d.]+ GiB"),
    ("x beyond memory, training", "lstm",
     lambda c: fwd(c, x=huge_view((HUGE, HUGE, I)), h0=None, c0=None, lengths=None,
                   training=True),
     ValueError, rf"x: shape \({HUGE}, {HUGE}, 5\) with H=6: forward\(training=True\) would need"),
    ("weights beyond memory", "gru",
     lambda c: fwd(c, w_ih=huge_view((3 * HUGE, I)), w_hh=huge_view((3 * HUGE, HUGE)),
                   b_ih=None, b_hh=None, h0=None), ValueError,
     rf"x: shape \(4, 3, 5\) with H={HUGE}: forward\(training=False\) would need [\d.]+ GiB"),
    # backward: not a training tape of ops
    ("tape None", CELLS, lambda c: ops.backward(None), TypeError,
     r"tape: expected the fusedrnn\.ops\.Tape of a forward\(training=True\), got NoneType"),
    ("inference result as tape", CELLS, lambda c: ops.backward(fwd(c)), TypeError,
     r"tape: expected the fusedrnn\.ops\.Tape .*, got fusedrnn\.ops\.ForwardResult"),
    ("tape of an inference forward", "lstm", lambda c: ops.backward(fwd(c).tape), TypeError,
     r"tape: expected the fusedrnn\.ops\.Tape .*, got NoneType"),
    ("tape of a layer", CELLS, lambda c: bwd(c, tape=layer_tape(c)), TypeError,
     r"tape: expected the fusedrnn\.ops\.Tape .*, got fusedrnn\.layers\.Tape"),
    ("tape of the backend", "gru", lambda c: bwd(c, tape=c.tape._impl), TypeError,
     r"tape: expected the fusedrnn\.ops\.Tape .*, got (fusedrnn\._core\.Tape|dict)"),
    ("need_dx 0", CELLS, lambda c: bwd(c, need_dx=0), TypeError,
     r"need_dx: expected True or False, got int"),
    # backward: gradients
    ("dy misshapen", CELLS, lambda c: bwd(c, dy=c.grads["dy"][:, :, :5]), ValueError,
     r"dy: expected shape \(4, 3, 6\), got \(4, 3, 5\)"),
    ("dy float64", CELLS, lambda c: bwd(c, dy=c.grads["dy"].astype(F64)), TypeError,
     r"dy: expected dtype float32 \(the forward's\), got float64"),
    ("dy int", "lstm", lambda c: bwd(c, dy=c.grads["dy"].astype(np.int8)), TypeError,
     r"dy: expected a float32 array, got dtype int8"),
    ("dh_n misshapen", CELLS, lambda c: bwd(c, dh_n=c.grads["dh_n"][:2]), ValueError,
     r"dh_n: expected shape \(3, 6\), got \(2, 6\)"),
    ("dc_n for a GRU", "gru", lambda c: bwd(c, dc_n=c.grads["dh_n"]), ValueError,
     r"dc_n: expected None for cell 'gru', got numpy\.ndarray"),
    ("dc_n float64", "lstm", lambda c: bwd(c, dc_n=c.grads["dc_n"].astype(F64)), TypeError,
     r"dc_n: expected dtype float32 \(the forward's\), got float64"),
]


def ops_good_run(c):
    res = fwd(c, training=True)
    return res[:3], tuple(bwd(c, tape=res.tape))


def arrays_of(c):
    return {k: v.copy() for k, v in {**c.args, **c.grads}.items() if isinstance(v, np.ndarray)}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell, bad, exc, match", [
    pytest.param(cell, bad, exc, match, id=f"{cell}-{name}")
    for name, cells, bad, exc, match in OPS_CASES
    for cell in ((cells,) if isinstance(cells, str) else cells)])
def test_ops_rejects(cell, bad, exc, match, backend):
    c = ops_context(cell, backend)
    before, inputs = ops_good_run(c), arrays_of(c)
    with pytest.raises(exc, match=match):
        bad(c)
    assert_same(arrays_of(c), inputs)          # the caller's arrays are untouched
    assert_same(ops_good_run(c), before)


# ------------------------------------------------------------------------------------------
# The C++ glue, called directly: it re-checks everything and never crashes
# ------------------------------------------------------------------------------------------

def core_args(cell_id=0):
    """Good keyword arguments for _core.forward (cell 0 is LSTM, 1 GRU)."""
    G = (4, 3, 3, 1, 1)[cell_id]
    a = dict(cell=cell_id, x=np.full((T, B, I), 0.5, F32), h0=np.zeros((B, H), F32),
             c0=np.zeros((B, H), F32) if cell_id == 0 else None,
             w_ih=np.full((G * H, I), 0.1, F32), w_hh=np.full((G * H, H), 0.1, F32),
             b_ih=np.zeros(G * H, F32), b_hh=np.zeros(G * H, F32),
             lengths=np.array([T, 2, 1], np.int64), reverse=False, training=False)
    return a


def core_fwd(cell_id=0, **changes):
    return _core.forward(**{**core_args(cell_id), **changes})


def core_tape(cell_id=0):
    return core_fwd(cell_id, training=True)[3]


def core_bwd(tape=None, dy=None, dh_n=None, dc_n=None):
    return _core.backward(core_tape() if tape is None else tape, dy, dh_n, dc_n)


A = core_args()


def read_only(a):
    a.flags.writeable = False
    return a


PAIR_ORDER = ("cell", "x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "lengths", "reverse",
              "training")


def pair_call(cell_id=0, y=None, **changes):
    """A tuple of _core.forward's arguments, in its order, for _core.forward_pair."""
    a = {**core_args(cell_id), **changes}
    return (*(a[k] for k in PAIR_ORDER), y)


def pair_fwd(call_a=None, call_b=None):
    return _core.forward_pair(pair_call() if call_a is None else call_a,
                              pair_call(reverse=True) if call_b is None else call_b)


def float64_args(cell_id=0):
    return {k: v.astype(np.float64) if isinstance(v, np.ndarray) and v.dtype == F32 else v
            for k, v in core_args(cell_id).items()}


def pair_y_over(name, y_of="b"):
    """A pair whose one call's y ends 3 values into the memory of the other call's input
    `name`."""
    want = A[name]
    buf = np.zeros(want.size + T * B * H, F32)
    inp = buf[:want.size].reshape(want.shape)
    inp[...] = want
    y = buf[want.size - 3:want.size - 3 + T * B * H].reshape(T, B, H)
    reader, writer = pair_call(**{name: inp}), pair_call(reverse=True, y=y)
    return pair_fwd(reader, writer) if y_of == "b" else pair_fwd(writer, reader)


def halves(shift=0):
    """The two halves of a (T, B, 2H) array's rows, the second `shift` values to the left."""
    both = np.zeros((T, B, 2 * H), F32)
    return both[..., :H], both[..., H - shift:2 * H - shift]


def overlapping(name, offset=0):
    """A forward whose y starts `offset` values into the memory of float32 input `name` (at
    its end: the y of a forward that must succeed)."""
    want = A[name]
    buf = np.zeros(offset + T * B * H + want.size, F32)
    inp = buf[:want.size].reshape(want.shape)
    inp[...] = want
    return core_fwd(**{name: inp}, y=buf[offset:offset + T * B * H].reshape(T, B, H))

CORE_CASES = [
    # forward: cell id
    ("cell -1", lambda: core_fwd(cell=-1), ValueError, r"cell: expected 0\.\.4 .*, got -1"),
    ("cell 5", lambda: core_fwd(cell=5), ValueError, r"cell: expected 0\.\.4 .*, got 5"),
    ("cell float", lambda: core_fwd(cell=1.5), TypeError, r"cell: expected 0\.\.4 .*, got float"),
    ("cell bool", lambda: core_fwd(cell=True), TypeError, r"cell: expected 0\.\.4 .*, got bool"),
    ("cell beyond int", lambda: core_fwd(cell=2**70), ValueError,
     r"cell: expected 0\.\.4 .*, got 1180591620717411303424"),
    ("reverse not a bool", lambda: core_fwd(reverse=1), TypeError,
     r"reverse: expected True or False, got int"),
    ("training not a bool", lambda: core_fwd(training=None), TypeError,
     r"training: expected True or False, got NoneType"),
    # forward: not arrays
    ("x list", lambda: core_fwd(x=A["x"].tolist()), TypeError,
     r"x: expected a numpy\.ndarray, got list"),
    ("x None", lambda: core_fwd(x=None), TypeError, r"x: expected a numpy\.ndarray, got NoneType"),
    ("w_hh list", lambda: core_fwd(w_hh=A["w_hh"].tolist()), TypeError,
     r"w_hh: expected a numpy\.ndarray, got list"),
    ("w_ih None", lambda: core_fwd(w_ih=None), TypeError,
     r"w_ih: expected a numpy\.ndarray, got NoneType"),
    # forward: wrong dtype, mismatched dtypes
    ("x float16", lambda: core_fwd(x=A["x"].astype(np.float16)), TypeError,
     r"x: expected dtype float32 or float64, got float16"),
    ("x int", lambda: core_fwd(x=A["x"].astype(np.int32)), TypeError,
     r"x: expected dtype float32 or float64, got int32"),
    ("x big-endian", lambda: core_fwd(x=A["x"].astype(">f4")), TypeError,
     r"x: expected dtype float32 or float64, got >f4"),
    ("w_ih float64 with x float32", lambda: core_fwd(w_ih=A["w_ih"].astype(F64)), TypeError,
     r"w_ih: expected dtype float32, got float64"),
    ("x float64 with float32 weights", lambda: core_fwd(x=A["x"].astype(F64)), TypeError,
     r"w_ih: expected dtype float64, got float32"),
    ("w_hh float64", lambda: core_fwd(w_hh=A["w_hh"].astype(F64)), TypeError,
     r"w_hh: expected dtype float32, got float64"),
    ("b_hh float64", lambda: core_fwd(b_hh=A["b_hh"].astype(F64)), TypeError,
     r"b_hh: expected dtype float32, got float64"),
    ("h0 float64", lambda: core_fwd(h0=A["h0"].astype(F64)), TypeError,
     r"h0: expected dtype float32, got float64"),
    ("c0 float64", lambda: core_fwd(c0=A["c0"].astype(F64)), TypeError,
     r"c0: expected dtype float32, got float64"),
    ("lengths int32", lambda: core_fwd(lengths=A["lengths"].astype(np.int32)), TypeError,
     r"lengths: expected dtype int64, got int32"),
    ("lengths float", lambda: core_fwd(lengths=A["lengths"].astype(F64)), TypeError,
     r"lengths: expected dtype int64, got float64"),
    # forward: wrong shape
    ("x 2-d", lambda: core_fwd(x=A["x"][0]), ValueError,
     r"x: expected a 3-d array \(T, B, I\), got shape \(3, 5\)"),
    ("w_hh 1-d", lambda: core_fwd(w_hh=A["w_hh"].ravel()), ValueError,
     r"w_hh: expected a 2-d array \(G\*H, H\), got shape \(144,\)"),
    ("w_hh gates of GRU", lambda: core_fwd(w_hh=A["w_hh"][:3 * H]), ValueError,
     r"w_hh: expected shape \(24, 6\), got \(18, 6\)"),
    ("w_ih width", lambda: core_fwd(w_ih=A["w_ih"][:, :4].copy()), ValueError,
     r"w_ih: expected shape \(24, 5\), got \(24, 4\)"),
    ("b_ih misshapen", lambda: core_fwd(b_ih=A["b_ih"][:5]), ValueError,
     r"b_ih: expected shape \(24,\), got \(5,\)"),
    ("b_ih only", lambda: core_fwd(b_hh=None), ValueError,
     r"b_ih, b_hh: expected both or neither, got only one"),
    ("h0 misshapen", lambda: core_fwd(h0=A["h0"][None]), ValueError,
     r"h0: expected shape \(3, 6\), got \(1, 3, 6\)"),
    ("c0 for GRU", lambda: core_fwd(1, c0=A["h0"]), ValueError,
     r"c0: expected None for a cell without c state, got ndarray"),
    ("lengths count", lambda: core_fwd(lengths=np.array([1, 1], np.int64)), ValueError,
     r"lengths: expected shape \(3,\), got \(2,\)"),
    # forward: zero sizes
    ("T=0", lambda: core_fwd(x=A["x"][:0], lengths=None), ValueError,
     r"T \(sequence length\): expected 1\.\.\d+, got 0"),
    ("B=0", lambda: core_fwd(x=A["x"][:, :0], h0=None, c0=None, lengths=None), ValueError,
     r"B \(batch size\): expected 1\.\.\d+, got 0"),
    ("B=0 training", lambda: core_fwd(x=A["x"][:, :0], h0=None, c0=None, lengths=None,
                                      training=True), ValueError, r"B \(batch size\): .*got 0"),
    ("I=0", lambda: core_fwd(x=A["x"][..., :0].copy(), w_ih=A["w_ih"][:, :0].copy()), ValueError,
     r"I \(input size\): expected 1\.\.\d+, got 0"),
    ("H=0", lambda: core_fwd(w_ih=A["w_ih"][:0], w_hh=A["w_hh"][:0, :0], b_ih=None, b_hh=None,
                             h0=None, c0=None), ValueError,
     r"H \(hidden size\): expected 1\.\.\d+, got 0"),
    # forward: not C-contiguous, or misaligned
    ("x Fortran order", lambda: core_fwd(x=np.asfortranarray(A["x"])), ValueError,
     r"x: expected an aligned, C-contiguous array, got a strided one"),
    ("x reversed view", lambda: core_fwd(x=A["x"][::-1]), ValueError,
     r"x: expected an aligned, C-contiguous array, got a strided one"),
    ("x misaligned", lambda: core_fwd(x=unaligned(A["x"])), ValueError,
     r"x: expected an aligned, C-contiguous array, got an unaligned one"),
    ("w_hh transposed view", lambda: core_fwd(w_hh=np.full((H, 4 * H), 0.1, F32).T), ValueError,
     r"w_hh: expected an aligned, C-contiguous array, got a strided one"),
    ("w_ih misaligned", lambda: core_fwd(w_ih=unaligned(A["w_ih"])), ValueError,
     r"w_ih: expected an aligned, C-contiguous array, got an unaligned one"),
    ("h0 strided", lambda: core_fwd(h0=np.zeros((B, 2 * H), F32)[:, ::2]), ValueError,
     r"h0: expected an aligned, C-contiguous array, got a strided one"),
    ("lengths strided", lambda: core_fwd(lengths=np.arange(2 * B, dtype=np.int64)[1::2]),
     ValueError, r"lengths: expected an aligned, C-contiguous array, got a strided one"),
    # forward: an output array to write y into
    ("y float64", lambda: core_fwd(y=np.zeros((T, B, H))), TypeError,
     r"y: expected dtype float32, got float64"),
    ("y list", lambda: core_fwd(y=np.zeros((T, B, H)).tolist()), TypeError,
     r"y: expected a numpy\.ndarray, got list"),
    ("y misshapen", lambda: core_fwd(y=np.zeros((T, B, H + 1), F32)), ValueError,
     r"y: expected shape \(4, 3, 6\), got \(4, 3, 7\)"),
    ("y read-only", lambda: core_fwd(y=read_only(np.zeros((T, B, H), F32))), ValueError,
     r"y: expected a writeable array, got a read-only one"),
    ("y strided units", lambda: core_fwd(y=np.zeros((T, B, 2 * H), F32)[..., 1::2]), ValueError,
     r"y: expected an array whose \(t, b\) rows are contiguous and evenly spaced"),
    ("y misaligned", lambda: core_fwd(y=unaligned(np.zeros((T, B, H), F32))), ValueError,
     r"y: expected an aligned array, got an unaligned one"),
    ("y reversed view", lambda: core_fwd(y=np.zeros((T, B, H), F32)[::-1]), ValueError,
     r"y: expected an array whose \(t, b\) rows .*, got strides \(-72, 24, 4\)"),
    ("y over h0", lambda: overlapping("h0"), ValueError,
     r"y: expected an array apart from the inputs' memory, got one that may share memory with "
     r"h0"),
    ("y over w_hh", lambda: overlapping("w_hh"), ValueError,
     r"y: expected an array apart .*, got one that may share memory with w_hh"),
    ("y over the end of x", lambda: overlapping("x", offset=T * B * I - 3), ValueError,
     r"y: expected an array apart .*, got one that may share memory with x"),
    ("y with B=0", lambda: core_fwd(x=A["x"][:, :0], h0=None, c0=None, lengths=None,
                                    y=np.zeros((T, 0, H), F32)), ValueError,
     r"B \(batch size\): expected 1\.\.\d+, got 0"),
    # forward: lengths out of range, inference and training
    ("lengths 0", lambda: core_fwd(lengths=np.array([T, 0, 1], np.int64)), ValueError,
     r"lengths\[1\]: expected 1\.\.4, got 0"),
    ("lengths > T", lambda: core_fwd(lengths=np.array([T + 1, 1, 1], np.int64)), ValueError,
     r"lengths\[0\]: expected 1\.\.4, got 5"),
    ("lengths negative, training", lambda: core_fwd(lengths=np.array([1, 1, -7], np.int64),
                                                    training=True), ValueError,
     r"lengths\[2\]: expected 1\.\.4, got -7"),
    ("lengths > T, training", lambda: core_fwd(lengths=np.array([1, 2**62, 1], np.int64),
                                               training=True), ValueError,
     rf"lengths\[1\]: expected 1\.\.4, got {2**62}"),
    # backward: not a Tape
    ("tape None", lambda: _core.backward(None, None, None, None), TypeError,
     r"tape: expected a fusedrnn\._core\.Tape from a training forward, got NoneType"),
    ("tape int", lambda: _core.backward(3, None, None, None), TypeError,
     r"tape: expected a fusedrnn\._core\.Tape .*, got int"),
    ("tape of ops", lambda: _core.backward(ops.forward("lstm", A["x"], A["w_ih"], A["w_hh"],
                                                       training=True, backend="cpu").tape,
                                           None, None, None), TypeError,
     r"tape: expected a fusedrnn\._core\.Tape .*, got Tape"),
    ("tape of an inference forward", lambda: _core.backward(core_fwd()[3], None, None, None),
     TypeError, r"tape: expected a fusedrnn\._core\.Tape .*, got NoneType"),
    ("need_dx None", lambda: _core.backward(core_tape(), None, None, None, None), TypeError,
     r"need_dx: expected True or False, got NoneType"),
    ("Tape constructed from Python", lambda: _core.Tape(), TypeError, r"No constructor defined"),
    # backward: gradients
    ("dy misshapen", lambda: core_bwd(dy=np.zeros((T, B, H + 1), F32)), ValueError,
     r"dy: expected shape \(4, 3, 6\), got \(4, 3, 7\)"),
    ("dy float64", lambda: core_bwd(dy=np.zeros((T, B, H))), TypeError,
     r"dy: expected dtype float32, got float64"),
    ("dy list", lambda: core_bwd(dy=np.zeros((T, B, H)).tolist()), TypeError,
     r"dy: expected a numpy\.ndarray, got list"),
    ("dy strided units", lambda: core_bwd(dy=np.zeros((T, B, 2 * H), F32)[..., ::2]),
     ValueError, r"dy: expected an array whose \(t, b\) rows are contiguous and evenly "
                 r"spaced .*, got strides \(144, 48, 8\) with itemsize 4"),
    ("dy batch-first view", lambda: core_bwd(dy=np.zeros((B, T, H), F32).transpose(1, 0, 2)),
     ValueError, r"dy: expected an array whose \(t, b\) rows .*, got strides "
                 r"\(24, 96, 4\)"),
    ("dy misaligned", lambda: core_bwd(dy=unaligned(np.zeros((T, B, H), F32))), ValueError,
     r"dy: expected an aligned array, got an unaligned one"),
    ("dh_n misshapen", lambda: core_bwd(dh_n=np.zeros((B, H - 1), F32)), ValueError,
     r"dh_n: expected shape \(3, 6\), got \(3, 5\)"),
    ("dc_n float64", lambda: core_bwd(dc_n=np.zeros((B, H))), TypeError,
     r"dc_n: expected dtype float32, got float64"),
    ("dc_n for GRU", lambda: core_bwd(core_tape(1), dc_n=np.zeros((B, H), F32)), ValueError,
     r"dc_n: expected None for a cell without c state, got ndarray"),
    # forward_pair: each call checked as forward's, and the two apart
    ("pair call_a short", lambda: pair_fwd(call_a=(None,)), TypeError,
     r"call_a: expected a tuple of forward's 12 arguments, got a tuple of 1"),
    ("pair call_b list", lambda: pair_fwd(call_b=list(pair_call())), TypeError,
     r"call_b: expected a tuple of forward's 12 arguments, got list"),
    ("pair call_b x misshapen", lambda: pair_fwd(call_b=pair_call(x=np.zeros((T, B, I + 1), F32))),
     ValueError, r"call_b: w_ih: expected shape \(24, 6\), got \(24, 5\)"),
    ("pair dtypes", lambda: pair_fwd(call_b=pair_call(**float64_args())), TypeError,
     r"call_b: expected x of call_a's dtype float32, got float64"),
    ("pair one y for both", lambda: (lambda y: pair_fwd(pair_call(y=y), pair_call(y=y)))(
        np.zeros((T, B, H), F32)), ValueError,
     r"call_b: expected a y apart from call_a's y .*, got one that may share memory with it"),
    ("pair halves overlapping", lambda: (lambda a, b: pair_fwd(pair_call(y=a), pair_call(y=b)))(
        *halves(shift=1)), ValueError, r"call_b: expected a y apart from call_a's y"),
    ("pair y over the other's x", lambda: pair_y_over("x"), ValueError,
     r"call_b: expected a y apart from call_a's inputs, got one that may share memory with its "
     r"x"),
    ("pair y over the other's w_hh", lambda: pair_y_over("w_hh", y_of="a"), ValueError,
     r"call_a: expected a y apart .*, got one that may share memory with its w_hh"),
    # backward_pair
    ("pair backward tape None", lambda: _core.backward_pair((None, None, None, None, True),
                                                            (core_tape(), None, None, None, True)),
     TypeError, r"call_a: tape: expected a fusedrnn\._core\.Tape from a training forward, got "
                r"NoneType"),
    ("pair backward call_b short", lambda: _core.backward_pair(
        (core_tape(), None, None, None, True), (core_tape(),)), TypeError,
     r"call_b: expected a tuple \(tape, dy, dh_n, dc_n, need_dx\), got a tuple of 1"),
    ("pair backward need_dx 1", lambda: _core.backward_pair(
        (core_tape(), None, None, None, True), (core_tape(), None, None, None, 1)), TypeError,
     r"call_b: need_dx: expected True or False, got int"),
    ("pair backward dtypes", lambda: _core.backward_pair(
        (core_tape(), None, None, None, True),
        (_core.forward(**{**float64_args(), "training": True})[3], None, None, None, True)),
     TypeError, r"call_b: expected a tape of call_a's dtype float32, got float64"),
]


@needs_core
@pytest.mark.parametrize("bad, exc, match", [pytest.param(*row[1:], id=row[0])
                                             for row in CORE_CASES])
def test_core_rejects(bad, exc, match):
    with pytest.raises(exc, match=match):
        bad()


@needs_core
def test_core_takes_a_y_right_after_x():
    """y may start where x's memory ends, and the forward leaves x as it was."""
    y, x = overlapping("x", offset=T * B * I)[0], A["x"]
    assert np.shares_memory(y, y.base) and not np.shares_memory(y, x)
    np.testing.assert_array_equal(y, core_fwd()[0])


@needs_core
def test_core_pair_takes_the_halves_of_one_y():
    """Two directions may write the two halves of one array's rows: forward's results, bit for
    bit, and the same as those of each call alone."""
    y_a, y_b = halves()
    (ya, *rest_a), (yb, *rest_b) = pair_fwd(pair_call(y=y_a), pair_call(reverse=True, y=y_b))
    assert ya is y_a and yb is y_b
    for y, call in ((y_a, core_fwd()), (y_b, core_fwd(reverse=True))):
        np.testing.assert_array_equal(y, call[0])


@needs_core
@pytest.mark.parametrize("cell_id", range(5))
def test_core_good_arguments_run(cell_id):
    """The tables above change one argument of calls that succeed as they stand."""
    y, h_n, c_n, tape = core_fwd(cell_id, training=True)
    assert y.shape == (T, B, H) and (c_n is not None) == (cell_id == 0)
    dx = core_bwd(tape, dy=np.ones_like(y))[0]
    assert dx.shape == (T, B, I)


# ------------------------------------------------------------------------------------------
# NaN and inf: no validation error, no crash, no warning; they simply propagate
# ------------------------------------------------------------------------------------------

def poisoned(where, value):
    def x_at(m, c):
        x = c.x.copy()
        x[1, 0, 2] = value
        return dict(x=x)

    def x_in_padding(m, c):       # row 1 is 2 steps long: x[3, 1] is never read by forward
        x = c.x.copy()
        x[3, 1] = value
        return dict(x=x, lengths=[T, 2, T])

    def state(m, c):
        h = h_of(c.state).copy()
        h[0, 1, 0] = value
        return dict(x=c.x, state=with_h(c.state, h))

    def weights(m, c):
        sd = m.state_dict()
        sd["weight_hh_l0"][0, 0] = value
        m.load_state_dict(sd)
        return dict(x=c.x)

    return {"x": x_at, "x padding": x_in_padding, "state": state, "weights": weights}[where]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("where", ["x", "x padding", "state", "weights"])
def test_non_finite_inputs_just_run(where, value, kind, backend):
    m = KINDS[kind](backend)
    c = layer_context(m)
    kwargs = poisoned(where, value)(m, c)
    y, state, tape = m.forward(**kwargs, training=True)
    dx, dstate, dparams = m.backward(tape, c.dy, state)
    assert y.shape == c.y.shape and dx.shape == c.x.shape
    assert list(dparams) == list(m.state_dict())
    if np.isnan(value) and where != "x padding":
        assert np.isnan(y).any()
    if where == "x padding":        # what forward returns never reads the padding
        assert np.isfinite(y).all() and np.isfinite(h_of(state)).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_through_ops(backend):
    c = ops_context("gru", backend)
    x = c.args["x"].copy()
    x[0, 0, 0] = np.nan
    res = fwd(c, x=x, training=True)
    grads = bwd(c, tape=res.tape)
    assert np.isnan(res.y).any() and grads.dx.shape == x.shape


# ------------------------------------------------------------------------------------------
# set_num_threads
# ------------------------------------------------------------------------------------------

@needs_core
@pytest.mark.parametrize("threads, exc, match", [
    (0, ValueError, r"threads: expected a positive int, got 0"),
    (-4, ValueError, r"threads: expected a positive int, got -4"),
    (1.5, TypeError, r"threads: expected a positive int, got float 1\.5"),
    ("2", TypeError, r"threads: expected a positive int, got str '2'"),
    (None, TypeError, r"threads: expected a positive int, got NoneType None"),
    (True, TypeError, r"threads: expected a positive int, got bool True"),
    (5000, ValueError, r"threads: expected a positive int up to 1024, got 5000"),
    (2**40, ValueError, r"threads: expected a positive int up to 1024, got 1099511627776"),
])
def test_set_num_threads_rejects(threads, exc, match):
    before = _core.build_info()["threads"]
    with pytest.raises(exc, match=match):
        fr.set_num_threads(threads)
    assert _core.build_info()["threads"] == before
