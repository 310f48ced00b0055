"""Shared helpers: the cell variants, random arrays for one layer or a layer's state, and a
relative-error measure."""

import functools
import os

import numpy as np
import pytest

# Importing fusedrnn.torch shares torch's OpenMP threads for the whole process; the tests run on
# fusedrnn's own threads unless they share them themselves (test_threads.py, test_torch_module.py).
# CI runs the suite once more on torch's threads: FUSEDRNN_SHARE_TORCH_THREADS=1 pytest -p
# fusedrnn.torch (.ci/run).
os.environ.setdefault("FUSEDRNN_SHARE_TORCH_THREADS", "0")

import fusedrnn
from fusedrnn import ops

# The five kernel variants, keyed by kernel name: (ops cell name, reset_after) and layer class.
KERNEL_CELLS = {
    "lstm": ("lstm", True),
    "gru": ("gru", True),
    "gru_reset_before": ("gru", False),
    "rnn_tanh": ("rnn_tanh", True),
    "rnn_relu": ("rnn_relu", True),
}
LAYERS = {
    "lstm": fusedrnn.LSTM,
    "gru": fusedrnn.GRU,
    "gru_reset_before": functools.partial(fusedrnn.GRU, reset_after=False),
    "rnn_tanh": functools.partial(fusedrnn.RNN, nonlinearity="tanh"),
    "rnn_relu": functools.partial(fusedrnn.RNN, nonlinearity="relu"),
}


@pytest.fixture(autouse=True)
def kernel_threads_unchanged():
    """Fails a test that leaves the kernels' thread count changed: every test after it would run
    on that count (the examples once left one thread behind, and the kernel tests after them ran
    single-threaded, past the code that cuts work over threads)."""
    if "cpu" not in fusedrnn.backends():
        yield
        return
    before = fusedrnn.get_num_threads()
    yield
    after = fusedrnn.get_num_threads()
    assert after == before, f"the test left {after} kernel threads, found {before}"


def leaves(state):
    """The arrays of a layer state: (h, c) for LSTM, (h,) otherwise."""
    return state if isinstance(state, tuple) else (state,)


def random_state(rng, layer, batch):
    """A random state (or state gradient) for `layer`; batch None means unbatched input."""
    shape = (layer.num_layers * layer.num_directions,) + (() if batch is None else (batch,))
    shape += (layer.hidden_size,)
    h = rng.uniform(-1, 1, shape).astype(layer.dtype)
    if isinstance(layer, fusedrnn.LSTM):
        return h, rng.uniform(-1, 1, shape).astype(layer.dtype)
    return h


def run_layer(layer, x, state, lengths, dy, dstate):
    """A layer's forward(training=True) and backward, every result by name: y, dx, state_n[k],
    dstate0[k] and the parameter gradients under their state_dict names."""
    y, state_n, tape = layer.forward(x, state, lengths, training=True)
    dx, dstate0, dparams = layer.backward(tape, dy, dstate)
    return dict(y=y, dx=dx, **dparams,
                **{f"state_n[{k}]": v for k, v in enumerate(leaves(state_n))},
                **{f"dstate0[{k}]": v for k, v in enumerate(leaves(dstate0))})


def layer_arrays(rng, kcell, dtype, T, B, I, H, bias=True, state=True):
    """Random x, w_ih, w_hh, b_ih, b_hh, h0, c0 for one layer of kernel cell `kcell`.

    Weights are uniform in ±1/√H like torch.nn's, inputs and states in ±1; the biases are None
    without `bias`, h0 and c0 None without `state`, and c0 is None unless the cell is an LSTM."""
    G = ops.GATES[kcell]
    bound = 1.0 / np.sqrt(H)

    def uniform(shape, scale=1.0):
        return rng.uniform(-scale, scale, shape).astype(dtype)

    has_c = state and kcell == "lstm"
    return dict(
        x=uniform((T, B, I)),
        w_ih=uniform((G * H, I), bound),
        w_hh=uniform((G * H, H), bound),
        b_ih=uniform((G * H,), bound) if bias else None,
        b_hh=uniform((G * H,), bound) if bias else None,
        h0=uniform((B, H)) if state else None,
        c0=uniform((B, H)) if has_c else None,
    )


def rel_err(a, b):
    """max|a - b| / max|b|, in float64; b is the reference. Exact zeros compare as 0."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), np.finfo(np.float64).tiny)
