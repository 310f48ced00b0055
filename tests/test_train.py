"""fusedrnn.train: the head, losses, clipping and optimisers the examples train with. Gradients
against central differences in float64; optimisers against their formulas and, when torch is
installed, against torch.optim and torch.nn.utils.clip_grad_norm_."""

import io
import sys

import numpy as np
import pytest
from conftest import rel_err

import fusedrnn as fr
from fusedrnn import train

try:
    import torch
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch parity needs torch")

EPS = 1e-6
RTOL = 1e-6  # central differences in float64, as in test_gradcheck.py


def numeric_grad(f, arr):
    """Central differences of the scalar f() in every entry of arr (perturbed in place)."""
    flat, out = arr.reshape(-1), np.empty(arr.size)
    for i in range(flat.size):
        orig = flat[i]
        flat[i] = orig + EPS
        up = f()
        flat[i] = orig - EPS
        out[i] = (up - f()) / (2 * EPS)
        flat[i] = orig
    return out.reshape(arr.shape)


# ---------------------------------------------------------------------------------------------
# Linear
# ---------------------------------------------------------------------------------------------
def test_linear_computes_x_wt_plus_b_over_the_last_axis():
    head = train.Linear(5, 3, dtype="float64", seed=0)
    p = head.state_dict()
    x = np.random.default_rng(1).standard_normal((2, 4, 5))
    np.testing.assert_allclose(head(x), np.einsum("bti,oi->bto", x, p["weight"]) + p["bias"],
                               rtol=1e-12)
    bound = 1 / np.sqrt(5)  # torch.nn.Linear's initialisation
    assert p["weight"].shape == (3, 5) and np.abs(p["weight"]).max() <= bound
    assert train.Linear(5, 3, bias=False).state_dict().keys() == {"weight"}


@pytest.mark.parametrize("bias", [True, False])
def test_linear_backward_matches_finite_differences(bias):
    rng = np.random.default_rng(0)
    head = train.Linear(4, 3, bias=bias, dtype="float64", seed=0)
    x, w = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 3, 3))
    params = head.state_dict()

    def loss():
        head.load_state_dict(params)
        return float(np.sum(head(x) * w))

    dx, grads = head.backward(x, w)
    assert rel_err(dx, numeric_grad(loss, x)) < RTOL
    for name in params:
        assert rel_err(grads[name], numeric_grad(loss, params[name])) < RTOL, name


def test_linear_state_dict_is_strict_and_copied():
    head = train.Linear(4, 3)
    sd = head.state_dict()
    sd["weight"][:] = 0
    assert np.any(head.state_dict()["weight"] != 0)  # a copy was returned
    with pytest.raises(ValueError, match=r"state_dict\['weight'\]: expected shape \(3, 4\)"):
        head.load_state_dict({"weight": np.zeros((4, 3)), "bias": np.zeros(3)})
    with pytest.raises(ValueError, match=r"missing keys \['bias'\]"):
        head.load_state_dict({"weight": np.zeros((3, 4))})


def test_linear_refuses_bad_input():
    head = train.Linear(4, 3)
    with pytest.raises(ValueError, match=r"x: expected last dimension 4 \(in_features\), got "
                                         r"shape \(2, 5\)"):
        head(np.zeros((2, 5), np.float32))
    with pytest.raises(TypeError, match="x: expected dtype float32"):
        head(np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"dy: expected shape \(2, 3\) \(as y\), got \(2, 4\)"):
        head.backward(np.zeros((2, 4), np.float32), np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="out_features: expected a positive int, got 0"):
        train.Linear(4, 0)
    with pytest.raises(ValueError, match="seed: expected None or a non-negative int, got -1"):
        train.Linear(4, 3, seed=-1)
    with pytest.raises(TypeError, match="bias: expected True or False, got int 1"):
        train.Linear(4, 3, bias=1)


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------
def test_mse_value_and_gradient():
    rng = np.random.default_rng(0)
    pred, target = rng.standard_normal((5, 2)), rng.standard_normal((5, 2))
    loss, grad = train.mse(pred, target)
    assert loss == pytest.approx(np.mean((pred - target) ** 2), rel=1e-14)
    assert rel_err(grad, numeric_grad(lambda: train.mse(pred, target)[0], pred)) < RTOL


