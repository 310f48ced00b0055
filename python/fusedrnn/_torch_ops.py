"""fusedrnn's functional ops (one layer, one direction) as torch.library custom ops with autograd.

``fusedrnn::layer_forward`` runs :func:`fusedrnn.ops.forward` and returns, besides y and the
final state, the tape's arrays (:func:`fusedrnn.ops.tape_arrays`) as tensors, so that autograd
saves them like any other tensor; ``fusedrnn::layer_backward`` rebuilds the tape from them
(:func:`fusedrnn.ops.tape_from_arrays`) and runs :func:`fusedrnn.ops.backward`. On the CPU a
bidirectional layer's two directions are one op, ``fusedrnn::bilayer_forward`` (and
``fusedrnn::bilayer_backward``): the kernels run them side by side where their steps are too
small to share among the threads (:func:`fusedrnn.ops.run_forward_pair`), and both write their
halves of one y. Being custom ops with fake (shape-only) implementations, torch.compile keeps
each as one opaque node. CPU tensors reach the kernels as NumPy views and come back through
DLPack: no copies.
"""

from typing import Optional, Tuple

import numpy as np
import torch

from . import _backend, ops
from . import backends as available_backends

Tensor = torch.Tensor


def backend_for(device):
    """The fusedrnn backend that runs tensors on `device`, or an error saying why none does."""
    if device.type == "cpu":
        return "cpu"
    if device.type == "cuda":
        if "cuda" in available_backends():
            return "cuda"
        raise RuntimeError("input: a CUDA tensor needs fusedrnn's CUDA backend, which this "
                           "install does not have (`fusedrnn info` shows what was built); move "
                           "the module and its inputs to the CPU with .cpu()")
    raise RuntimeError(f"input: expected a CPU or CUDA tensor, got one on device '{device}'")


def _array(t):
    """A tensor as the array the ops take: a NumPy view on the CPU, the tensor (DLPack) else.
    The CUDA backend takes C-contiguous arrays only, and what reaches the ops need not be: a
    batch_first input transposed, a bidirectional output's gradient (a slice of its
    concatenation's), a gradient expanded from a sum."""
    if t is None:
        return None
    t = t.detach()
    return t.numpy() if t.device.type == "cpu" else t.contiguous()


def _tensor(a, like):
    """The ops' result as a tensor (zero-copy through DLPack); None becomes an empty tensor, since
    a custom op's outputs are all tensors."""
    return like.new_empty(0) if a is None else torch.from_dlpack(a)


def _present(t):
    """None for the empty tensors that stand for 'absent' among custom op arguments."""
    return None if t is None or t.numel() == 0 else t


def forward_shapes(cell, reset_after, x, w_hh, keep_tape):
    """Shapes of layer_forward's six outputs; the real and the fake implementation share them."""
    T, B, _ = x.shape
    H = w_hh.shape[1]
    tape = ops.tape_shapes(cell, T, B, H, reset_after) if keep_tape else (None,) * 3
    c_n = (B, H) if ops.kernel_cell(cell, reset_after) == "lstm" else None
    return tuple((0,) if shape is None else shape for shape in ((T, B, H), (B, H), c_n) + tape)


