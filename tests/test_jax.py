"""fusedrnn.jax: outputs and gradients against jax.grad of the reference math written in
jax.numpy here (the formulas of fusedrnn/reference.py), under jit, grad and vmap."""

import functools

import numpy as np
import pytest
from conftest import KERNEL_CELLS, layer_arrays, rel_err

import fusedrnn

jax = pytest.importorskip("jax", reason="fusedrnn.jax needs jax")
if "cpu" not in fusedrnn.backends():
    pytest.skip(f"fusedrnn.jax needs the compiled kernels ({fusedrnn.CORE_ERROR})",
                allow_module_level=True)
import jax.numpy as jnp  # noqa: E402  (after the skips)

import fusedrnn.jax as frj  # noqa: E402

T, B, I, H = 5, 3, 4, 6
LENGTHS = np.array([3, T, 1])
# float64: the kernels and XLA differ only in summation order; float32: ~1e-7 rounding per
# operation over ~1e2 accumulated operations (as in test_kernels.py).
RTOL = {np.float32: 1e-5, np.float64: 1e-10}
ARGS = ("x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0")


@pytest.fixture(autouse=True)
def x64():
    # jax.enable_x64 in newer jax (0.10.2 here), jax.experimental.enable_x64 in 0.4.35, the least
    # pyproject.toml asks for.
    enable_x64 = getattr(jax, "enable_x64", None)
    if enable_x64 is None:
        from jax.experimental import enable_x64
    # On a GPU, XLA's default float32 products round their inputs to TF32 (~3e-4 off here); the
    # reference must be full float32.
    with enable_x64(True), jax.default_matmul_precision("highest"):
        yield


def reference_layer(kcell, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse):
    """One layer, one direction, one step at a time, in jax.numpy (y, h_n, c_n)."""
    H = w_hh.shape[1]
    h, c, ys = h0, c0, [None] * x.shape[0]
    for t in (reversed(range(x.shape[0])) if reverse else range(x.shape[0])):
        gx = x[t] @ w_ih.T + b_ih
        if kcell == "lstm":
            i, f, g, o = jnp.split(gx + h @ w_hh.T + b_hh, 4, axis=1)
            c_new = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h_new = jax.nn.sigmoid(o) * jnp.tanh(c_new)
        elif kcell.startswith("gru"):
            before = kcell == "gru_reset_before"
            gh = h @ w_hh[:2 * H].T + b_hh[:2 * H] if before else h @ w_hh.T + b_hh
            r = jax.nn.sigmoid(gx[:, :H] + gh[:, :H])
            z = jax.nn.sigmoid(gx[:, H:2 * H] + gh[:, H:2 * H])
            hn = (r * h) @ w_hh[2 * H:].T + b_hh[2 * H:] if before else r * gh[:, 2 * H:]
            h_new = (1 - z) * jnp.tanh(gx[:, 2 * H:] + hn) + z * h
        else:
            pre = gx + h @ w_hh.T + b_hh
            h_new = jnp.tanh(pre) if kcell == "rnn_tanh" else jnp.maximum(pre, 0)
        active = (t < lengths)[:, None]  # past its length a row keeps its state and outputs 0
        h = jnp.where(active, h_new, h)
        if c is not None:
            c = jnp.where(active, c_new, c)
        ys[t] = jnp.where(active, h_new, 0)
    return jnp.stack(ys), h, c


def fused_layer(kcell, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse):
    """fusedrnn.jax's function for kcell, returning (y, h_n, c_n) like reference_layer."""
    cell, reset_after = KERNEL_CELLS[kcell]
    if cell == "lstm":
        return frj.lstm(x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths=lengths, reverse=reverse)
    if cell == "gru":
        out = frj.gru(x, w_ih, w_hh, b_ih, b_hh, h0, lengths=lengths, reverse=reverse,
                      reset_after=reset_after)
    else:
        out = frj.rnn(x, w_ih, w_hh, b_ih, b_hh, h0, lengths=lengths, reverse=reverse,
                      nonlinearity=cell[4:])
    return out + (None,)


def loss_and_grads(layer, kcell, arrays, lengths, reverse, weights, jit):
    """A fixed weighting of every output, its value and jax.grad with respect to every array
    given (None entries are left out), under jax.jit if `jit`."""
    names = [k for k in ARGS if arrays[k] is not None]

    def loss(*values):
        given = dict(zip(names, values))
        outs = layer(kcell, *(given.get(k) for k in ARGS), lengths, reverse)
        return sum((o * w).sum() for o, w in zip(outs, weights) if o is not None)

    value_and_grad = jax.value_and_grad(loss, argnums=tuple(range(len(names))))
    value, grads = (jax.jit(value_and_grad) if jit else value_and_grad)(
        *(arrays[k] for k in names))
    return dict(loss=value, **{f"d{k}": g for k, g in zip(names, grads)})


@pytest.mark.parametrize("dtype, bias, state, lengths, reverse", [
    (np.float32, True, True, LENGTHS, False), (np.float64, True, True, None, False),
    (np.float64, True, False, LENGTHS, True), (np.float64, False, True, LENGTHS, False)])