def test_softmax_cross_entropy_value_and_gradient():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 4, 6)) * 3
    labels = rng.integers(0, 6, (3, 4))
    loss, grad = train.softmax_cross_entropy(logits, labels)
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    expected = -np.mean(np.log(np.take_along_axis(p, labels[..., None], -1)))
    assert loss == pytest.approx(expected, rel=1e-13)
    numeric = numeric_grad(lambda: train.softmax_cross_entropy(logits, labels)[0], logits)
    assert rel_err(grad, numeric) < RTOL


def test_softmax_cross_entropy_is_stable_for_large_logits():
    logits = np.array([[1000.0, 0.0], [0.0, -1000.0]], np.float32)
    loss, grad = train.softmax_cross_entropy(logits, np.array([1, 0]))  # losses 1000 and 0
    assert loss == pytest.approx(500.0, rel=1e-6) and np.all(np.isfinite(grad))


def test_softmax_temperature():
    logits = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(train.softmax(logits), np.exp(logits) / np.exp(logits).sum())
    np.testing.assert_allclose(train.softmax(logits, 2.0), train.softmax(logits / 2.0))
    assert train.softmax(logits, 0.01)[2] > 0.999  # a cold softmax picks the largest


def test_losses_refuse_bad_input():
    with pytest.raises(ValueError, match=r"target: expected shape \(3,\) \(as pred\), got \(2,\)"):
        train.mse(np.zeros(3), np.zeros(2))
    with pytest.raises(TypeError, match="labels: expected an integer array, got dtype float64"):
        train.softmax_cross_entropy(np.zeros((2, 3)), np.zeros(2))
    with pytest.raises(ValueError, match=r"labels: expected values in \[0, 3\) .*got 3"):
        train.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match=r"labels: expected shape \(2,\)"):
        train.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="temperature: expected a positive float, got 0.0"):
        train.softmax(np.zeros(3), 0.0)


# ---------------------------------------------------------------------------------------------
# Clipping and optimisers
# ---------------------------------------------------------------------------------------------
def random_grads(rng, scale=1.0):
    return [{"a": rng.standard_normal((3, 4)) * scale, "b": rng.standard_normal(4) * scale},
            {"c": rng.standard_normal(2) * scale}]


def global_norm(grads):
    return np.sqrt(sum(np.sum(g ** 2) for d in grads for g in d.values()))


def test_clip_grad_norm_scales_only_above_the_limit():
    rng = np.random.default_rng(0)
    grads = random_grads(rng, 10.0)
    before = global_norm(grads)
    assert train.clip_grad_norm(grads, 1.0) == pytest.approx(before, rel=1e-14)
    assert global_norm(grads) == pytest.approx(1.0, rel=1e-5)
    small = random_grads(rng, 1e-3)
    copy = [{k: v.copy() for k, v in d.items()} for d in small]
    train.clip_grad_norm(small, 1.0)
    for d, e in zip(small, copy):
        for k in d:
            np.testing.assert_array_equal(d[k], e[k])


@needs_torch
def test_clip_grad_norm_matches_torch():
    grads = random_grads(np.random.default_rng(0), 10.0)
    tensors = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True)
               for d in grads for g in d.values()]
    for t, g in zip(tensors, (g for d in grads for g in d.values())):
        t.grad = torch.from_numpy(g.copy())
    total = torch.nn.utils.clip_grad_norm_(tensors, 1.0)
    assert train.clip_grad_norm(grads, 1.0) == pytest.approx(float(total), rel=1e-14)
    for t, g in zip(tensors, (g for d in grads for g in d.values())):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-14)


class Params:
    """The smallest model: a dict of arrays behind state_dict/load_state_dict."""

    def __init__(self, **arrays):
        self.p = arrays

    def state_dict(self):
        return {k: v.copy() for k, v in self.p.items()}

    def load_state_dict(self, sd):
        self.p = {k: np.array(v) for k, v in sd.items()}


def run_optimizer(make, steps=5):
    """Params after `steps` steps of make(models) on a fixed sequence of gradients."""
    rng = np.random.default_rng(0)
    models = [Params(a=rng.standard_normal((3, 4)), b=rng.standard_normal(4)),
              Params(c=rng.standard_normal(2))]
    start = [m.state_dict() for m in models]
    opt = make(models)
    grads = [random_grads(rng) for _ in range(steps)]
    for g in grads:
        opt.step(g)
    return start, grads, [m.p for m in models]


def test_sgd_is_p_minus_lr_g():
    start, grads, end = run_optimizer(lambda ms: train.SGD(ms, lr=0.1), steps=1)
    for s, g, e in zip(start, grads[0], end):
        for k in s:
            np.testing.assert_allclose(e[k], s[k] - 0.1 * g[k], rtol=1e-15)


