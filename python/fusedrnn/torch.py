"""Drop-in replacements for torch.nn.LSTM, GRU and RNN that run fusedrnn's kernels.

Each class is built on torch.nn.RNNBase like its torch.nn counterpart: the same constructor
arguments, parameters, initialisation and state_dict, so checkpoints load either way; only
``forward`` differs. It takes
a tensor or a PackedSequence, as torch.nn does, and stacks :mod:`fusedrnn._torch_ops`' one-layer
op over layers and directions (on the CPU one op for both directions of a layer, which run side
by side where their steps are small); dropout between layers is torch's own (``F.dropout``, torch's
RNG). Autograd runs fusedrnn's backward from the forward's tape. float32 and float64 only; CPU
tensors reach the kernels without a copy, CUDA tensors need fusedrnn's CUDA backend.

    import fusedrnn.torch
    lstm = fusedrnn.torch.LSTM(32, 64, num_layers=2, batch_first=True)
    lstm.load_state_dict(torch.nn.LSTM(32, 64, num_layers=2).state_dict())
    y, (h, c) = lstm(x)
"""

import os
import pathlib

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ._backend import _core
from ._checks import flag
from ._torch_ops import bilayer_forward, layer_forward

__all__ = ["LSTM", "GRU", "RNN", "share_threads"]

_CELLS = {"LSTM": "lstm", "GRU": "gru", "RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu"}


def share_threads(share=True):
    """Whether fusedrnn's kernels run their parallel loops on torch's OpenMP threads (libgomp's)
    rather than on fusedrnn's own; returns whether they now do. After each of torch's parallel
    ops its threads spin for milliseconds on the cores that fusedrnn's threads would need
    (csrc/thread_pool.cc), so importing fusedrnn.torch shares them, unless the environment sets
    FUSEDRNN_SHARE_TORCH_THREADS=0. While shared, torch.set_num_threads sets how many threads
    fusedrnn's loops run on. Results are the same bits either way."""
    share = flag(share, "share")
    if _core is None:
        return False
    if not share:
        _core.share_openmp_threads("")
        return False
    libraries = sorted((pathlib.Path(torch.__file__).parent / "lib").glob("libgomp*.so*"))
    return any(_core.share_openmp_threads(str(path)) for path in libraries)


if os.environ.get("FUSEDRNN_SHARE_TORCH_THREADS", "1") != "0":
    share_threads()