@torch.library.custom_op("fusedrnn::layer_forward", mutates_args=())
def layer_forward(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                  b_hh: Optional[Tensor], h0: Optional[Tensor], c0: Optional[Tensor],
                  lengths: Optional[Tensor], cell: str, reset_after: bool, reverse: bool,
                  keep_tape: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One layer, one direction: (y, h_n, c_n, h_states, c_states, gates), time-major; an empty
    tensor stands for what the cell lacks (c_n, c_states, gates) and, without keep_tape, for
    the tape."""
    backend = backend_for(x.device)
    res = ops.forward(cell, *map(_array, (x, w_ih, w_hh, b_ih, b_hh, h0, c0)),
                      lengths=None if lengths is None else lengths.cpu().numpy(),
                      reverse=reverse, training=keep_tape, reset_after=reset_after,
                      backend=backend)
    tape = ops.tape_arrays(res.tape) if keep_tape else (None, None, None)
    return tuple(_tensor(a, x) for a in (res.y, res.h_n, res.c_n) + tuple(tape))


@layer_forward.register_fake
def _(x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, cell, reset_after, reverse, keep_tape):
    return tuple(x.new_empty(shape)
                 for shape in forward_shapes(cell, reset_after, x, w_hh, keep_tape))


@torch.library.custom_op("fusedrnn::layer_backward", mutates_args=())
def layer_backward(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                   b_hh: Optional[Tensor], lengths: Optional[Tensor], h_states: Tensor,
                   c_states: Tensor, gates: Tensor, dy: Tensor, dh_n: Tensor, dc_n: Tensor,
                   cell: str, reset_after: bool, reverse: bool, need_dx: bool
                   ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh) of a layer_forward with keep_tape,
    from its inputs and tape; an empty tensor stands for dc0 and the bias gradients a layer
    lacks, and for dx without need_dx (the kernels then skip its product)."""
    backend_for(x.device)
    tape = ops.tape_from_arrays(cell, *map(_array, (x, w_ih, w_hh, b_ih, b_hh, h_states,
                                                    _present(c_states), _present(gates))),
                                lengths=None if lengths is None else lengths.cpu().numpy(),
                                reverse=reverse, reset_after=reset_after)
    grads = ops.backward(tape, *map(_array, (dy, dh_n, _present(dc_n))), need_dx=need_dx)
    return tuple(_tensor(g, x) for g in grads)


@layer_backward.register_fake
def _(x, w_ih, w_hh, b_ih, b_hh, lengths, h_states, c_states, gates, dy, dh_n, dc_n, cell,
      reset_after, reverse, need_dx):
    bias = (b_ih.shape, b_hh.shape) if b_ih is not None else ((0,), (0,))
    return (x.new_empty(x.shape if need_dx else (0,)), x.new_empty(dh_n.shape),
            x.new_empty(dc_n.shape), x.new_empty(w_ih.shape), x.new_empty(w_hh.shape),
            x.new_empty(bias[0]), x.new_empty(bias[1]))


def _output_grads(ctx, output):
    """Autograd hands the backward None for an output that got no gradient, rather than zeros
    of its shape: the tape's outputs never get one, and zeros for them were a second tape's worth
    of memory, allocated and cleared at every backward (301 MB, 66 ms of a 1.75 s step, at LSTM
    T=200 B=128 H=512). Only y's, h_n's and c_n's are made when missing (_zeros_for)."""
    ctx.set_materialize_grads(False)
    ctx.grad_shapes = tuple(o.shape for o in output[:3])


def _zeros_for(ctx, grads, like):
    """The gradients of y, h_n and c_n, zeros where autograd gave None."""
    return tuple(like.new_zeros(shape) if g is None else g
                 for g, shape in zip(grads, ctx.grad_shapes))


def _setup_context(ctx, inputs, output):
    x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, cell, reset_after, reverse, keep_tape = inputs
    _, _, _, h_states, c_states, gates = output
    _output_grads(ctx, output)
    ctx.save_for_backward(x, w_ih, w_hh, b_ih, b_hh, lengths, h_states, c_states, gates)
    ctx.options = (cell, reset_after, reverse, keep_tape)
    ctx.given = (b_ih is not None, h0 is not None, c0 is not None)


def _backward(ctx, dy, dh_n, dc_n, *_tape_grads):
    cell, reset_after, reverse, keep_tape = ctx.options
    if not keep_tape:
        raise RuntimeError("fusedrnn::layer_forward ran without keep_tape (no input required "
                           "grad then), so it cannot be differentiated")
    x, w_ih, w_hh, b_ih, b_hh, lengths, h_states, c_states, gates = ctx.saved_tensors
    need_dx = ctx.needs_input_grad[0]
    dy, dh_n, dc_n = _zeros_for(ctx, (dy, dh_n, dc_n), x)
    dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh = layer_backward(
        x, w_ih, w_hh, b_ih, b_hh, lengths, h_states, c_states, gates, dy, dh_n, dc_n, cell,
        reset_after, reverse, need_dx)
    has_bias, has_h0, has_c0 = ctx.given
    return (dx if need_dx else None, dw_ih, dw_hh, db_ih if has_bias else None,
            db_hh if has_bias else None, dh0 if has_h0 else None, dc0 if has_c0 else None, None,
            None, None, None, None)


layer_forward.register_autograd(_backward, setup_context=_setup_context)


# --- both directions of a bidirectional layer on the CPU -----------------------------------------

def _cpu_array(t, name):
    """A CPU tensor as the C-contiguous NumPy array the kernels' pair takes (a view where it is
    one already), None as None; the C++ glue checks dtypes and shapes."""
    if t is None:
        return None
    if t.device.type != "cpu":
        raise RuntimeError(f"{name}: fusedrnn::bilayer ops run on CPU tensors, got one on device "
                           f"'{t.device}' (fusedrnn.torch runs the directions of other devices "
                           "with fusedrnn::layer_forward)")
    return np.ascontiguousarray(t.detach().numpy())


def _lengths_array(lengths):
    return None if lengths is None else np.ascontiguousarray(lengths.cpu().numpy())


def bilayer_shapes(cell, reset_after, x, w_hh, keep_tape):
    """Shapes of bilayer_forward's nine outputs: y (T, B, 2H), h_n and c_n (2, B, H), then each
    direction's tape."""
    y, h_n, c_n, *tape = forward_shapes(cell, reset_after, x, w_hh, keep_tape)
    both = lambda shape: shape if shape == (0,) else (2, *shape)  # noqa: E731
    return ((*y[:2], 2 * y[2]), both(h_n), both(c_n), *tape, *tape)


@torch.library.custom_op("fusedrnn::bilayer_forward", mutates_args=())
def bilayer_forward(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                    b_hh: Optional[Tensor], w_ih_reverse: Tensor, w_hh_reverse: Tensor,
                    b_ih_reverse: Optional[Tensor], b_hh_reverse: Optional[Tensor],
                    h0: Optional[Tensor], c0: Optional[Tensor], lengths: Optional[Tensor],
                    cell: str, reset_after: bool, keep_tape: bool
                    ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                               Tensor]:
    """One bidirectional layer on the CPU: (y, h_n, c_n, then h_states, c_states, gates of the
    forward direction and of the reverse one); y (T, B, 2H) holds the forward direction's
    outputs in its first H columns, h0, c0, h_n and c_n (2, B, H) its state first. An empty
    tensor stands for what the cell lacks and, without keep_tape, for the tapes."""
    kcell = ops.kernel_cell(cell, reset_after)
    x_, h0_, c0_ = (_cpu_array(t, name) for t, name in ((x, "x"), (h0, "h0"), (c0, "c0")))
    weights = [_cpu_array(t, name) for t, name in zip(
        (w_ih, w_hh, b_ih, b_hh, w_ih_reverse, w_hh_reverse, b_ih_reverse, b_hh_reverse),
        ("w_ih", "w_hh", "b_ih", "b_hh", "w_ih_reverse", "w_hh_reverse", "b_ih_reverse",
         "b_hh_reverse"))]
    lengths_ = _lengths_array(lengths)
    T, B, _ = x_.shape
    H = weights[1].shape[1]
    y = _backend._core.empty((T, B, 2 * H), x_.dtype)
    results = ops.run_forward_pair(kcell, [
        (x_, *weights[4 * d:4 * d + 4], None if h0_ is None else h0_[d],
         None if c0_ is None else c0_[d], lengths_, bool(d), keep_tape, y[..., d * H:(d + 1) * H])
        for d in (0, 1)])
    h_n = np.stack([r.h_n for r in results])
    c_n = None if results[0].c_n is None else np.stack([r.c_n for r in results])
    tapes = tuple(a for r in results
                  for a in (ops.tape_arrays(r.tape) if keep_tape else (None,) * 3))
    return tuple(_tensor(a, x) for a in (y, h_n, c_n) + tapes)


@bilayer_forward.register_fake
def _(x, w_ih, w_hh, b_ih, b_hh, w_ih_reverse, w_hh_reverse, b_ih_reverse, b_hh_reverse, h0, c0,
      lengths, cell, reset_after, keep_tape):
    return tuple(x.new_empty(shape)
                 for shape in bilayer_shapes(cell, reset_after, x, w_hh, keep_tape))


@torch.library.custom_op("fusedrnn::bilayer_backward", mutates_args=())
def bilayer_backward(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                     b_hh: Optional[Tensor], w_ih_reverse: Tensor, w_hh_reverse: Tensor,
                     b_ih_reverse: Optional[Tensor], b_hh_reverse: Optional[Tensor],
                     lengths: Optional[Tensor], h_states: Tensor, c_states: Tensor,
                     gates: Tensor, h_states_reverse: Tensor, c_states_reverse: Tensor,
                     gates_reverse: Tensor, dy: Tensor, dh_n: Tensor, dc_n: Tensor, cell: str,
                     reset_after: bool, need_dx: bool
                     ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                Tensor, Tensor, Tensor]:
    """Gradients (dx, dh0, dc0, then dw_ih, dw_hh, db_ih, db_hh of the forward direction and of
    the reverse one) of a bilayer_forward with keep_tape, from its inputs and tapes; dx is the
    sum of the directions', dh0 and dc0 (2, B, H). An empty tensor stands for dc0 and the bias
    gradients a layer lacks, and for dx without need_dx."""
    x_ = _cpu_array(x, "x")
    weights = [_cpu_array(t, "weights") for t in (w_ih, w_hh, b_ih, b_hh, w_ih_reverse,
                                                  w_hh_reverse, b_ih_reverse, b_hh_reverse)]
    tape_parts = [_cpu_array(_present(t), "tape") for t in (
        h_states, c_states, gates, h_states_reverse, c_states_reverse, gates_reverse)]
    lengths_ = _lengths_array(lengths)
    dy_, dh_n_, dc_n_ = (_cpu_array(_present(t), name)
                         for t, name in ((dy, "dy"), (dh_n, "dh_n"), (dc_n, "dc_n")))
    H = weights[1].shape[1]
    tapes = [ops.tape_from_arrays(cell, x_, *weights[4 * d:4 * d + 4],
                                  *tape_parts[3 * d:3 * d + 3], lengths=lengths_,
                                  reverse=bool(d), reset_after=reset_after) for d in (0, 1)]
    grads = ops.run_backward_pair([
        (tapes[d], dy_[..., d * H:(d + 1) * H], dh_n_[d], None if dc_n_ is None else dc_n_[d],
         need_dx) for d in (0, 1)])
    dx = grads[0].dx
    if need_dx:
        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf, as in the kernels
            np.add(dx, grads[1].dx, out=dx)  # in place: no fresh memory to fault in
    dh0 = np.stack([g.dh0 for g in grads])
    dc0 = None if grads[0].dc0 is None else np.stack([g.dc0 for g in grads])
    return tuple(_tensor(a, x) for a in (dx, dh0, dc0) + tuple(
        w for g in grads for w in (g.dw_ih, g.dw_hh, g.db_ih, g.db_hh)))


@bilayer_backward.register_fake
def _(x, w_ih, w_hh, b_ih, b_hh, w_ih_reverse, w_hh_reverse, b_ih_reverse, b_hh_reverse, lengths,
      h_states, c_states, gates, h_states_reverse, c_states_reverse, gates_reverse, dy, dh_n,
      dc_n, cell, reset_after, need_dx):
    bias = (b_ih.shape, b_hh.shape) if b_ih is not None else ((0,), (0,))
    weights = (w_ih.shape, w_hh.shape, *bias)
    return (x.new_empty(x.shape if need_dx else (0,)), x.new_empty(dh_n.shape),
            x.new_empty(dc_n.shape), *(x.new_empty(shape) for shape in weights + weights))


def _setup_bilayer_context(ctx, inputs, output):
    (x, w_ih, w_hh, b_ih, b_hh, w_ih_reverse, w_hh_reverse, b_ih_reverse, b_hh_reverse, h0, c0,
     lengths, cell, reset_after, keep_tape) = inputs
    _output_grads(ctx, output)
    ctx.save_for_backward(x, w_ih, w_hh, b_ih, b_hh, w_ih_reverse, w_hh_reverse, b_ih_reverse,
                          b_hh_reverse, lengths, *output[3:])
    ctx.options = (cell, reset_after, keep_tape)
    ctx.given = (b_ih is not None, h0 is not None, c0 is not None)


def _bilayer_backward(ctx, dy, dh_n, dc_n, *_tape_grads):
    cell, reset_after, keep_tape = ctx.options
    if not keep_tape:
        raise RuntimeError("fusedrnn::bilayer_forward ran without keep_tape (no input required "
                           "grad then), so it cannot be differentiated")
    need_dx = ctx.needs_input_grad[0]
    dy, dh_n, dc_n = _zeros_for(ctx, (dy, dh_n, dc_n), ctx.saved_tensors[0])
    dx, dh0, dc0, *dweights = bilayer_backward(*ctx.saved_tensors, dy, dh_n, dc_n, cell,
                                               reset_after, need_dx)
    has_bias, has_h0, has_c0 = ctx.given
    if not has_bias:
        dweights = [None if k % 4 >= 2 else w for k, w in enumerate(dweights)]
    return (dx if need_dx else None, *dweights, dh0 if has_h0 else None,
            dc0 if has_c0 else None, None, None, None, None)


bilayer_forward.register_autograd(_bilayer_backward, setup_context=_setup_bilayer_context)
