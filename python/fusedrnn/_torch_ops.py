"""fusedrnn's functional ops (one layer, one direction) as torch.library custom ops with autograd.

``fusedrnn::layer_forward`` runs :func:`fusedrnn.ops.forward` and returns, besides y and the
final state, the tape's arrays (:func:`fusedrnn.ops.tape_arrays`) as tensors, so that autograd
saves them like any other tensor; ``fusedrnn::layer_backward`` rebuilds the tape from them
(:func:`fusedrnn.ops.tape_from_arrays`) and runs :func:`fusedrnn.ops.backward`. Being custom ops
with fake (shape-only) implementations, torch.compile keeps each as one opaque node. CPU tensors
reach the kernels as NumPy views and come back through DLPack: no copies.
"""

from typing import Optional, Tuple

import torch

from . import backends as available_backends
from . import ops

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
    """A tensor as the array the ops take: a NumPy view on the CPU, the tensor (DLPack) else."""
    if t is None:
        return None
    t = t.detach()
    return t.numpy() if t.device.type == "cpu" else t


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
                   cell: str, reset_after: bool, reverse: bool
                   ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh) of a layer_forward with keep_tape,
    from its inputs and tape; an empty tensor stands for dc0 and the bias gradients a layer
    lacks."""
    backend_for(x.device)
    tape = ops.tape_from_arrays(cell, *map(_array, (x, w_ih, w_hh, b_ih, b_hh, h_states,
                                                    _present(c_states), _present(gates))),
                                lengths=None if lengths is None else lengths.cpu().numpy(),
                                reverse=reverse, reset_after=reset_after)
    grads = ops.backward(tape, *map(_array, (dy, dh_n, _present(dc_n))))
    return tuple(_tensor(g, x) for g in grads)


@layer_backward.register_fake
def _(x, w_ih, w_hh, b_ih, b_hh, lengths, h_states, c_states, gates, dy, dh_n, dc_n, cell,
      reset_after, reverse):
    bias = (b_ih.shape, b_hh.shape) if b_ih is not None else ((0,), (0,))
    return (x.new_empty(x.shape), x.new_empty(dh_n.shape), x.new_empty(dc_n.shape),
            x.new_empty(w_ih.shape), x.new_empty(w_hh.shape), x.new_empty(bias[0]),
            x.new_empty(bias[1]))


def _setup_context(ctx, inputs, output):
    x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, cell, reset_after, reverse, keep_tape = inputs
    _, _, _, h_states, c_states, gates = output
    ctx.save_for_backward(x, w_ih, w_hh, b_ih, b_hh, lengths, h_states, c_states, gates)
    ctx.options = (cell, reset_after, reverse, keep_tape)
    ctx.given = (b_ih is not None, h0 is not None, c0 is not None)


def _backward(ctx, dy, dh_n, dc_n, *_tape_grads):
    cell, reset_after, reverse, keep_tape = ctx.options
    if not keep_tape:
        raise RuntimeError("fusedrnn::layer_forward ran without keep_tape (no input required "
                           "grad then), so it cannot be differentiated")
    x, w_ih, w_hh, b_ih, b_hh, lengths, h_states, c_states, gates = ctx.saved_tensors
    dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh = layer_backward(
        x, w_ih, w_hh, b_ih, b_hh, lengths, h_states, c_states, gates, dy, dh_n, dc_n, cell,
        reset_after, reverse)
    has_bias, has_h0, has_c0 = ctx.given
    return (dx, dw_ih, dw_hh, db_ih if has_bias else None, db_hh if has_bias else None,
            dh0 if has_h0 else None, dc0 if has_c0 else None, None, None, None, None, None)


layer_forward.register_autograd(_backward, setup_context=_setup_context)
