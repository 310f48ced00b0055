"""Argument checks shared by the functional ops and the layers. Every failure names the
argument, what was expected and what came, and is raised before anything is computed."""

import functools
import numbers
import os

import numpy as np

from ._device import cuda_device

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def type_name(obj):
    """The type of obj, module-qualified unless builtin (fusedrnn.ops.Tape vs fusedrnn.layers.Tape)."""
    cls = type(obj)
    module = getattr(cls, "__module__", "builtins")
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def dtype_name(dt):
    """A dtype's name, with its byte order when that is not the machine's ('>f4')."""
    return dt.name if dt.isnative else dt.str


def as_dtype(dtype, name="dtype"):
    """A NumPy dtype from a name or dtype; float32 and float64 only."""
    if dtype is None:  # np.dtype(None) would quietly mean float64
        raise TypeError(f"{name}: expected 'float32' or 'float64', got None")
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError, SyntaxError) as exc:
        raise TypeError(f"{name}: expected 'float32' or 'float64', got {dtype!r}") from exc
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected 'float32' or 'float64', got {dtype_name(dt)!r}")
    return dt


def positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected a positive int, got {type_name(value)} {value!r}")
    if value <= 0:
        raise ValueError(f"{name}: expected a positive int, got {value}")
    return int(value)


def optional_seed(value, name="seed"):
    """None or a non-negative int, as np.random.default_rng takes it."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
        raise TypeError(f"{name}: expected None or a non-negative int, got {type_name(value)} "
                        f"{value!r}")
    if value is not None and value < 0:
        raise ValueError(f"{name}: expected None or a non-negative int, got {value}")
    return value


def checked_state_dict(state_dict, shapes, dtype, to_numpy=None):
    """state_dict's arrays, strictly checked against `shapes` (every key, no other, each shape)
    and copied as C-contiguous arrays of `dtype`; on any error nothing is returned.
    ``to_numpy(value, label)``, when given, first turns a framework's array into one NumPy
    reads."""
    if not isinstance(state_dict, dict):
        raise TypeError(f"state_dict: expected a dict of arrays, got {type_name(state_dict)}")
    missing = [k for k in shapes if k not in state_dict]
    unknown = [k for k in state_dict if k not in shapes]
    if missing or unknown:
        raise ValueError(f"state_dict: missing keys {missing}, unknown keys {unknown}")
    out = {}
    for key, shape in shapes.items():
        label = f"state_dict[{key!r}]"
        value = state_dict[key] if to_numpy is None else to_numpy(state_dict[key], label)
        arr = float_array(value, label)
        if arr.shape != shape:
            raise ValueError(f"{label}: expected shape {shape}, got {arr.shape}")
        out[key] = np.array(arr, dtype=dtype, order="C", copy=True)
    return out


def flag(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {type_name(value)} {value!r}")
    return bool(value)


def as_array(value, name, what="an array"):
    """value as an ndarray: a view of any CPU array exposing ``__dlpack__`` (torch, JAX, CuPy on
    the host...) without a copy, else np.asarray(value), with numpy's (and __array__'s) failures
    turned into a TypeError that names the argument: ragged nested lists, tensors that cannot be
    viewed, and the like."""
    if value is None:
        raise TypeError(f"{name}: expected {what}, got None")
    if isinstance(value, np.ndarray) or type(value).__module__.startswith("cupy"):
        return value  # CuPy: the arrays of a layer on the GPU, checked as NumPy's
    if hasattr(value, "__dlpack__"):
        try:
            return np.from_dlpack(value)
        except (TypeError, ValueError, RuntimeError, BufferError):
            pass  # a device array, a dtype DLPack lacks...: np.asarray says what is wrong
    try:
        return np.asarray(value)
    except (TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise TypeError(f"{name}: expected {what}, got {type_name(value)} that NumPy cannot "
                        f"convert ({exc})") from exc


def _ndims(ndim):
    """ndim, an int or a tuple of ints, as a tuple."""
    return ndim if isinstance(ndim, tuple) else (ndim,)


def _ndim_text(ndim):
    return " or ".join(f"{d}-d" for d in _ndims(ndim))


def float_array(value, name, dtype=None, ndim=None, source="the model's"):
    """value as an ndarray of float32/float64 (and of `dtype` when given), without copying."""
    arr = as_array(value, name)
    if arr.dtype not in FLOAT_DTYPES:
        want = dtype.name if dtype is not None else "float32 or float64"
        raise TypeError(f"{name}: expected a {want} array, got dtype {dtype_name(arr.dtype)}")
    if dtype is not None and arr.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype.name} ({source}), got {arr.dtype.name}")
    # A tuple, not np.atleast_1d(ndim): `in` on an array compares element by element, which
    # cost an LSTM layer's call (T=1, B=1, H=32) 14 of its 38 us.
    if ndim is not None and arr.ndim not in _ndims(ndim):
        raise ValueError(f"{name}: expected a {_ndim_text(ndim)} array, got shape {arr.shape}")
    return arr


def shaped(value, name, dtype, shape, source="the model's"):
    """float_array of exactly `shape`; not copied (see contiguous)."""
    arr = float_array(value, name, dtype, source=source)
    if arr.shape != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {arr.shape}")
    return arr


def contiguous(arr):
    """arr as an aligned, C-contiguous array (what the kernels read); a copy only if needed."""
    if arr is None:
        return None
    # Looked at first: np.require takes microseconds even where it copies nothing. (It also
    # turns a subclass into a plain ndarray, which this leaves to it.)
    if type(arr) is np.ndarray and arr.flags.c_contiguous and arr.flags.aligned:
        return arr
    return np.require(arr, requirements=("C", "A"))


def lengths_array(lengths, batch, steps):
    """lengths as int64 (B,), each in [1, T] (PackedSequence rules)."""
    where = cuda_device(lengths)
    if where is not None:
        raise TypeError(f"lengths: expected a host array (lengths stay on the CPU, as for torch's "
                        f"pack_padded_sequence), got a {type_name(lengths)} on CUDA device {where}")
    arr = as_array(lengths, "lengths", "an integer array")
    if arr.dtype.kind not in "iu":
        raise TypeError(f"lengths: expected an integer array, got dtype {arr.dtype.name}")
    if arr.shape != (batch,):
        raise ValueError(f"lengths: expected shape ({batch},) (one per batch row), got {arr.shape}")
    if arr.size and (arr.min() < 1 or arr.max() > steps):
        bad = arr[(arr < 1) | (arr > steps)][0]
        raise ValueError(f"lengths: expected values in [1, {steps}] (the sequence length), "
                         f"got {bad}")
    return np.require(arr, np.int64, requirements=("C", "A"))


@functools.lru_cache(maxsize=None)
def _physical_memory():
    """This machine's memory in bytes, or None where the OS does not say. Asked once: two
    sysconf calls took ~1.5 us of every call of a small model."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(nbytes, what):
    """Refuses work whose buffers could never fit in this machine's memory. `what` names the
    arguments responsible, e.g. "x: shape (T, B, I) with H=64: forward"; or is a function that
    returns that text, called only when it is needed (a layer's call builds none)."""
    total = _physical_memory()
    if total is None:
        return
    if nbytes > total:
        what = what() if callable(what) else what
        raise ValueError(f"{what} would need {nbytes / 2**30:.1f} GiB, more than this machine's "
                         f"{total / 2**30:.1f} GiB of memory")
