"""fusedrnn's functional ops as JAX functions: one layer, one direction, differentiable.

:func:`lstm`, :func:`gru` and :func:`rnn` take the arguments of :func:`fusedrnn.ops.forward`
(time-major x (T, B, I), PyTorch's weight layout) and work under ``jax.jit``, ``jax.grad`` and
``jax.vmap``. Each is a ``jax.custom_vjp`` whose forward and backward call the compiled CPU
kernels through ``jax.pure_callback``; the forward's tape travels to the backward as JAX arrays
(:func:`fusedrnn.ops.tape_arrays`). The backward skips dx's product where x is not
differentiated (a first layer's data), and reads an output the loss does not use as zeros
without making them. Stacking layers and directions is left to the caller::

    import fusedrnn.jax as frj
    y, h_n, c_n = frj.lstm(x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths=lengths)
    grads = jax.grad(lambda w: frj.lstm(x, w, w_hh)[0].sum())(w_ih)

float32 and float64 (the latter with ``jax_enable_x64``); CPU only.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from . import ops

__all__ = ["lstm", "gru", "rnn"]


def lstm(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, c0=None, *, lengths=None,
         reverse=False):
    """LSTM layer, gate order (i, f, g, o). Returns (y (T, B, H), h_n (B, H), c_n (B, H))."""
    return _layer("lstm", True, reverse, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths)


def gru(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, *, lengths=None, reverse=False,
        reset_after=True):
    """GRU layer, gate order (r, z, n); ``reset_after=False`` is Cho et al.'s form. Returns
    (y (T, B, H), h_n (B, H))."""
    return _layer("gru", reset_after, reverse, x, w_ih, w_hh, b_ih, b_hh, h0, None, lengths)[:2]


def rnn(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, *, lengths=None, reverse=False,
        nonlinearity="tanh"):
    """Elman RNN layer, ``nonlinearity`` 'tanh' or 'relu'. Returns (y (T, B, H), h_n (B, H))."""
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
    return _layer(f"rnn_{nonlinearity}", True, reverse, x, w_ih, w_hh, b_ih, b_hh, h0, None,
                  lengths)[:2]


def _layer(cell, reset_after, reverse, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths):
    """Checks what is known before running (shapes, dtypes) and fills absent biases and states
    with zeros, so that the custom VJP sees arrays only (their cotangents are dropped)."""
    kcell = ops.kernel_cell(cell, reset_after)
    if not isinstance(reverse, bool):
        raise TypeError(f"reverse: expected True or False, got {type(reverse).__name__}")
    x = jnp.asarray(x)
    if x.ndim != 3 or x.dtype not in (jnp.float32, jnp.float64):
        raise ValueError(f"x: expected a float32 or float64 (T, B, I) array, got {x.dtype} "
                         f"shape {x.shape}")
    T, B, I = x.shape
    w_hh = jnp.asarray(w_hh)
    if w_hh.ndim != 2:
        raise ValueError(f"w_hh: expected a 2-d (G*H, H) array, got shape {w_hh.shape}")
    H = w_hh.shape[1]
    GH = ops.GATES[kcell] * H
    if (b_ih is None) != (b_hh is None):
        raise ValueError("b_ih, b_hh: expected both or neither, got only one")
    zeros = functools.partial(jnp.zeros, dtype=x.dtype)
    arrays = dict(w_ih=(w_ih, (GH, I)), w_hh=(w_hh, (GH, H)),
                  b_ih=(zeros(GH) if b_ih is None else b_ih, (GH,)),
                  b_hh=(zeros(GH) if b_hh is None else b_hh, (GH,)),
                  h0=(zeros((B, H)) if h0 is None else h0, (B, H)))
    if kcell == "lstm":
        arrays["c0"] = (zeros((B, H)) if c0 is None else c0, (B, H))
    elif c0 is not None:
        raise ValueError(f"c0: expected None for cell {cell!r}, got {type(c0).__name__}")
    checked = {}
    for name, (value, shape) in arrays.items():
        value = jnp.asarray(value)
        if value.shape != shape or value.dtype != x.dtype:
            raise ValueError(f"{name}: expected a {x.dtype} array of shape {shape} (x's dtype), "
                             f"got {value.dtype} {value.shape}")
        checked[name] = value
    if lengths is not None:
        lengths = jnp.asarray(lengths)
        if lengths.shape != (B,) or not jnp.issubdtype(lengths.dtype, jnp.integer):
            raise ValueError(f"lengths: expected B={B} ints, got {lengths.dtype} "
                             f"{lengths.shape}")
    outs = _fused(cell, reset_after, reverse, x, checked["w_ih"], checked["w_hh"],
                  checked["b_ih"], checked["b_hh"], checked["h0"], checked.get("c0"), lengths)
    return outs if kcell == "lstm" else outs + (None,)


def _result_shapes(cell, reset_after, x, H, keep_tape):
    T, B, _ = x.shape
    shapes = [(T, B, H), (B, H)] + ([(B, H)] if ops.kernel_cell(cell, reset_after) == "lstm"
                                    else [])
    if keep_tape:
        shapes += [s for s in ops.tape_shapes(cell, T, B, H, reset_after) if s is not None]
    return [jax.ShapeDtypeStruct(s, x.dtype) for s in shapes]


def _run_forward(cell, reset_after, reverse, keep_tape, x, w_ih, w_hh, b_ih, b_hh, h0, c0,
                 lengths):
    """The callback: the kernels' forward on host arrays, then the tape's arrays if kept."""
    res = ops.forward(cell, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths=lengths, reverse=reverse,
                      training=keep_tape, reset_after=reset_after, backend="cpu")
    outs = [res.y, res.h_n] + ([] if res.c_n is None else [res.c_n])
    if keep_tape:
        outs += [a for a in ops.tape_arrays(res.tape) if a is not None]
    return tuple(outs)


def _call_forward(cell, reset_after, reverse, keep_tape, x, w_ih, w_hh, b_ih, b_hh, h0, c0,
                  lengths):
    run = functools.partial(_run_forward, cell, reset_after, reverse, keep_tape)
    return jax.pure_callback(run, _result_shapes(cell, reset_after, x, w_hh.shape[1], keep_tape),
                             x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths,
                             vmap_method="sequential")


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _fused(cell, reset_after, reverse, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths):
    return tuple(_call_forward(cell, reset_after, reverse, False, x, w_ih, w_hh, b_ih, b_hh, h0,
                               c0, lengths))


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class _NeedDx:
    """Whether the backward computes dx: whether x is differentiated (perturbed), which
    jax.custom_vjp tells the forward rule (symbolic_zeros=True). Static (no leaves), so that it
    reaches the backward rule as a Python bool under jit too."""
    value: bool


def _fused_fwd(cell, reset_after, reverse, *primals):
    # Each argument JAX differentiates comes as a CustomVJPPrimal; None (c0, lengths) as None.
    x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths = (getattr(a, "value", a) for a in primals)
    outs = _call_forward(cell, reset_after, reverse, True, x, w_ih, w_hh, b_ih, b_hh, h0, c0,
                         lengths)
    n = 3 if c0 is not None else 2
    kept = iter(outs[n:])  # the tape arrays the cell has, in (h_states, c_states, gates) order
    T, B, _ = x.shape
    tape = tuple(None if shape is None else next(kept)
                 for shape in ops.tape_shapes(cell, T, B, w_hh.shape[1], reset_after))
    need_dx = _NeedDx(bool(primals[0].perturbed))
    return tuple(outs[:n]), (x, w_ih, w_hh, b_ih, b_hh, lengths, tape, need_dx)


def _run_backward(cell, reset_after, reverse, need_dx, given, x, w_ih, w_hh, b_ih, b_hh,
                  lengths, tape, *cotangents):
    """The callback: the kernels' backward from a tape rebuilt on the host arrays. `given` says
    which of (dy, dh_n, dc_n) came as arrays; the others are zero."""
    rebuilt = ops.tape_from_arrays(cell, x, w_ih, w_hh, b_ih, b_hh, *tape, lengths=lengths,
                                   reverse=reverse, reset_after=reset_after)
    arrays = iter(cotangents)
    dy, dh_n, dc_n = (next(arrays) if g else None for g in given)
    grads = ops.backward(rebuilt, dy, dh_n, dc_n, need_dx=need_dx)
    return tuple(g for g in grads if g is not None)  # the biases are always given here


def _fused_bwd(cell, reset_after, reverse, residuals, cotangents):
    """The kernels' backward for the cotangents of (y, h_n[, c_n]); a symbolic zero among them
    (an output the loss does not use) goes to the kernels as None, and dx is left out (None)
    where x is not differentiated: the backward then skips its product."""
    x, w_ih, w_hh, b_ih, b_hh, lengths, tape, need_dx = residuals
    has_c = len(cotangents) == 3
    given = tuple(not isinstance(c, jax.custom_derivatives.SymbolicZero) for c in cotangents)
    given += (False,) * (3 - len(given))
    state = (x.shape[1], w_hh.shape[1])
    shapes = ([x.shape] if need_dx.value else []) + [state] + ([state] if has_c else [])
    shapes += [w_ih.shape, w_hh.shape, b_ih.shape, b_hh.shape]
    run = functools.partial(_run_backward, cell, reset_after, reverse, need_dx.value, given)
    grads = jax.pure_callback(run, [jax.ShapeDtypeStruct(s, x.dtype) for s in shapes], x, w_ih,
                              w_hh, b_ih, b_hh, lengths, tape,
                              *(c for c, g in zip(cotangents, given) if g),
                              vmap_method="sequential")
    grads = list(grads)
    dx = grads.pop(0) if need_dx.value else None
    dh0 = grads.pop(0)
    dc0 = grads.pop(0) if has_c else None
    dw_ih, dw_hh, db_ih, db_hh = grads
    return dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0, None  # lengths: no cotangent


_fused.defvjp(_fused_fwd, _fused_bwd, symbolic_zeros=True)