def test_adam_first_step_moves_each_parameter_by_lr():
    # With zero moments, bias correction makes the first step lr·g/(|g| + eps).
    start, grads, end = run_optimizer(lambda ms: train.Adam(ms, lr=0.01), steps=1)
    for s, g, e in zip(start, grads[0], end):
        for k in s:
            np.testing.assert_allclose(e[k], s[k] - 0.01 * g[k] / (np.abs(g[k]) + 1e-8),
                                       rtol=1e-12)


@needs_torch
@pytest.mark.parametrize("name, ours, theirs", [
    ("sgd_momentum", lambda ms: train.SGD(ms, lr=0.1, momentum=0.9),
     lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9)),
    ("adam", lambda ms: train.Adam(ms, lr=0.01, betas=(0.8, 0.99), eps=1e-6),
     lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(0.8, 0.99), eps=1e-6)),
])
def test_optimizers_match_torch(name, ours, theirs):
    start, grads, end = run_optimizer(ours)
    tensors = [torch.tensor(v, requires_grad=True) for s in start for v in s.values()]
    opt = theirs(tensors)
    for g in grads:
        for t, gv in zip(tensors, (v for d in g for v in d.values())):
            t.grad = torch.from_numpy(gv.copy())
        opt.step()
    for t, e in zip(tensors, (v for d in end for v in d.values())):
        np.testing.assert_allclose(e, t.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_a_step_leaves_the_arrays_a_tape_holds_unchanged():
    # The optimiser writes new arrays through load_state_dict; a backward after the step still
    # sees the weights its forward used.
    rnn = fr.LSTM(3, 4, dtype="float64", seed=0)
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    y, _, tape = rnn.forward(x, training=True)
    expected = fr.LSTM(3, 4, dtype="float64", seed=0)
    _, _, want = expected.backward(expected.forward(x, training=True)[2], np.ones_like(y))
    train.SGD(rnn, lr=1.0).step(want)
    _, _, got = rnn.backward(tape, np.ones_like(y))
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


def test_optimizers_refuse_bad_input():
    model = Params(a=np.zeros(3))
    with pytest.raises(ValueError, match="lr: expected a positive float, got -1.0"):
        train.Adam(model, lr=-1)
    with pytest.raises(ValueError, match="betas: expected two floats in"):
        train.Adam(model, betas=(0.9, 1.0))
    with pytest.raises(TypeError, match="models\\[0\\]: expected a model with state_dict"):
        train.SGD([object()], lr=0.1)
    opt = train.SGD(model, lr=0.1)
    with pytest.raises(ValueError, match=r"grads\[0\]: expected the keys \['a'\], got \['b'\]"):
        opt.step({"b": np.zeros(3)})
    with pytest.raises(ValueError, match=r"grads\[0\]\['a'\]: expected shape \(3,\), got \(2,\)"):
        opt.step({"a": np.zeros(2)})
    with pytest.raises(ValueError, match=r"grads: expected 1 dicts \(one per model\), got 2"):
        opt.step([{"a": np.zeros(3)}, {"a": np.zeros(3)}])
    np.testing.assert_array_equal(model.p["a"], np.zeros(3))  # nothing changed
    with pytest.raises(ValueError, match="max_norm: expected a positive float, got 0.0"):
        train.clip_grad_norm({"a": np.zeros(3)}, 0)


# ---------------------------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------------------------
def test_progress_off_a_terminal_prints_at_most_the_given_number_of_lines(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal: no bar
    bar = train.progress(range(25), desc="epoch", lines=4)
    seen = []
    for i in bar:
        seen.append(i)
        bar.show(loss=1.0 / (i + 1))
    assert seen == list(range(25))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[-1] == "epoch 25/25  loss 0.04"


def test_progress_on_a_terminal_draws_a_tqdm_bar(monkeypatch):
    tqdm = pytest.importorskip("tqdm", reason="the progress bar needs tqdm")
    stream = io.StringIO()
    stream.isatty = lambda: True
    monkeypatch.setattr(sys, "stderr", stream)
    bar = train.progress(range(3), desc="epoch")
    assert isinstance(bar._bar, tqdm.tqdm)
    for _ in bar:
        bar.show(loss=0.5)
    assert "loss=0.5" in bar._bar.postfix and list(train.progress([1, 2])) == [1, 2]
