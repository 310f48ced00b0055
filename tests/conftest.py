"""Shared helpers: the cell variants, random arrays for one layer or a layer's state, a
relative-error measure, and what the comparisons must allow for: ReLU's kink and the BLAS."""

import ctypes
import functools
import glob
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


# Pre-activations of a ReLU RNN closer to 0 than this, in the tests' data of values about 1,
# can round to either side of 0 by the order of a product's sums: the derivative there is 1 on
# one side and 0 on the other, and a whole term of the gradient then separates two correct
# results. ~100 times what two float32 sums of I + H terms may differ by where I + H is a few
# hundred, as in the large tests that use it; at I = 8000 the two may differ by ~1e-5.
RELU_KINK_MARGIN = 1e-4


def clear_relu_kinks(rng, arrays, lengths=None, reverse=False):
    """Redraws, in place, the rows of x (one step of one batch row each) that give a ReLU RNN a
    pre-activation within RELU_KINK_MARGIN of 0, walking the steps in the kernels' order with
    `lengths`, so that no rounding decides a ReLU's branch.

    Seen: the reference's float32 dx was 1% off the kernels' (a ReLU RNN, T=80 B=700 H=24, one
    pre-activation of ~1e-8) under NumPy's OpenBLAS on every CPU but Haswell's and Zen's, whose
    sums happened to round it as the kernels did."""
    x = arrays["x"]
    T, B, I = x.shape
    w_ih, w_hh = arrays["w_ih"].astype(np.float64), arrays["w_hh"].astype(np.float64)
    bias = sum(np.zeros(w_hh.shape[0]) if arrays[b] is None else arrays[b].astype(np.float64)
               for b in ("b_ih", "b_hh"))
    h = np.zeros((B, w_hh.shape[1])) if arrays["h0"] is None else arrays["h0"].astype(np.float64)
    active_until = np.full(B, T) if lengths is None else np.asarray(lengths)
    for t in reversed(range(T)) if reverse else range(T):
        active = t < active_until
        for _ in range(100):
            pre = x[t].astype(np.float64) @ w_ih.T + h @ w_hh.T + bias
            near = active & (np.abs(pre) < RELU_KINK_MARGIN).any(axis=1)
            if not near.any():
                break
            x[t, near] = rng.uniform(-1, 1, (int(near.sum()), I)).astype(x.dtype)
        else:
            raise AssertionError(f"step {t}: no x keeps its ReLUs off their kink")
        h = np.where(active[:, None], np.maximum(pre, 0), h)


@functools.cache
def blas_rows_exact(dtype, k, n):
    """Whether the OpenBLAS the kernels call gives each row of x·Wᵀ (x with k columns, W n rows)
    the same bits however many rows it is computed with and wherever it lies among them: what a
    batch row needs to get the same bits from a product over a call split elsewhere in time, or
    over another batch. Probed on products of 2 to 16 rows and of about 256 (a chunk's products
    are larger than the small-matrix kernels some OpenBLAS cores have). OpenBLAS's Haswell
    kernels do at k < 8, not beyond; Sandy Bridge's do; Nehalem's, K10's and Atom's do not in
    float64 from k = 4 (OPENBLAS_CORETYPE picks them). True where that OpenBLAS cannot be
    loaded."""
    try:
        import scipy_openblas32
        lib = ctypes.CDLL(glob.glob(os.path.join(scipy_openblas32.get_lib_dir(),
                                                 f"*{scipy_openblas32.get_library()}.*"))[0])
        gemm = lib.scipy_cblas_dgemm if dtype == np.float64 else lib.scipy_cblas_sgemm
    except (ImportError, IndexError, OSError, AttributeError):
        return True
    real = ctypes.c_double if dtype == np.float64 else ctypes.c_float
    # (order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc); 32-bit ints
    integer, pointer = ctypes.c_int, ctypes.c_void_p
    gemm.argtypes = [integer] * 6 + [real, pointer, integer, pointer, integer, real, pointer,
                                     integer]
    gemm.restype = None
    row_major, no_trans, trans = 101, 111, 112
    rng = np.random.default_rng(0)
    x, w = rng.uniform(-1, 1, (288, k)).astype(dtype), rng.uniform(-1, 1, (n, k)).astype(dtype)

    def product(rows):
        c = np.empty((len(rows), n), dtype)
        gemm(row_major, no_trans, trans, len(rows), n, k, 1, rows.ctypes.data, k, w.ctypes.data,
             k, 0, c.ctypes.data, n)
        return c

    whole = product(x)
    parts = [(first, m) for m in range(2, 16) for first in range(16 - m + 1)]
    parts += [(first, m) for m in (255, 256, 257) for first in range(288 - m + 1)]
    return all(np.array_equal(product(x[first:first + m].copy()), whole[first:first + m])
               for first, m in parts)


def assert_same_rows(actual, desired, blas_product=None, err_msg=""):
    """Bitwise equal, unless the rows came through a BLAS product x·Wᵀ (blas_product: its k and
    n) that rounds a row by its place in the product (blas_rows_exact): then equal to within the
    rounding of its sums."""
    exact = blas_product is None or blas_rows_exact(desired.dtype.type, *blas_product)
    if exact:
        np.testing.assert_array_equal(actual, desired, err_msg=err_msg)
    else:
        rtol = 1e-12 if desired.dtype == np.float64 else 1e-5
        np.testing.assert_allclose(actual, desired, rtol=rtol, atol=rtol * np.abs(desired).max(),
                                   err_msg=err_msg)
