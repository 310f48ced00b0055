"""fusedrnn: fused LSTM, GRU and RNN kernels (forward and backpropagation through time) with
NumPy references and torch.nn-compatible layers.

    import fusedrnn as fr
    m = fr.LSTM(32, 64, num_layers=2)
    y, (h, c) = m(x)                                   # inference
    y, state, tape = m.forward(x, training=True)
    dx, dstate, dparams = m.backward(tape, dy)
    y_t, state = m.step(x_t, state)                    # one step of the stack, for sampling

fusedrnn.tbptt runs long sequences in chunks (truncated BPTT); fusedrnn.train has the few
pieces the examples train with (a linear head, losses, clipping, SGD, Adam).
"""

from . import ops, reference, tbptt, train
from ._backend import CORE_ERROR, _core, cuda_status
from ._checks import positive_int
from .layers import GRU, LSTM, RNN

__version__ = "0.1.0"
_MAX_THREADS = 1024  # as the C++ side allows
__all__ = ["LSTM", "GRU", "RNN", "ops", "reference", "tbptt", "train", "backends",
           "get_num_threads", "set_num_threads", "release_memory"]


def backends():
    """The backends this install can run: 'cpu' (compiled kernels) when built, 'cuda' when built
    and a usable GPU is present, and 'numpy'."""
    return ((("cpu",) if _core is not None else ()) + (("cuda",) if cuda_status()[0] else ())
            + ("numpy",))


def set_num_threads(threads):
    """Threads for the kernels (GEMM blocks and pointwise rows), the caller's included.

    Results do not depend on it: work is cut into blocks by size alone."""
    threads = positive_int(threads, "threads")
    if threads > _MAX_THREADS:
        raise ValueError(f"threads: expected a positive int up to {_MAX_THREADS}, got {threads}")
    if _core is None:
        raise ValueError(f"set_num_threads: the compiled extension is not loaded ({CORE_ERROR})")
    _core.set_num_threads(threads)


def get_num_threads():
    """The kernels' thread count: the last set_num_threads, or the cores this process may use."""
    if _core is None:
        raise ValueError(f"get_num_threads: the compiled extension is not loaded ({CORE_ERROR})")
    return _core.build_info()["threads"]


def release_memory():
    """Frees the memory the CPU kernels keep between calls: the calling thread's scratch (the
    input projection and gate gradients of its largest call, up to 256 MB), that of the second
    direction of bidirectional layers run side by side, and the memory of dropped tapes and of
    dropped outputs of 128 KB or more, kept for the next ones (up to 32 blocks each, 8 of them of
    4 MB or more); the next calls allocate them again.
    Nothing to do without the compiled extension."""
    if _core is not None:
        _core.release_memory()
