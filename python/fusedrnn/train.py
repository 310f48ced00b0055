"""Just enough to train the seed models without another framework: a linear head, mean squared
error and softmax cross-entropy with their gradients, gradient-norm clipping, SGD and Adam, and a
progress display for training loops. Nothing of a general framework: no autograd, no modules
beyond the head, no schedulers.

Gradients are plain dicts of arrays keyed like ``state_dict()``. A *model* is anything with
``state_dict()`` and ``load_state_dict()``: fusedrnn's layers and :class:`Linear`. Optimisers
read parameters with ``state_dict()`` and write them back with ``load_state_dict()``, so a step
never changes in place the arrays a live training tape refers to. One training step::

    rnn, head = fusedrnn.LSTM(1, 20, batch_first=True), Linear(20, 1)
    opt = Adam([rnn, head], lr=1e-3)
    y, _, tape = rnn.forward(x, training=True)          # x (B, T, 1)
    last = y[:, -1]
    loss, dpred = mse(head(last), target)
    dlast, dhead = head.backward(last, dpred)
    dy = np.zeros_like(y)
    dy[:, -1] = dlast
    _, _, drnn = rnn.backward(tape, dy, need_dx=False)  # x needs no gradient
    clip_grad_norm([drnn, dhead], max_norm=1.0)
    opt.step([drnn, dhead])
"""

import numbers
import sys

import numpy as np

from ._checks import (as_array, as_dtype, checked_state_dict, flag, float_array, optional_seed,
                      positive_int,
                      type_name)

__all__ = ["Linear", "mse", "softmax", "softmax_cross_entropy", "clip_grad_norm", "SGD", "Adam",
           "progress"]


def _positive_float(value, name, upper=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a positive float, got {type_name(value)} {value!r}")
    value = float(value)
    if not (value > 0 and (upper is None or value < upper)):
        want = "a positive float" if upper is None else f"a float in (0, {upper})"
        raise ValueError(f"{name}: expected {want}, got {value}")
    return value


# ---------------------------------------------------------------------------------------------
# The head
# ---------------------------------------------------------------------------------------------
class Linear:
    """``y = x·weightᵀ + bias`` over the last axis of x, with torch.nn.Linear's parameter names
    (``weight`` (out_features, in_features), ``bias`` (out_features,)) and initialisation
    (uniform in ±1/√in_features, reproducible from ``seed``)."""

    def __init__(self, in_features, out_features, bias=True, dtype="float32", seed=None):
        self.in_features = positive_int(in_features, "in_features")
        self.out_features = positive_int(out_features, "out_features")
        self.bias = flag(bias, "bias")
        self.dtype = as_dtype(dtype)
        rng = np.random.default_rng(optional_seed(seed))
        bound = 1.0 / np.sqrt(self.in_features)
        self._params = {k: rng.uniform(-bound, bound, s).astype(self.dtype)
                        for k, s in self._shapes().items()}

    def _shapes(self):
        shapes = {"weight": (self.out_features, self.in_features)}
        if self.bias:
            shapes["bias"] = (self.out_features,)
        return shapes

    def _input(self, x):
        x = float_array(x, "x", self.dtype)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"x: expected last dimension {self.in_features} (in_features), got "
                             f"shape {x.shape}")
        return x

    def __call__(self, x):
        """x (..., in_features) -> (..., out_features)."""
        x = self._input(x)
        # One GEMM over all rows (a 3-d matmul would be a batch of small ones).
        y = x.reshape(-1, self.in_features) @ self._params["weight"].T
        if self.bias:
            y += self._params["bias"]
        return y.reshape(x.shape[:-1] + (self.out_features,))

    def backward(self, x, dy):
        """Gradients for ``y = self(x)``: returns (dx, grads), dx shaped as x and grads keyed as
        state_dict(). x is the input the forward saw."""
        x = self._input(x)
        dy = float_array(dy, "dy", self.dtype)
        if dy.shape != x.shape[:-1] + (self.out_features,):
            raise ValueError(f"dy: expected shape {x.shape[:-1] + (self.out_features,)} (as y), "
                             f"got {dy.shape}")
        rows_x = x.reshape(-1, self.in_features)
        rows_dy = dy.reshape(-1, self.out_features)
        grads = {"weight": rows_dy.T @ rows_x}
        if self.bias:
            grads["bias"] = rows_dy.sum(axis=0)
        return (rows_dy @ self._params["weight"]).reshape(x.shape), grads

    def state_dict(self):
        return {k: v.copy() for k, v in self._params.items()}

    def load_state_dict(self, state_dict):
        """Strict, as the layers' load_state_dict; on any error nothing changes."""
        self._params = checked_state_dict(state_dict, self._shapes(), self.dtype)

    def __repr__(self):
        return (f"Linear({self.in_features}, {self.out_features}, bias={self.bias}, "
                f"dtype='{self.dtype.name}')")


