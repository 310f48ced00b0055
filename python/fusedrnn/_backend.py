"""Loads the compiled kernels if this install has them; the NumPy reference is the fallback."""

try:
    import scipy_openblas32  # noqa: F401  (loads libscipy_openblas, which _core links)

    from . import _core
except ImportError as exc:  # a source tree without a build, or a broken BLAS install
    _core = None
    CORE_ERROR = f"{type(exc).__name__}: {exc}"
else:
    CORE_ERROR = None

BACKENDS = ("auto", "cpu", "numpy")


def resolve(backend):
    """Maps a backend name to "cpu" or "numpy"; "auto" prefers the compiled kernels."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "cpu" if _core is not None else "numpy"
    if backend == "cpu" and _core is None:
        raise ValueError(f"backend: 'cpu' needs the compiled extension, which failed to load "
                         f"({CORE_ERROR}); use backend='numpy'")
    return backend
