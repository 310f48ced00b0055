"""The per-step API (layer.step) and truncated BPTT (fusedrnn.tbptt): stepping a stack T times
computes what one forward over T steps does; chunks carry the state exactly and cut the
gradient at their borders."""

import numpy as np
import pytest
from conftest import LAYERS, leaves, rel_err

import fusedrnn as fr
from fusedrnn import tbptt

T, B, I, H = 7, 3, 4, 5
# float64 throughout: the same kernels on the same numbers, only the input projection is one
# GEMM over T·B rows in one case and T GEMMs over B rows in the other (another summation order).
RTOL = 1e-12


def make(kcell, **kwargs):
    return LAYERS[kcell](I, H, num_layers=2, dtype="float64", seed=0, **kwargs)


def random_state(layer, rng, batch=B):
    h = rng.uniform(-1, 1, (layer.num_layers, batch, H))
    return (h, rng.uniform(-1, 1, h.shape)) if isinstance(layer, fr.LSTM) else h


# ---------------------------------------------------------------------------------------------
# step
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kcell", list(LAYERS))
@pytest.mark.parametrize("batch_first", [False, True])
def test_stepping_equals_one_forward(kcell, batch_first):
    rng = np.random.default_rng(0)
    layer = make(kcell, batch_first=batch_first)
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I))
    state0 = random_state(layer, rng)
    y, state_n = layer(x, state0)
    state, steps = state0, []
    for t in range(T):
        y_t, state = layer.step(x[:, t] if batch_first else x[t], state)
        steps.append(y_t)
    assert rel_err(np.stack(steps, axis=1 if batch_first else 0), y) < RTOL
    for a, b in zip(leaves(state), leaves(state_n)):
        assert rel_err(a, b) < RTOL


def test_step_unbatched():
    rng = np.random.default_rng(0)
    layer = make("lstm")
    x = rng.standard_normal((T, I))
    y, state_n = layer(x)
    state = None
    for t in range(T):
        y_t, state = layer.step(x[t], state)
    assert y_t.shape == (H,) and rel_err(y_t, y[-1]) < RTOL
    assert rel_err(state[1], state_n[1]) < RTOL


def test_step_refuses_bad_input():
    layer = make("gru")
    with pytest.raises(ValueError, match=r"x: expected shape \(B, 4\) or \(4,\) \(input_size\), "
                                         r"got \(3, 5\)"):
        layer.step(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="x: expected a 1-d or 2-d array, got shape"):
        layer.step(np.zeros((1, 3, 4)))
    bi = fr.LSTM(I, H, bidirectional=True)
    with pytest.raises(ValueError, match="step: expected a unidirectional layer"):
        bi.step(np.zeros((3, I), np.float32))


# ---------------------------------------------------------------------------------------------
# truncated BPTT
# ---------------------------------------------------------------------------------------------
LENGTH, SPLIT = 12, (5, 5, 2)  # a sequence of 12 steps run as chunks of 5, 5 and 2


def chunked(x):
    bounds = np.cumsum((0,) + SPLIT)
    return [x[:, a:b] for a, b in zip(bounds[:-1], bounds[1:])]


@pytest.mark.parametrize("kcell", list(LAYERS))
def test_chunks_carry_the_state_exactly(kcell):
    rng = np.random.default_rng(1)
    layer = make(kcell, batch_first=True, dropout=0.0)
    x = rng.standard_normal((B, LENGTH, I))
    state0 = random_state(layer, rng)
    y, state_n = layer(x, state0)
    chunks = list(tbptt.run(layer, chunked(x), state0))
    assert [c.index for c in chunks] == [0, 1, 2]
    assert rel_err(np.concatenate([c.y for c in chunks], axis=1), y) < RTOL
    for a, b in zip(leaves(chunks[-1].state), leaves(state_n)):
        assert rel_err(a, b) < RTOL
    assert chunks[1].state0 is chunks[0].state  # each starts where the last one ended


@pytest.mark.parametrize("kcell", ["lstm", "gru_reset_before"])
def test_chunk_gradients_stop_at_the_chunk_borders(kcell):
    rng = np.random.default_rng(2)
    layer = make(kcell, batch_first=True)
    x = rng.standard_normal((B, LENGTH, I))
    chunks = list(tbptt.run(layer, chunked(x)))
    for chunk in chunks:
        dy = rng.standard_normal(chunk.y.shape)
        dx, dparams = chunk.backward(dy)
        # What the chunk alone gives when run from its carried state with no gradient for its
        # final state, i.e. nothing flows to or from the other chunks.
        alone = make(kcell, batch_first=True)
        _, _, tape = alone.forward(chunked(x)[chunk.index], chunk.state0, training=True)
        want_dx, _, want = alone.backward(tape, dy)
        assert rel_err(dx, want_dx) < RTOL
        for k in want:
            assert rel_err(dparams[k], want[k]) < RTOL, k


def test_one_chunk_is_full_bptt_and_several_are_not():
    rng = np.random.default_rng(3)
    layer = make("lstm", batch_first=True)
    x = rng.standard_normal((B, LENGTH, I))
    y, _, tape = layer.forward(x, training=True)
    dy = rng.standard_normal(y.shape)
    _, _, full = layer.backward(tape, dy)
    (whole,) = tbptt.run(layer, [x])
    _, grads = whole.backward(dy)
    for k in full:
        assert rel_err(grads[k], full[k]) < RTOL
    total = None
    for chunk, dy_c in zip(tbptt.run(layer, chunked(x)), chunked(dy)):
        _, g = chunk.backward(dy_c)
        total = g if total is None else {k: total[k] + g[k] for k in g}
    # The recurrent weights' gradient loses the terms that cross chunk borders.
    assert rel_err(total["weight_hh_l0"], full["weight_hh_l0"]) > 1e-3


def test_run_is_lazy_and_uses_the_latest_parameters():
    rng = np.random.default_rng(4)
    layer = make("gru", batch_first=True)
    x = rng.standard_normal((B, LENGTH, I))
    chunks = tbptt.run(layer, chunked(x))
    first = next(chunks)
    zeroed = {k: np.zeros_like(v) for k, v in layer.state_dict().items()}
    layer.load_state_dict(zeroed)  # as an optimiser step between chunks would
    second = next(chunks)
    # All-zero weights: every gate is ½ and n is 0, so h halves each step from the carried h.
    np.testing.assert_allclose(second.y[:, 0], first.state[-1] / 2, rtol=1e-15)


def test_run_refuses_bad_input():
    with pytest.raises(TypeError, match="layer: expected a fusedrnn LSTM, GRU or RNN, got list"):
        tbptt.run([], [])
    with pytest.raises(ValueError, match="layer: expected a unidirectional layer"):
        tbptt.run(fr.GRU(I, H, bidirectional=True), [])
    with pytest.raises(TypeError, match="chunks: expected an iterable of input arrays, got int"):
        tbptt.run(fr.GRU(I, H), 3)
