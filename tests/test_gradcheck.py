"""Finite differences against the NumPy reference's backward, in float64: the ground truth the
kernels are compared with is itself checked here."""

import numpy as np
import pytest
from conftest import KERNEL_CELLS, LAYERS, layer_arrays, leaves, random_state, rel_err

from fusedrnn import ops

T, B, I, H = 4, 3, 3, 4
LENGTHS = np.array([T, 1, 3])
EPS = 1e-6
# Central differences: truncation error ~eps²·|f'''| ~1e-12 and rounding error
# ~1e-16·|loss|/eps ~1e-10, both far below 1e-6 relative; a wrong or missing term is off by O(1).
RTOL = 1e-6
SAMPLES = 10  # entries per array in the layer check, where every entry would be slow


def check_gradients(loss, inputs, analytic, rng=None):
    """Compares analytic[name] with central differences of loss() in the entries of
    inputs[name], an array that loss() reads and that is perturbed in place: every entry, or
    SAMPLES random ones when an rng is given."""
    for name, arr in inputs.items():
        flat = arr.reshape(-1)  # a view: writing it changes what loss() sees
        idx = (np.arange(flat.size) if rng is None
               else rng.choice(flat.size, min(SAMPLES, flat.size), replace=False))
        numeric = np.empty(idx.size)
        for k, i in enumerate(idx):
            orig = flat[i]
            flat[i] = orig + EPS
            up = loss()
            flat[i] = orig - EPS
            numeric[k] = (up - loss()) / (2 * EPS)
            flat[i] = orig
        assert rel_err(analytic[name].reshape(-1)[idx], numeric) < RTOL, name


def dot(a, b):
    return 0.0 if a is None else float(np.sum(a * b))


@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["no_lengths", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("kcell", KERNEL_CELLS)
def test_op_gradients(kcell, reverse, lengths):
    cell, reset_after = KERNEL_CELLS[kcell]
    rng = np.random.default_rng(10)
    arrays = layer_arrays(rng, kcell, np.float64, T, B, I, H)
    dy, dh, dc = rng.normal(size=(T, B, H)), rng.normal(size=(B, H)), rng.normal(size=(B, H))

    def run(training=False):
        return ops.forward(cell, **arrays, lengths=lengths, reverse=reverse, training=training,
                           reset_after=reset_after, backend="numpy")

    def loss():
        y, h_n, c_n, _ = run()
        return dot(y, dy) + dot(h_n, dh) + dot(c_n, dc)

    grads = ops.backward(run(training=True).tape, dy, dh, dc if kcell == "lstm" else None)
    inputs = {name: arr for name, arr in arrays.items() if arr is not None}
    check_gradients(loss, inputs, {name: getattr(grads, "d" + name) for name in inputs})


@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["no_lengths", "lengths"])
@pytest.mark.parametrize("kind", LAYERS)
def test_layer_gradients(kind, lengths):
    layer = LAYERS[kind](I, H, num_layers=2, bidirectional=True, dtype="float64", seed=11,
                         backend="numpy")
    rng = np.random.default_rng(12)
    x = rng.normal(size=(T, B, I))
    state, dstate = random_state(rng, layer, B), random_state(rng, layer, B)
    dy = rng.normal(size=(T, B, 2 * H))
    params = layer.state_dict()

    def loss():
        layer.load_state_dict(params)
        y, state_n, _ = layer.forward(x, state, lengths)
        return dot(y, dy) + sum(dot(s, d) for s, d in zip(leaves(state_n), leaves(dstate)))

    _, _, tape = layer.forward(x, state, lengths, training=True)
    dx, dstate0, dparams = layer.backward(tape, dy, dstate)
    inputs = dict(x=x, **params, **{f"state[{k}]": s for k, s in enumerate(leaves(state))})
    analytic = dict(x=dx, **dparams, **{f"state[{k}]": s for k, s in enumerate(leaves(dstate0))})
    check_gradients(loss, inputs, analytic, rng)
