"""fusedrnn: fused LSTM, GRU and RNN kernels (forward and backpropagation through time) with
NumPy references and torch.nn-compatible layers.

    import fusedrnn as fr
    m = fr.LSTM(32, 64, num_layers=2)
    y, (h, c) = m(x)                                   # inference
    y, state, tape = m.forward(x, training=True)
    dx, dstate, dparams = m.backward(tape, dy)
"""

from . import ops, reference
from ._backend import CORE_ERROR, _core
from ._checks import positive_int
from .layers import GRU, LSTM, RNN

__version__ = "0.1.0"
_MAX_THREADS = 2**31 - 1
__all__ = ["LSTM", "GRU", "RNN", "ops", "reference", "backends", "set_num_threads"]


def backends():
    """The backends this install can run: 'cpu' (compiled kernels) when built, and 'numpy'."""
    return (("cpu",) if _core is not None else ()) + ("numpy",)


def set_num_threads(threads):
    """Threads used by BLAS for the kernels' matrix products."""
    threads = positive_int(threads, "threads")
    if threads > _MAX_THREADS:  # the C++ side takes an int
        raise ValueError(f"threads: expected a positive int up to {_MAX_THREADS}, got {threads}")
    if _core is None:
        raise ValueError(f"set_num_threads: the compiled extension is not loaded ({CORE_ERROR})")
    _core.set_num_threads(threads)