class _FusedRNNBase(torch.nn.RNNBase):
    """torch.nn.LSTM/GRU/RNN's forward contract, computed by fusedrnn. The classes derive from
    torch.nn.RNNBase rather than from torch.nn.LSTM and co.: torch.compile refuses to trace the
    latter (it knows their cuDNN/_VF forward, not ours)."""

    def forward(self, input, hx=None):
        packed = isinstance(input, PackedSequence)
        is_lstm = self.mode == "LSTM"
        if packed:
            self.check_forward_args(input.data, self._zero_state_if_none(hx, input.data,
                                                                         int(input.batch_sizes[0])),
                                    input.batch_sizes)
            x, lengths = pad_packed_sequence(input)  # (T, B, I) in the caller's batch order
            batched = True
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"input: expected a 2-D (T, I) or 3-D tensor, got "
                                 f"{input.dim()}-D shape {tuple(input.shape)}")
            batched, lengths = input.dim() == 3, None
            if not batched:
                input = input.unsqueeze(0 if self.batch_first else 1)
                hx = self._unsqueezed_state(hx)
            batch = input.size(0 if self.batch_first else 1)
            self.check_forward_args(input, self._zero_state_if_none(hx, input, batch), None)
            x = input.transpose(0, 1) if self.batch_first else input
        if x.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"input: expected a float32 or float64 tensor (fusedrnn's kernels), "
                            f"got {x.dtype}")
        h0, c0 = (hx if is_lstm else (hx, None)) if hx is not None else (None, None)

        L, D = self.num_layers, 2 if self.bidirectional else 1
        keep_tape = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in [x, h0, c0, *self.parameters()])
        h_n, c_n, inp = [], [], x
        for layer in range(L):
            if D == 2 and x.device.type != "cuda":  # both directions in one op (side by side)
                k = 2 * layer
                inp, h, c, *_tapes = bilayer_forward(
                    inp, *self._weights(layer, 0), *self._weights(layer, 1),
                    None if h0 is None else h0[k:k + 2], None if c0 is None else c0[k:k + 2],
                    lengths, _CELLS[self.mode], True, keep_tape)
                h_n.extend(h.unbind(0))
                if is_lstm:
                    c_n.extend(c.unbind(0))
            else:
                outs = []
                for d in range(D):
                    k = layer * D + d
                    y, h, c, *_tape = layer_forward(
                        inp, *self._weights(layer, d), None if h0 is None else h0[k],
                        None if c0 is None else c0[k], lengths, _CELLS[self.mode], True,
                        bool(d), keep_tape)
                    outs.append(y)
                    h_n.append(h)
                    c_n.append(c)
                inp = outs[0] if D == 1 else torch.cat(outs, dim=2)
            if self.training and self.dropout > 0 and layer < L - 1:
                inp = F.dropout(inp, self.dropout, training=True)
        h_n = torch.stack(h_n)
        c_n = torch.stack(c_n) if is_lstm else None

        if packed:
            output = _packed_like(inp, lengths, input)
        elif not batched:
            output, h_n = inp.squeeze(1), h_n.squeeze(1)
            c_n = None if c_n is None else c_n.squeeze(1)
        else:
            output = inp.transpose(0, 1) if self.batch_first else inp
        return output, ((h_n, c_n) if is_lstm else h_n)

    def _weights(self, layer, direction):
        suffix = f"l{layer}{'_reverse' if direction else ''}"
        names = ("weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if self.bias else ())
        found = [getattr(self, f"{name}_{suffix}") for name in names]
        return found + [None] * (4 - len(found))

    def _unsqueezed_state(self, hx):
        """The state of unbatched input with its batch dimension, as torch.nn checks it."""
        if hx is None:
            return None
        parts = hx if self.mode == "LSTM" else (hx,)
        for i, part in enumerate(parts):
            if part.dim() != 2:
                name = f"hx[{i}]" if self.mode == "LSTM" else "hx"
                raise RuntimeError(f"{name}: expected a 2-D tensor for unbatched 2-D input, got "
                                   f"{part.dim()}-D shape {tuple(part.shape)}")
        parts = tuple(p.unsqueeze(1) for p in parts)
        return parts if self.mode == "LSTM" else parts[0]

    def _zero_state_if_none(self, hx, like, batch):
        """hx, or a zero state of the expected shape (for torch.nn's argument checks only)."""
        if hx is not None:
            return hx
        shape = ((2 if self.bidirectional else 1) * self.num_layers, batch, self.hidden_size)
        zeros = like.new_zeros(shape)
        return (zeros, zeros) if self.mode == "LSTM" else zeros


def _packed_like(y, lengths, packed):
    """The padded output y (T, B, F) packed as torch.nn packs it: the input's batch sizes and
    sorting, so that torch.nn.utils.rnn.pad_packed_sequence undoes it."""
    order = packed.sorted_indices
    if order is not None:
        y, lengths = y.index_select(1, order), lengths[order.cpu()]
    data = pack_padded_sequence(y, lengths, enforce_sorted=True).data
    return PackedSequence(data, packed.batch_sizes, packed.sorted_indices,
                          packed.unsorted_indices)


class LSTM(_FusedRNNBase):
    """torch.nn.LSTM computed by fusedrnn; ``proj_size`` must be 0 (no projected LSTM)."""

    # torch.nn.LSTM's checks of the (h, c) state, shared rather than rewritten.
    check_forward_args = torch.nn.LSTM.check_forward_args
    get_expected_cell_size = torch.nn.LSTM.get_expected_cell_size

    def __init__(self, *args, **kwargs):
        super().__init__("LSTM", *args, **kwargs)
        if self.proj_size != 0:
            raise ValueError(f"proj_size: expected 0 (fusedrnn has no projected LSTM), got "
                             f"{self.proj_size}")


class GRU(_FusedRNNBase):
    """torch.nn.GRU computed by fusedrnn (torch's reset-after form)."""

    def __init__(self, *args, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size: expected no proj_size for GRU (LSTM only), got "
                             f"{kwargs['proj_size']!r}")
        super().__init__("GRU", *args, **kwargs)


class RNN(_FusedRNNBase):
    """torch.nn.RNN computed by fusedrnn, ``nonlinearity`` 'tanh' or 'relu' (like torch.nn.RNN,
    also accepted as the fourth positional argument)."""

    def __init__(self, *args, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size: expected no proj_size for RNN (LSTM only), got "
                             f"{kwargs['proj_size']!r}")
        if len(args) > 3:
            kwargs["nonlinearity"], args = args[3], args[:3] + args[4:]
        nonlinearity = kwargs.pop("nonlinearity", "tanh")
        modes = {"tanh": "RNN_TANH", "relu": "RNN_RELU"}
        if nonlinearity not in modes:
            raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__(modes[nonlinearity], *args, **kwargs)
        self.nonlinearity = nonlinearity