# ---------------------------------------------------------------------------------------------
# Losses: each returns (loss as a Python float, gradient of the loss with respect to its input)
# ---------------------------------------------------------------------------------------------
def mse(pred, target):
    """Mean squared error over all elements, and its gradient with respect to pred."""
    pred = float_array(pred, "pred")
    target = float_array(target, "target", pred.dtype, source="pred's")
    if target.shape != pred.shape:
        raise ValueError(f"target: expected shape {pred.shape} (as pred), got {target.shape}")
    if pred.size == 0:
        raise ValueError("pred: expected a non-empty array, got shape (0,)")
    diff = pred - target
    return float(np.mean(np.square(diff, dtype=np.float64))), (2.0 / diff.size) * diff


def softmax(logits, temperature=1.0):
    """Softmax over the last axis of ``logits / temperature``, computed stably."""
    logits = float_array(logits, "logits")
    temperature = _positive_float(temperature, "temperature")
    z = logits / logits.dtype.type(temperature)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def softmax_cross_entropy(logits, labels):
    """Mean over rows of -log softmax(logits)[label], and its gradient with respect to logits
    ((softmax - one_hot) / rows). logits (..., C) float; labels (...) ints in [0, C)."""
    logits = float_array(logits, "logits")
    if logits.ndim == 0 or logits.size == 0:
        raise ValueError(f"logits: expected a non-empty (..., C) array, got shape {logits.shape}")
    labels = as_array(labels, "labels", "an integer array")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels: expected an integer array, got dtype {labels.dtype.name}")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"labels: expected shape {logits.shape[:-1]} (logits' without the class "
                         f"axis), got {labels.shape}")
    classes = logits.shape[-1]
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        bad = labels[(labels < 0) | (labels >= classes)].flat[0]
        raise ValueError(f"labels: expected values in [0, {classes}) (logits' last axis), "
                         f"got {bad}")
    rows = logits.reshape(-1, classes)
    flat = labels.reshape(-1)
    shifted = rows - rows.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    picked = np.take_along_axis(shifted - log_z, flat[:, None], axis=1)
    loss = -float(np.mean(picked, dtype=np.float64))
    grad = np.exp(shifted - log_z)
    grad[np.arange(flat.size), flat] -= 1
    grad /= flat.size
    return loss, grad.reshape(logits.shape)


# ---------------------------------------------------------------------------------------------
# Gradients and optimisers
# ---------------------------------------------------------------------------------------------
def _grad_dicts(grads, name="grads"):
    dicts = [grads] if isinstance(grads, dict) else grads
    if not isinstance(dicts, (list, tuple)) or not all(isinstance(g, dict) for g in dicts):
        raise TypeError(f"{name}: expected a dict of arrays or a list of them, got "
                        f"{type_name(grads)}")
    return list(dicts)


def clip_grad_norm(grads, max_norm):
    """Scales the gradients in place so that their global L2 norm (over every array of every
    dict) is at most ``max_norm``; returns the norm before clipping, as torch's
    clip_grad_norm_ does (and, like it, divides by norm + 1e-6)."""
    dicts = _grad_dicts(grads)
    max_norm = _positive_float(max_norm, "max_norm")
    arrays = [float_array(g, f"grads[{k!r}]") for d in dicts for k, g in d.items()]
    total = float(np.sqrt(sum(np.sum(np.square(a, dtype=np.float64)) for a in arrays)))
    scale = max_norm / (total + 1e-6)
    if scale < 1.0:
        for a in arrays:
            a *= a.dtype.type(scale)
    return total


