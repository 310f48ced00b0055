"""Extreme inputs: long sequences, saturated gates, states near the float limits, NaN and Inf,
and sizes whose element counts pass 2^31.

FUSEDRNN_LONG_TESTS=1 adds the T = 10,000 comparison with the reference for every cell and dtype
(about a minute); FUSEDRNN_BIGMEM_TESTS=1 adds a forward whose input projection holds more than
2^31 values (about 12 GB of memory and a few minutes)."""

import os

import numpy as np
import pytest
from conftest import KERNEL_CELLS, assert_same_rows, clear_relu_kinks, layer_arrays

from fusedrnn import ops
from fusedrnn._backend import _core

pytestmark = pytest.mark.skipif(_core is None, reason="the compiled extension is not built")

LONG = os.environ.get("FUSEDRNN_LONG_TESTS") == "1"
BIGMEM = os.environ.get("FUSEDRNN_BIGMEM_TESTS") == "1"
DTYPES = [np.float32, np.float64]


def scaled_err(got, want):
    """max|got - want| / max(max|want|, 1) (see test_properties.py)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1.0)


def run(backend, kcell, arrays, lengths=None, reverse=False, dy=None, dh_n=None):
    """forward(training=True) and backward; every result by name."""
    cell, reset_after = KERNEL_CELLS[kcell]
    res = ops.forward(cell, **arrays, lengths=lengths, reverse=reverse, training=True,
                      reset_after=reset_after, backend=backend)
    grads = ops.backward(res.tape, np.ones_like(res.y) if dy is None else dy, dh_n)
    out = dict(y=res.y, h_n=res.h_n, c_n=res.c_n, **grads._asdict())
    return {k: v for k, v in out.items() if v is not None}


def assert_matches_reference(kcell, arrays, rtol, grad_rtol=None, **kwargs):
    """Every output finite and within rtol of the reference (the gradients within grad_rtol)."""
    with np.errstate(all="ignore"):
        got, want = run("cpu", kcell, arrays, **kwargs), run("numpy", kcell, arrays, **kwargs)
    for name, ref in want.items():
        assert np.isfinite(got[name]).all(), name
        tol = rtol if name in ("y", "h_n", "c_n") or grad_rtol is None else grad_rtol
        assert scaled_err(got[name], ref) < tol, name


# -- long sequences ----------------------------------------------------------------------------

# Over 10^4 steps the weight gradients sum 2·10^4 rows: float32's rounding (~6e-8 each) grows to
# ~1e-5 (2.3e-5 seen for rnn_relu); float64's to ~1e-14.
LONG_RTOL = {np.float32: 1e-4, np.float64: 1e-11}
LONG_CASES = [(k, d) for k in KERNEL_CELLS for d in DTYPES] if LONG else [
    ("lstm", np.float64), ("rnn_relu", np.float32)]


@pytest.mark.parametrize("kcell, dtype", LONG_CASES, ids=lambda v: getattr(v, "__name__", v))
def test_ten_thousand_steps_match_reference(kcell, dtype):
    rng = np.random.default_rng(0)
    arrays = layer_arrays(rng, kcell, dtype, 10_000, 2, 3, 4)
    if kcell == "rnn_relu":  # 80,000 pre-activations: the nearest to 0 was 4e-6 of the largest
        clear_relu_kinks(rng, arrays)
    assert_matches_reference(kcell, arrays, LONG_RTOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kcell", KERNEL_CELLS)
def test_ten_thousand_steps_equal_two_halves(kcell, dtype):
    """One call over T = 10,000 gives bitwise what two calls of 5,000 chained through the final
    state give: nothing drifts or overflows with the step index. A GRU's input projection
    (x·W_ihᵀ over a chunk's steps, which the two calls cut elsewhere) goes through BLAS where
    the kernel is not AVX-512's: bitwise there where the BLAS rounds a row alike wherever it
    lies (conftest.blas_rows_exact). LSTM and RNN take x in each step's product at this size."""
    T, I, H = 10_000, 4, 8
    a = layer_arrays(np.random.default_rng(1), kcell, dtype, T, 3, I, H)
    cell, reset_after = KERNEL_CELLS[kcell]

    def fwd(x, h0, c0):
        return ops.forward(cell, x, a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], h0, c0,
                           reset_after=reset_after)

    whole = fwd(a["x"], a["h0"], a["c0"])
    first = fwd(a["x"][:T // 2], a["h0"], a["c0"])
    second = fwd(a["x"][T // 2:], first.h_n, first.c_n)
    assert np.isfinite(whole.y).all()
    blas_projects = kcell.startswith("gru") and _core.build_info()["recurrent_kernel"] != "avx512f"
    projection = (I, ops.GATES[kcell] * H) if blas_projects else None
    assert_same_rows(np.concatenate([first.y, second.y]), whole.y, projection)
    assert_same_rows(second.h_n, whole.h_n, projection)


# -- saturation and magnitudes -----------------------------------------------------------------

RTOL = {np.float32: 1e-5, np.float64: 1e-10}
# Near saturation 1 - σ(p) is resolved only to ulp(1) (6e-8 in float32), and the kernels and the
# reference compute σ by different formulas (through exp and through tanh), so σ'(p) = σ(1 - σ)
# may differ by ~6e-8 absolute; dW_ih multiplies it by |x| ~ 1e4: ~1e-3 of |dW_ih| ~ 1.
SATURATED_GRAD_RTOL = {np.float32: 2e-3, np.float64: 1e-10}


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kcell", KERNEL_CELLS)
def test_saturated_gates(kcell, dtype, reverse):
    """Pre-activations of magnitude up to ~1e4: every gate is pinned at 0, 1 or ±1, the outputs
    and gradients stay finite and equal the reference's."""
    rng = np.random.default_rng(2)
    arrays = layer_arrays(rng, kcell, dtype, 6, 4, 5, 7)
    # x·W_ih has 5 terms of |x| <= 1e4 and |w| <= 1/sqrt(7): |pre| up to ~1e4.
    arrays["x"] = (arrays["x"] * 1e4).astype(dtype)
    arrays["b_ih"] = (arrays["b_ih"] * 1e4).astype(dtype)
    lengths = np.array([6, 1, 3, 6])
    pre = arrays["x"].reshape(-1, 5) @ arrays["w_ih"].T
    assert np.abs(pre).max() > 5e3
    assert_matches_reference(kcell, arrays, RTOL[dtype], SATURATED_GRAD_RTOL[dtype],
                             lengths=lengths, reverse=reverse)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kcell", KERNEL_CELLS)
def test_states_near_the_float_limit(kcell, dtype):
    """h0 (or LSTM's c0) a thousandth (a half) of the largest float: the recurrent products stay
    finite, so every output and gradient must be finite too, and equal the reference's."""
    rng = np.random.default_rng(3)
    arrays = layer_arrays(rng, kcell, dtype, 6, 3, 4, 5)
    big = np.finfo(dtype).max
    if kcell == "lstm":  # c' = f·c + i·g stays below |c0| + 1
        arrays["c0"] = (np.sign(arrays["c0"]) * big / 2).astype(dtype)
    else:  # |W_hh·h0| <= 5 · (1/sqrt(5)) · |h0|
        arrays["h0"] = (np.sign(arrays["h0"]) * big / 1e3).astype(dtype)
    assert_matches_reference(kcell, arrays, RTOL[dtype])


# -- the kernels' own tanh ------------------------------------------------------------------------

def kernel_tanh(x, H):
    """tanh as the kernels compute it: one RNN-tanh step with W_ih = I, W_hh = 0 and no bias
    makes each pre-activation x itself (x·1 plus zeros), so h = tanh(x). x is (rows, H)."""
    w_ih, w_hh = np.eye(H, dtype=x.dtype), np.zeros((H, H), x.dtype)
    return ops.forward("rnn_tanh", x[None], w_ih, w_hh, backend="cpu").y[0]


# cell_math.h's bounds: float32 2.46 ulp over all 2^32 floats (checked once), float64 2.61 over
# 5·10^7 arguments against long double.
TANH_ULP = {np.float32: 2.5, np.float64: 3.0}


@pytest.mark.parametrize("dtype", DTYPES)
def test_tanh_within_its_ulp_bound(dtype):
    """The kernels' own tanh (cell_math.h: one formula, E/(E+2) with E = e^2|x| - 1) against an
    exact tanh (float64's for float32, long double's for float64) over 2^18 values of every
    magnitude from 1e-30 to 20, both signs, through whole vectors of the pointwise loop, never
    beyond ±1. Saturated and non-finite inputs give ±1 and NaN; subnormal ones themselves."""
    rng = np.random.default_rng(4)
    n = 1 << 18
    x = np.exp(rng.uniform(np.log(1e-30), np.log(20.0), n)) * rng.choice([-1.0, 1.0], n)
    x = np.concatenate([x, np.linspace(-1, 1, n)]).astype(dtype).reshape(-1, 64)
    exact_type = np.float64 if dtype == np.float32 else np.longdouble
    got = kernel_tanh(x, 64).astype(exact_type)
    exact = np.tanh(x.astype(exact_type))
    info = np.finfo(dtype)
    # The spacing of dtype in the binade of the exact value (not of its rounding, which may be
    # the next binade up).
    with np.errstate(divide="ignore"):
        binade = np.floor(np.log2(np.abs(exact).astype(np.float64)))
        ulp = np.exp2(np.maximum(binade - info.nmant, info.minexp - info.nmant))
    assert np.max(np.abs(got - exact) / ulp) <= TANH_ULP[dtype]
    assert np.max(np.abs(got)) <= 1.0
    tiny = info.smallest_subnormal
    special = np.array([[np.inf], [-np.inf], [np.nan], [1e30], [-1e30], [19.5], [-19.5], [tiny],
                        [-4 * tiny]], dtype)
    np.testing.assert_array_equal(kernel_tanh(special, 1)[:, 0],
                                  np.array([1, -1, np.nan, 1, -1, 1, -1, tiny, -4 * tiny], dtype))


# -- NaN and Inf -------------------------------------------------------------------------------

def poison(arrays, where, b, value, t):
    out = dict(arrays)
    arr = arrays[where].copy()
    if where == "x":
        arr[t, b, 1] = value
    else:
        arr[b, 0] = value
    out[where] = arr
    return out


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kcell, where", [(k, w) for k in KERNEL_CELLS for w in ("x", "h0", "c0")
                                          if w != "c0" or k == "lstm"])
def test_non_finite_values_stay_in_their_row(kcell, where, dtype, reverse, value):
    """The policy of README.md ("NaN and Inf"): a NaN or Inf in row b of x, h0 or c0 changes
    nothing in any other row of y, h_n, c_n, dx, dh0 and dc0, bitwise; a NaN reaches row b's
    output at its step and every later one (in the direction of the walk), up to the row's
    length."""
    T, B, b, t = 6, 4, 2, 2
    arrays = layer_arrays(np.random.default_rng(4), kcell, dtype, T, B, 5, 7)
    lengths = np.array([6, 2, 5, 6])
    dy = np.random.default_rng(5).uniform(-1, 1, (T, B, 7)).astype(dtype)
    clean = run("cpu", kcell, arrays, lengths, reverse, dy)
    dirty = run("cpu", kcell, poison(arrays, where, b, value, t), lengths, reverse, dy)
    for name in ("y", "h_n", "c_n", "dx", "dh0", "dc0"):
        if name in clean:
            axis = 1 if clean[name].ndim == 3 else 0
            others = np.delete(np.arange(B), b)
            np.testing.assert_array_equal(dirty[name].take(others, axis),
                                          clean[name].take(others, axis), err_msg=name)
    if np.isnan(value):
        steps = np.arange(T)
        # The first step that reads the NaN (x[t] at step t; h0 at the walk's first step).
        first = t if where == "x" else (lengths[b] - 1 if reverse else 0)
        reached = (steps <= first) if reverse else (steps >= first)
        valid = steps < lengths[b]
        assert np.isnan(dirty["y"][reached & valid, b]).any(axis=-1).all()
        assert np.isfinite(dirty["y"][~reached & valid, b]).all()
        assert (dirty["y"][~valid, b] == 0).all()


# -- sizes past 2^31 ---------------------------------------------------------------------------

def test_more_rows_than_blas_can_index_is_a_clear_error():
    """T·B > 2^31 - 1 rows cannot be one GEMM with 32-bit BLAS: the C++ check refuses it before
    touching memory (np.zeros maps the 8 GiB lazily and nothing reads it)."""
    T, B = 2**16, 2**15 + 1
    try:
        x = np.zeros((T, B, 1), np.float32)
    except MemoryError:
        pytest.skip("this machine refuses an 8 GiB mapping")
    w = np.zeros((1, 1), np.float32)
    with pytest.raises(ValueError, match=r"T\*B: expected at most 2147483647 rows, got "
                                         + str(T * B)):
        _core.forward(cell=3, x=x, h0=None, c0=None, w_ih=w, w_hh=w, b_ih=None, b_hh=None,
                      lengths=None, reverse=False, training=False)


@pytest.mark.skipif(not BIGMEM, reason="needs ~12 GB; set FUSEDRNN_BIGMEM_TESTS=1")
def test_input_projection_past_two_to_the_31_values():
    """LSTM, T·B·4H = 2^31 + 2^16 values in the input projection: the last rows, whose late
    time steps lie at offsets only 64-bit arithmetic reaches, equal the reference run on those
    rows alone (batch rows are independent)."""
    T, B, I, H = 2**14, 2**15 + 1, 1, 1
    rng = np.random.default_rng(6)
    a = layer_arrays(rng, "lstm", np.float32, 1, 1, I, H)
    x = np.zeros((T, B, I), np.float32)
    tail = slice(B - 8, B)
    x[:, tail] = rng.uniform(-1, 1, (T, 8, I))
    res = ops.forward("lstm", x, a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"])
    ref = ops.forward("lstm", np.ascontiguousarray(x[:, tail]), a["w_ih"], a["w_hh"],
                      a["b_ih"], a["b_hh"], backend="numpy")
    assert scaled_err(res.y[:, tail], ref.y) < 1e-6
    assert scaled_err(res.h_n[tail], ref.h_n) < 1e-6
    # Every other row saw x = 0 and must hold the same value as the first.
    assert (res.y[:, : B - 8] == res.y[:, :1]).all()
