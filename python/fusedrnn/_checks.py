"""Argument checks shared by the functional ops and the layers. Every failure names the
argument, what was expected and what came, and is raised before anything is computed."""

import numbers
import os

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def type_name(obj):
    return type(obj).__name__


def as_dtype(dtype, name="dtype"):
    """A NumPy dtype from a name or dtype; float32 and float64 only."""
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"{name}: expected 'float32' or 'float64', got {dtype!r}") from exc
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected 'float32' or 'float64', got {dt.name!r}")
    return dt


def positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected a positive int, got {type_name(value)} {value!r}")
    if value <= 0:
        raise ValueError(f"{name}: expected a positive int, got {value}")
    return int(value)


def flag(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {type_name(value)} {value!r}")
    return bool(value)


def float_array(value, name, dtype=None, ndim=None):
    """value as an ndarray of float32/float64 (and of `dtype` when given), without copying."""
    if value is None:
        raise TypeError(f"{name}: expected an array, got None")
    arr = value if isinstance(value, np.ndarray) else np.asarray(value)
    if arr.dtype == object or arr.dtype.kind not in "f" or arr.dtype not in FLOAT_DTYPES:
        want = dtype.name if dtype is not None else "float32 or float64"
        raise TypeError(f"{name}: expected a {want} array, got dtype {arr.dtype.name}")
    if dtype is not None and arr.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype.name} (the model's), got {arr.dtype.name}")
    if ndim is not None and arr.ndim not in np.atleast_1d(ndim):
        raise ValueError(f"{name}: expected a {ndim}-d array, got shape {arr.shape}")
    return arr


def shaped(value, name, dtype, shape):
    arr = float_array(value, name, dtype)
    if arr.shape != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {arr.shape}")
    return np.ascontiguousarray(arr)


def lengths_array(lengths, batch, steps):
    """lengths as int64 (B,), each in [1, T] (PackedSequence rules)."""
    arr = lengths if isinstance(lengths, np.ndarray) else np.asarray(lengths)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"lengths: expected an integer array, got dtype {arr.dtype.name}")
    if arr.shape != (batch,):
        raise ValueError(f"lengths: expected shape ({batch},) (one per batch row), got {arr.shape}")
    if arr.size and (arr.min() < 1 or arr.max() > steps):
        bad = arr[(arr < 1) | (arr > steps)][0]
        raise ValueError(f"lengths: expected values in [1, {steps}] (the sequence length), "
                         f"got {bad}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def check_memory(nbytes, what):
    """Refuses work whose buffers could never fit in this machine's memory."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if nbytes > total:
        raise ValueError(f"{what}: needs {nbytes / 2**30:.1f} GiB, more than this machine's "
                         f"{total / 2**30:.1f} GiB of memory")
