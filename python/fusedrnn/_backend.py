"""Loads the compiled kernels if this install has them; the NumPy reference is the fallback."""

import functools
import importlib

try:
    import scipy_openblas32  # noqa: F401  (loads libscipy_openblas, which _core links)

    from . import _core
except ImportError as exc:  # a source tree without a build, or a broken BLAS install
    _core = None
    CORE_ERROR = f"{type(exc).__name__}: {exc}"
else:
    CORE_ERROR = None



@functools.cache
def _load_cuda():
    """(fusedrnn._cuda or None, why not). Imported on first use, not with the package: loading
    cuBLAS takes most of a second, which CPU work should not pay."""
    try:
        # import_module, not "from . import": that raises a plain ImportError for a missing file
        _cuda = importlib.import_module(f"{__package__}._cuda")
    except ModuleNotFoundError as exc:
        if exc.name == f"{__package__}._cuda":
            return None, "not built (this install was built without a CUDA compiler or cuBLAS)"
        return None, f"{type(exc).__name__}: {exc}"
    except ImportError as exc:  # built, but libcublas could not be loaded
        return None, f"{type(exc).__name__}: {exc}"
    return _cuda, None


def cuda_module():
    """The CUDA extension, or None when it is not built or cannot load (see cuda_error)."""
    return _load_cuda()[0]


def cuda_error():
    """Why cuda_module() is None, or None."""
    return _load_cuda()[1]


BACKENDS = ("auto", "cpu", "cuda", "numpy")


def resolve(backend):
    """Maps a backend name to "cpu", "cuda" or "numpy"; "auto" prefers the compiled CPU kernels
    (arrays on a CUDA device go to "cuda" before this is asked, see ops.forward)."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "cpu" if _core is not None else "numpy"
    if backend == "cpu" and _core is None:
        raise ValueError(f"backend: 'cpu' needs the compiled extension, which failed to load "
                         f"({CORE_ERROR}); use backend='numpy'")
    if backend == "cuda" and cuda_module() is None:
        raise ValueError(f"backend: 'cuda' needs the CUDA extension, which is {cuda_error()}")
    return backend


def cuda_status():
    """(ok, reason): whether the CUDA kernels can run here, and why not (or which device)."""
    if cuda_module() is None:
        return False, f"the CUDA extension is {cuda_error()}"
    return cuda_module().availability()
