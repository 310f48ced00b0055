"""fusedrnn: fused LSTM, GRU and RNN kernels (forward and backpropagation through time) with
NumPy references and torch.nn-compatible layers.

    import fusedrnn as fr
    m = fr.LSTM(32, 64, num_layers=2)
    y, (h, c) = m(x)                                   # inference
    y, state, tape = m.forward(x, training=True)
    dx, dstate, dparams = m.backward(tape, dy)
"""

from . import ops, reference
from ._backend import CORE_ERROR, _core, cuda_status
from .layers import GRU, LSTM, RNN

__version__ = "0.1.0"
__all__ = ["LSTM", "GRU", "RNN", "ops", "reference", "backends", "set_num_threads"]


def backends():
    """The backends this install can run: 'cpu' (compiled kernels) when built, 'cuda' when built
    and a usable GPU is present, and 'numpy'."""
    return ((("cpu",) if _core is not None else ()) + (("cuda",) if cuda_status()[0] else ())
            + ("numpy",))


def set_num_threads(threads):
    """Threads used by BLAS for the kernels' matrix products."""
    if _core is None:
        raise ValueError(f"set_num_threads: the compiled extension is not loaded ({CORE_ERROR})")
    _core.set_num_threads(threads)
