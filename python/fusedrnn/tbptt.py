"""Truncated backpropagation through time: a long sequence run in chunks, the state carried from
one chunk to the next and the gradient cut between them.

Each chunk starts from the final state of the one before, so while the parameters stay the same
the chunks' forward computes exactly what one forward over the whole sequence would (tested).
Backward stays inside a chunk:
no gradient flows into the previous chunk (the gradient of the chunk's initial state is dropped)
and none comes back from the next (the gradient of its final state is taken as zero). Memory
and the cost of a backward are those of one chunk, however long the sequence::

    starts = range(0, ids.shape[1] - 100, 100)           # ids (B, N): B streams of tokens
    chunks = (one_hot(ids[:, s:s + 100]) for s in starts)
    for chunk, s in zip(fusedrnn.tbptt.run(rnn, chunks), starts):
        loss, dlogits = softmax_cross_entropy(head(chunk.y), ids[:, s + 1:s + 101])
        dy, dhead = head.backward(chunk.y, dlogits)
        _, drnn = chunk.backward(dy, need_dx=False)       # the tokens need no gradient
        opt.step([drnn, dhead])

:func:`run` is lazy: chunk k+1 is computed when the loop asks for it, with the parameters as
the step on chunk k left them (the carried state was computed with the older ones, as truncated
BPTT has it).
"""

from ._checks import type_name
from .layers import RNNBase

__all__ = ["Chunk", "run"]


class Chunk:
    """One chunk's forward: ``y``, the state it started from (``state0``) and the state it ended
    in (``state``, carried into the next chunk). ``backward(dy)`` returns (dx, dparams)
    (``need_dx=False``: dx None, not computed)."""

    __slots__ = ("index", "y", "state0", "state", "_layer", "_tape")

    def __init__(self, index, y, state0, state, layer, tape):
        self.index, self.y, self.state0, self.state = index, y, state0, state
        self._layer, self._tape = layer, tape

    def backward(self, dy, *, need_dx=True):
        """Gradients of a loss on this chunk's y, inside the chunk only: returns (dx, dparams),
        dparams keyed as the layer's state_dict(); dx is None with ``need_dx=False``."""
        dx, _dstate0, dparams = self._layer.backward(  # dstate0 dropped: the cut
            self._tape, dy, need_dx=need_dx)
        return dx, dparams


def run(layer, chunks, state=None):
    """Runs ``layer`` (training mode) over ``chunks``, an iterable of inputs each shaped as the
    layer's forward expects (same batch size throughout), carrying the state from each chunk
    into the next, starting from ``state`` (None: zeros). Yields a :class:`Chunk` per input."""
    if not isinstance(layer, RNNBase):
        raise TypeError(f"layer: expected a fusedrnn LSTM, GRU or RNN, got {type_name(layer)}")
    if layer.bidirectional:
        raise ValueError("layer: expected a unidirectional layer, got bidirectional=True (a "
                         "reverse direction cannot carry its state forward across chunks)")
    try:
        chunks = iter(chunks)
    except TypeError:
        raise TypeError(f"chunks: expected an iterable of input arrays, got "
                        f"{type_name(chunks)}") from None
    return _chunks(layer, chunks, state)  # a generator, after the checks above have run


def _chunks(layer, chunks, state):
    for index, x in enumerate(chunks):
        y, state_n, tape = layer.forward(x, state, training=True)
        yield Chunk(index, y, state, state_n, layer, tape)
        state = state_n