@pytest.mark.parametrize("kcell", KERNEL_CELLS)
def test_outputs_and_gradients_equal_the_jax_numpy_reference(kcell, dtype, bias, state, lengths,
                                                             reverse):
    rng = np.random.default_rng(0)
    arrays = layer_arrays(rng, kcell, dtype, T, B, I, H, bias=bias, state=state)
    args = [arrays[k] for k in ARGS]
    expected = reference_layer_filled(kcell, *args, lengths, reverse)
    for a, b in zip(fused_layer(kcell, *args, lengths, reverse), expected):
        assert (a is None) == (b is None)
        if b is not None:
            assert a.dtype == dtype and rel_err(a, b) < RTOL[dtype]
    weights = [None if o is None else rng.uniform(-1, 1, o.shape).astype(dtype)
               for o in expected]
    ours = loss_and_grads(fused_layer, kcell, arrays, lengths, reverse, weights, jit=True)
    # Not jitted: compiling the unrolled reference would take most of this test's time.
    theirs = loss_and_grads(reference_layer_filled, kcell, arrays, lengths, reverse, weights,
                            jit=False)
    assert ours.keys() == theirs.keys()
    for name in theirs:
        assert rel_err(ours[name], theirs[name]) < RTOL[dtype], name


def reference_layer_filled(kcell, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse):
    """reference_layer with absent biases and states as zeros and absent lengths as T (what
    None means)."""
    lengths = np.full(np.shape(x)[1], np.shape(x)[0]) if lengths is None else lengths
    x, w_ih, w_hh = jnp.asarray(x), jnp.asarray(w_ih), jnp.asarray(w_hh)
    state = jnp.zeros((x.shape[1], H), x.dtype)
    bias = jnp.zeros(w_hh.shape[0], x.dtype)

    def given(a, default):
        return default if a is None else jnp.asarray(a)

    return reference_layer(kcell, x, w_ih, w_hh, given(b_ih, bias), given(b_hh, bias),
                           given(h0, state), given(c0, state) if kcell == "lstm" else None,
                           lengths, reverse)


def test_vmap_maps_over_a_batch_of_sequences():
    rng = np.random.default_rng(1)
    arrays = layer_arrays(rng, "gru", np.float64, T, B, I, H)
    xs = rng.uniform(-1, 1, (2, T, B, I))
    mapped = jax.vmap(lambda x: frj.gru(x, arrays["w_ih"], arrays["w_hh"])[0])(xs)
    for k in range(2):
        single = frj.gru(xs[k], arrays["w_ih"], arrays["w_hh"])[0]
        np.testing.assert_array_equal(mapped[k], single)


@pytest.mark.parametrize("call, error, match", [
    (lambda a: frj.lstm(a["x"][0], a["w_ih"], a["w_hh"]), ValueError, "x: expected a float32"),
    (lambda a: frj.lstm(a["x"], a["w_ih"][:, :2], a["w_hh"]), ValueError,
     r"w_ih: expected a float64 array of shape \(24, 4\)"),
    (lambda a: frj.lstm(a["x"], a["w_ih"], a["w_hh"], a["b_ih"]), ValueError,
     "b_ih, b_hh: expected both or neither"),
    (lambda a: frj.lstm(a["x"], a["w_ih"], a["w_hh"], lengths=[1.0, 2.0, 3.0]), ValueError,
     "lengths: expected B=3 ints"),
    (lambda a: frj.rnn(a["x"], a["w_ih"][:6], a["w_hh"][:6], nonlinearity="gelu"), ValueError,
     "nonlinearity: expected 'tanh' or 'relu'"),
    (lambda a: frj.lstm(a["x"], a["w_ih"], a["w_hh"], reverse=1), TypeError,
     "reverse: expected True or False"),
])
def test_bad_input_names_the_argument(call, error, match):
    arrays = layer_arrays(np.random.default_rng(2), "lstm", np.float64, T, B, I, H)
    with pytest.raises(error, match=match):
        call(arrays)


@pytest.mark.parametrize("kcell", ["lstm", "gru"])
def test_backward_skips_what_the_gradient_does_not_need(kcell, monkeypatch):
    """Differentiated with respect to the weights only, with a loss of h_n alone: the kernels'
    backward is asked for no dx and gets no dy (jax's symbolic zeros), and the gradients still
    equal the reference's."""
    rng = np.random.default_rng(3)
    arrays = layer_arrays(rng, kcell, np.float64, T, B, I, H)
    calls = []
    backward = fusedrnn.ops.backward

    def spy(tape, dy=None, dh_n=None, dc_n=None, *, need_dx=True):
        calls.append((dy is None, dh_n is None, need_dx))
        return backward(tape, dy, dh_n, dc_n, need_dx=need_dx)

    monkeypatch.setattr(fusedrnn.ops, "backward", spy)
    x, w_ih, w_hh = (jnp.asarray(arrays[k]) for k in ("x", "w_ih", "w_hh"))
    weights = jnp.asarray(rng.uniform(-1, 1, (B, H)))

    def loss(layer, w_ih, w_hh):
        return (layer(kcell, x, w_ih, w_hh, None, None, None, None, LENGTHS, False)[1]
                * weights).sum()

    ours = jax.jit(jax.grad(functools.partial(loss, fused_layer), argnums=(0, 1)))(w_ih, w_hh)
    theirs = jax.grad(functools.partial(loss, reference_layer_filled), argnums=(0, 1))(w_ih, w_hh)
    assert calls == [(True, False, False)]
    for a, b in zip(ours, theirs):
        assert rel_err(a, b) < RTOL[np.float64]