class _Optimizer:
    """Shared by SGD and Adam: matches gradients to models and writes updated parameters back
    through load_state_dict. Subclasses define _update(key, param, grad) -> new param."""

    def __init__(self, models, lr):
        self.models = [models] if hasattr(models, "state_dict") else list(models)
        for i, m in enumerate(self.models):
            if not (hasattr(m, "state_dict") and hasattr(m, "load_state_dict")):
                raise TypeError(f"models[{i}]: expected a model with state_dict() and "
                                f"load_state_dict(), got {type_name(m)}")
        self.lr = _positive_float(lr, "lr")
        self._slots = {}  # (model index, parameter name) -> the optimiser's per-parameter state

    def step(self, grads):
        """One update from ``grads``: a list of dicts, one per model, keyed as its state_dict()
        (a single dict when there is one model). Every gradient is checked before any
        parameter changes."""
        dicts = _grad_dicts(grads)
        if len(dicts) != len(self.models):
            raise ValueError(f"grads: expected {len(self.models)} dicts (one per model), got "
                             f"{len(dicts)}")
        params = [m.state_dict() for m in self.models]
        for i, (p, g) in enumerate(zip(params, dicts)):
            if set(g) != set(p):
                raise ValueError(f"grads[{i}]: expected the keys {sorted(p)}, got {sorted(g)}")
            for k in p:
                arr = float_array(g[k], f"grads[{i}][{k!r}]")
                if arr.shape != p[k].shape:
                    raise ValueError(f"grads[{i}][{k!r}]: expected shape {p[k].shape}, got "
                                     f"{arr.shape}")
        self._begin_step()
        for i, (model, p, g) in enumerate(zip(self.models, params, dicts)):
            model.load_state_dict({k: self._update((i, k), v, g[k].astype(v.dtype, copy=False))
                                   for k, v in p.items()})

    def _begin_step(self):
        pass


class SGD(_Optimizer):
    """Stochastic gradient descent, with torch.optim.SGD's momentum: v = μ·v + g; p -= lr·v."""

    def __init__(self, models, lr, momentum=0.0):
        super().__init__(models, lr)
        if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or not (
                0.0 <= momentum < 1.0):
            raise ValueError(f"momentum: expected a float in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)

    def _update(self, key, p, g):
        if self.momentum:
            v = self._slots.get(key)
            v = g.copy() if v is None else self.momentum * v + g
            self._slots[key] = v
            g = v
        return p - p.dtype.type(self.lr) * g


class Adam(_Optimizer):
    """Adam (Kingma & Ba 2015) as torch.optim.Adam computes it: bias-corrected first and second
    moments, p -= lr·m̂ / (√v̂ + eps)."""

    def __init__(self, models, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(models, lr)
        if (not isinstance(betas, (tuple, list)) or len(betas) != 2 or not all(
                isinstance(b, numbers.Real) and not isinstance(b, bool) and 0.0 <= b < 1.0
                for b in betas)):
            raise ValueError(f"betas: expected two floats in [0, 1), got {betas!r}")
        self.betas = tuple(float(b) for b in betas)
        self.eps = _positive_float(eps, "eps")
        self.steps = 0

    def _begin_step(self):
        self.steps += 1

    def _update(self, key, p, g):
        b1, b2 = self.betas
        m, v = self._slots.get(key, (np.zeros_like(p), np.zeros_like(p)))
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        self._slots[key] = (m, v)
        m_hat = m / (1 - b1 ** self.steps)
        v_hat = v / (1 - b2 ** self.steps)
        return (p - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)).astype(p.dtype, copy=False)


# ---------------------------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------------------------
class progress:
    """Iterates over ``iterable`` showing progress: tqdm's bar when tqdm is installed and stderr
    is a terminal, otherwise (when the total is known) up to ``lines`` plain lines on stdout (a
    bar that redraws itself with '\\r' is noise in a log). ``show(**values)`` sets the numbers
    displayed beside it, e.g. the latest loss."""

    def __init__(self, iterable, total=None, desc="", lines=10):
        self._iterable = iterable
        self.total = len(iterable) if total is None and hasattr(iterable, "__len__") else total
        self.desc = desc
        self._lines = positive_int(lines, "lines")
        self._values = {}
        self._bar = None
        if sys.stderr.isatty():
            try:
                from tqdm.auto import tqdm
            except ImportError:
                pass
            else:
                self._bar = tqdm(iterable, total=self.total, desc=desc)

    def show(self, **values):
        self._values.update(values)
        if self._bar is not None:
            self._bar.set_postfix(self._values, refresh=False)

    def _text(self):
        return "  ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in self._values.items())

    def __iter__(self):
        if self._bar is not None:
            yield from self._bar
            return
        every = max(1, -(-self.total // self._lines)) if self.total else None
        count = 0
        for item in self._iterable:
            yield item
            count += 1
            if every and (count % every == 0 or count == self.total):
                print(f"{self.desc} {count}/{self.total}  {self._text()}".strip(), flush=True)
