"""Property tests: over random shapes, cells, variants, layers, directions, lengths, batch_first,
states and dtypes, the C++ kernels equal the NumPy reference.

Hypothesis draws the configurations. The "ci" profile (default) runs a few hundred examples,
derandomised so that a run is reproducible; FUSEDRNN_HYPOTHESIS_PROFILE=long runs thousands with
fresh randomness each time (see tests/README.md)."""

import os

import numpy as np
import pytest
from conftest import KERNEL_CELLS, LAYERS, layer_arrays, random_state, run_layer

from fusedrnn import ops
from fusedrnn._backend import _core

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is a test extra")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

pytestmark = pytest.mark.skipif(_core is None, reason="the compiled extension is not built")

# Deadlines off: the machine running the suite may be shared and slow.
settings.register_profile("ci", max_examples=250, derandomize=True, deadline=None,
                          database=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=5000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
PROFILE = os.environ.get("FUSEDRNN_HYPOTHESIS_PROFILE", "ci")

# As in test_kernels.py: float64 differs from the reference only in summation order (a few ulp
# times the accumulation depth); float32 rounds at ~1e-7 per operation over ~1e2 operations.
# The error is taken relative to max(max|reference|, 1): inputs, weights and states are O(1), so
# a result that is small by cancellation (a pre-activation summing to 0.004, say) carries the
# absolute rounding error of its O(1) terms, not one relative to itself. Hypothesis found such
# cases with the purely relative measure of test_kernels.py.
RTOL = {np.float32: 1e-5, np.float64: 1e-10}


def scaled_err(got, want):
    """max|got - want| / max(max|want|, 1), in float64."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1.0)
DTYPES = st.sampled_from([np.float32, np.float64])


@st.composite
def lengths_for(draw, T, B):
    """None (every row full) or B lengths in [1, T]."""
    if draw(st.booleans()):
        return None
    return np.array(draw(st.lists(st.integers(1, T), min_size=B, max_size=B)))


@settings(settings.get_profile(PROFILE))
@given(kcell=st.sampled_from(list(KERNEL_CELLS)), dtype=DTYPES, T=st.integers(1, 12),
       B=st.integers(1, 6), I=st.integers(1, 9), H=st.integers(1, 12), reverse=st.booleans(),
       bias=st.booleans(), state=st.booleans(), data=st.data(),
       seed=st.integers(0, 2**32 - 1))
def test_op_equals_reference(kcell, dtype, T, B, I, H, reverse, bias, state, data, seed):
    rng = np.random.default_rng(seed)
    arrays = layer_arrays(rng, kcell, dtype, T, B, I, H, bias=bias, state=state)
    lengths = data.draw(lengths_for(T, B), label="lengths")
    grad_of = data.draw(st.sampled_from(["y", "final", "both"]), label="gradients of")

    def maybe(shape, wanted):
        return rng.uniform(-1, 1, shape).astype(dtype) if wanted else None

    final = grad_of != "y"
    grads = dict(dy=maybe((T, B, H), grad_of != "final"), dh_n=maybe((B, H), final),
                 dc_n=maybe((B, H), final and kcell == "lstm"))
    cell, reset_after = KERNEL_CELLS[kcell]
    results = {}
    for backend in ("cpu", "numpy"):
        res = ops.forward(cell, **arrays, lengths=lengths, reverse=reverse, training=True,
                          reset_after=reset_after, backend=backend)
        results[backend] = dict(y=res.y, h_n=res.h_n, c_n=res.c_n,
                                **ops.backward(res.tape, **grads)._asdict())
    for name, want in results["numpy"].items():
        got = results["cpu"][name]
        if want is None:
            assert got is None, name
        else:
            assert got.dtype == dtype and got.shape == want.shape, name
            assert scaled_err(got, want) < RTOL[dtype], name


@settings(settings.get_profile(PROFILE))
@given(kind=st.sampled_from(list(LAYERS)), dtype=DTYPES, num_layers=st.integers(1, 3),
       bidirectional=st.booleans(), batch_first=st.booleans(), bias=st.booleans(),
       unbatched=st.booleans(), dropout=st.sampled_from([0.0, 0.4]), T=st.integers(1, 8),
       B=st.integers(1, 5), I=st.integers(1, 7), H=st.integers(1, 9), data=st.data(),
       seed=st.integers(0, 2**32 - 1))
def test_layer_equals_reference(kind, dtype, num_layers, bidirectional, batch_first, bias,
                                unbatched, dropout, T, B, I, H, data, seed):
    kwargs = dict(num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first,
                  bias=bias, dropout=dropout, dtype=dtype, seed=seed)
    # The same seed gives both the same parameters and the same dropout masks.
    ref = LAYERS[kind](I, H, backend="numpy", **kwargs)
    cpu = LAYERS[kind](I, H, backend="cpu", **kwargs)
    rng = np.random.default_rng(seed)
    batch = None if unbatched else B
    lengths = None if unbatched else data.draw(lengths_for(T, B), label="lengths")
    x_shape = (T, I) if unbatched else (B, T, I) if batch_first else (T, B, I)
    x = rng.uniform(-1, 1, x_shape).astype(dtype)
    state = random_state(rng, ref, batch) if data.draw(st.booleans(), label="state") else None
    dstate = random_state(rng, ref, batch) if data.draw(st.booleans(), label="dstate") else None
    dy = rng.uniform(-1, 1, x_shape[:-1] + (ref.num_directions * H,)).astype(dtype)
    got, want = (run_layer(layer, x, state, lengths, dy, dstate) for layer in (cpu, ref))
    assert got.keys() == want.keys()
    for name, value in want.items():
        assert got[name].dtype == dtype and got[name].shape == value.shape, name
        assert scaled_err(got[name], value) < RTOL[dtype], name
