"""Arrays on a CUDA device, whichever library made them: recognised through DLPack, and results
handed back as the caller's kind of array (zero-copy, through DLPack)."""

_DL_CUDA = 2  # DLPack's device type of CUDA memory


def cuda_device(obj):
    """The CUDA device index of an array that lives on one (it says so through
    ``__dlpack_device__``); None for anything else, NumPy arrays and CPU tensors included."""
    describe = getattr(type(obj), "__dlpack_device__", None)
    if describe is None:
        return None
    try:
        kind, index = describe(obj)
        return int(index) if int(kind) == _DL_CUDA else None
    except (TypeError, ValueError, RuntimeError, BufferError):
        return None


def importer(array):
    """The from_dlpack of `array`'s library, which turns this backend's results (DLPack
    exporters) into that library's arrays without a copy. Arrays of a library not known here get
    the results as they are: fusedrnn._cuda.DeviceArray, which any DLPack consumer imports."""
    library = type(array).__module__.split(".")[0]
    if library == "torch":
        import torch
        return torch.from_dlpack
    if library == "cupy":
        import cupy
        return cupy.from_dlpack
    if library in ("jax", "jaxlib"):
        import jax.dlpack
        return jax.dlpack.from_dlpack
    return _as_is


def _as_is(result):
    return result
