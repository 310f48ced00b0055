"""Generated malformed calls of every public entry, run by tests/test_fuzz.py in a child process
(a crash there cannot take the test run with it) or by hand:

    python tests/fuzz_calls.py --cases 20000 --seed 1

Each case builds a valid call at random sizes (cell, dtype, T, B, I, H, ...) and runs it, then
changes one argument at random (rank, shape, dtype, strides, alignment, read-only, NaN/Inf,
negative or huge sizes, a wrong-typed object, another argument's array) and runs it again. The
call must then either
  - raise ValueError or TypeError whose message starts with the name of one of the call's
    arguments and says what was expected, leaving the model's parameters and random state as
    they were, or
  - succeed, with results bitwise equal to the valid call's when the change kept the values
    (a strided, Fortran-order, read-only, unaligned or list copy, a numpy bool or int).
No call may write into the arrays it was given. Before each call the case is printed and flushed,
so that if the process dies the parent can name the case. The last line is a JSON summary.
"""

import argparse
import collections
import json
import re
import sys

import numpy as np
from conftest import KERNEL_CELLS  # this script's folder is first on sys.path

import fusedrnn as fr
from fusedrnn import ops
from fusedrnn._backend import _core

BAD_OBJECTS = [None, "x", b"x", 3, -1, 2.5, float("nan"), True, {}, [], (), object(), print,
               np.float32(1), np.array("text"), np.array([{}], dtype=object), slice(None),
               type, Ellipsis, 1j, 2**70]
BAD_DTYPES = ["int8", "int32", "int64", "uint8", "bool", "float16", "complex64", "complex128",
              ">f4", ">f8", "float32", "float64", "object", "U3", "M8[s]"]
HUGE_SIZES = [2**31, 2**31 + 7, 2**40, 10**12]  # also array dims: the product must fit int64
# A failure message begins "name: ..." or "name[...] ...: ..." and says what was expected (or
# what the work would need / which keys are wrong).
MESSAGE = re.compile(r"^(?P<name>[A-Za-z_*][\w*]*)[^:]*: .*(expected|would need|missing keys)",
                     re.S)

Case = collections.namedtuple("Case", "entry call args model")  # model: None, or the layer


# -- valid calls ---------------------------------------------------------------------------

def arrays(rng, kcell, dtype, T, B, I, H):
    G = ops.GATES[kcell]
    u = lambda *shape: rng.uniform(-1, 1, shape).astype(dtype)  # noqa: E731
    a = dict(x=u(T, B, I), w_ih=u(G * H, I) / 2, w_hh=u(G * H, H) / 2)
    if rng.random() < 0.7:
        a.update(b_ih=u(G * H), b_hh=u(G * H))
    if rng.random() < 0.7:
        a["h0"] = u(B, H)
        if kcell == "lstm":
            a["c0"] = u(B, H)
    if rng.random() < 0.5:
        a["lengths"] = rng.integers(1, T + 1, B)
    return a


def backward_args(rng, tape, kcell, dtype, T, B, H):
    def u(*shape):
        return rng.uniform(-1, 1, shape).astype(dtype)

    return dict(tape=tape, dy=u(T, B, H), dh_n=u(B, H), dc_n=u(B, H) if kcell == "lstm" else None)


def make_case(rng):
    kcell = str(rng.choice(list(KERNEL_CELLS)))
    cell, reset_after = KERNEL_CELLS[kcell]
    dtype = np.dtype(rng.choice(["float32", "float64"]))
    T, B, I, H = (int(v) for v in rng.integers(1, 6, 4))
    entry = str(rng.choice(["ops.forward", "ops.backward", "_core.forward", "_core.backward",
                            "Layer()", "layer.forward", "layer.__call__", "layer.backward",
                            "layer.load_state_dict", "set_num_threads"]))
    if entry in ("ops.forward", "ops.backward"):
        args = dict(cell=cell, **arrays(rng, kcell, dtype, T, B, I, H), reverse=bool(rng.random()
                    < 0.5), training=True, reset_after=reset_after, backend="cpu")
        if entry == "ops.forward":
            return Case(entry, ops.forward, args, None)
        grads = backward_args(rng, ops.forward(**args).tape, kcell, dtype, T, B, H)
        return Case(entry, ops.backward, grads, None)
    if entry in ("_core.forward", "_core.backward"):
        a = arrays(rng, kcell, dtype, T, B, I, H)
        args = dict(cell=list(KERNEL_CELLS).index(kcell), x=a["x"], h0=a.get("h0"),
                    c0=a.get("c0"), w_ih=a["w_ih"], w_hh=a["w_hh"], b_ih=a.get("b_ih"),
                    b_hh=a.get("b_hh"), lengths=a.get("lengths"), reverse=False, training=True)
        if entry == "_core.forward":
            # y absent: mutations make it present as a bad object or as an input's own array,
            # both of which must be refused (a given y is written, which the checks forbid).
            return Case(entry, _core.forward, dict(args, y=None), None)
        grads = backward_args(rng, _core.forward(**args)[3], kcell, dtype, T, B, H)
        return Case(entry, _core.backward, grads, None)
    if entry == "set_num_threads":
        return Case(entry, fr.set_num_threads, dict(threads=int(rng.integers(1, 3))), None)

    cls = {"lstm": fr.LSTM, "gru": fr.GRU, "gru_reset_before": fr.GRU, "rnn_tanh": fr.RNN,
           "rnn_relu": fr.RNN}[kcell]
    ctor = dict(input_size=I, hidden_size=H, num_layers=int(rng.integers(1, 3)),
                bias=bool(rng.random() < 0.7), batch_first=bool(rng.random() < 0.5),
                dropout=float(rng.choice([0.0, 0.3])), bidirectional=bool(rng.random() < 0.5),
                dtype=dtype.name, seed=int(rng.integers(0, 100)), backend="cpu")
    if cls is fr.GRU:
        ctor["reset_after"] = reset_after
    if cls is fr.RNN:
        ctor["nonlinearity"] = kcell[4:]
    if entry == "Layer()":
        return Case(entry, cls, ctor, None)
    m = cls(**ctor)
    x_shape = (B, T, I) if m.batch_first else (T, B, I)
    x = rng.uniform(-1, 1, x_shape).astype(dtype)
    state_shape = (m.num_layers * m.num_directions, B, H)
    state = None
    if rng.random() < 0.6:
        h = rng.uniform(-1, 1, state_shape).astype(dtype)
        state = (h, rng.uniform(-1, 1, state_shape).astype(dtype)) if kcell == "lstm" else h
    lengths = rng.integers(1, T + 1, B) if rng.random() < 0.4 else None
    if entry == "layer.forward":
        args = dict(x=x, state=state, lengths=lengths, training=bool(rng.random() < 0.5))
        return Case(entry, m.forward, args, m)
    if entry == "layer.__call__":
        args = dict(x=x, state=state, lengths=lengths)
        return Case(entry, m, args, m)
    if entry == "layer.backward":
        y, state_n, tape = m.forward(x, state, lengths, training=True)
        dstate = None
        if rng.random() < 0.5:
            dstate = tuple(np.ones_like(s) for s in state_n) if kcell == "lstm" else state_n * 0.5
        args = dict(tape=tape, dy=rng.uniform(-1, 1, y.shape).astype(dtype), dstate=dstate)
        return Case(entry, m.backward, args, m)
    doubled = {k: v * 2 for k, v in m.state_dict().items()}  # same shapes, other values
    return Case(entry, m.load_state_dict, dict(state_dict=doubled), m)


# -- mutations -----------------------------------------------------------------------------

def unaligned(a):
    buf = np.empty(a.nbytes + 1, np.uint8)
    out = np.frombuffer(buf.data, a.dtype, a.size, offset=1).reshape(a.shape)
    out[...] = a
    return out


def strided(a):
    """The same values in a view with every stride doubled."""
    big = np.empty(tuple(2 * n for n in a.shape), a.dtype)
    view = big[tuple(slice(None, None, 2) for _ in a.shape)]
    view[...] = a
    return view


def mutate_array(rng, a):
    """(new value, what was done, whether the values were kept)."""
    kind = str(rng.choice(["rank+", "rank-", "shape", "empty", "dtype", "strided", "fortran",
                           "readonly", "unaligned", "list", "nan", "inf", "huge", "object"]))
    if kind == "rank+":
        return a[None], kind, False
    if kind == "rank-":
        return (a.reshape(-1)[0] if a.ndim == 1 else a[0]), kind, False
    if kind in ("shape", "empty") and a.ndim:
        shape = list(a.shape)
        k = int(rng.integers(len(shape)))
        shape[k] = 0 if kind == "empty" else int(rng.integers(1, 2 * shape[k] + 3))
        return rng.uniform(-1, 1, shape).astype(a.dtype), kind, False  # new values
    if kind == "dtype":
        dt = np.dtype(str(rng.choice(BAD_DTYPES)))
        with np.errstate(all="ignore"):
            return a.astype(dt), f"dtype {dt.str}", dt == a.dtype
    if kind == "strided":
        return strided(a), kind, True
    if kind == "fortran":
        return np.asfortranarray(a), kind, True
    if kind == "readonly":
        ro = a.copy()
        ro.flags.writeable = False
        return ro, kind, True
    if kind == "unaligned":
        return unaligned(a), kind, True
    if kind == "list":
        return a.tolist(), kind, a.dtype == np.float64 or a.dtype.kind in "iu"
    if kind in ("nan", "inf") and a.size and a.dtype.kind == "f":
        poisoned = a.copy()
        poisoned.reshape(-1)[int(rng.integers(a.size))] = np.nan if kind == "nan" else -np.inf
        return poisoned, kind, False
    if kind == "huge" and a.ndim:
        shape = list(a.shape)
        shape[int(rng.integers(len(shape)))] = int(rng.choice(HUGE_SIZES))
        return np.broadcast_to(np.zeros((), a.dtype), shape), kind, False
    return mutate_object(rng)


def mutate_object(rng):
    obj = BAD_OBJECTS[int(rng.integers(len(BAD_OBJECTS)))]
    return obj, f"object {type(obj).__name__}", False


def mutate_int(rng, value):
    kind = str(rng.choice(["zero", "negative", "huge", "numpy int", "float", "object"]))
    if kind == "zero":
        return 0, kind, value == 0
    if kind == "negative":
        return -int(rng.integers(1, 2**40)), kind, False
    if kind == "huge":
        return int(rng.choice(HUGE_SIZES + [2**62, 2**63 - 1])), kind, False
    if kind == "numpy int":
        return np.int64(value), kind, True
    if kind == "float":
        return float(value), kind, False
    return mutate_object(rng)


def mutate(rng, case):
    """A copy of case.args with one argument changed; returns (args, description, kept)."""
    args = dict(case.args)
    name = str(rng.choice(list(case.args)))
    value = args[name]
    if isinstance(value, np.ndarray) and value.dtype.kind in "fiu":
        new, kind, kept = mutate_array(rng, value)
    elif isinstance(value, tuple) and rng.random() < 0.7:  # one leaf of an LSTM state
        k = int(rng.integers(len(value)))
        leaf, kind, kept = mutate_array(rng, value[k])
        new, kind = value[:k] + (leaf,) + value[k + 1:], f"[{k}] {kind}"
    elif isinstance(value, dict) and rng.random() < 0.8:
        new = dict(value)
        key = str(rng.choice(list(value)))
        what = str(rng.choice(["drop", "extra", "leaf"]))
        if what == "drop":
            del new[key]
            kind, kept = f"drop {key}", False
        elif what == "extra":
            new[key + "_extra"] = value[key]
            kind, kept = f"extra {key}_extra", False
        else:
            new[key], kind, kept = mutate_array(rng, value[key])
            kind = f"[{key}] {kind}"
    elif isinstance(value, (bool, np.bool_)):
        new, kind, kept = ((np.bool_(value), "numpy bool", True) if rng.random() < 0.3
                           else mutate_object(rng))
    elif isinstance(value, (int, np.integer)):
        new, kind, kept = mutate_int(rng, value)
    elif value is None and rng.random() < 0.5:  # an absent optional array made present
        donor = next(v for v in case.args.values() if isinstance(v, np.ndarray))
        new, kind, kept = donor, "another argument's array", False
    else:
        new, kind, kept = mutate_object(rng)
    args[name] = new
    return args, f"{name}: {kind}", kept


# -- checks --------------------------------------------------------------------------------

def flatten(result):
    """The arrays of a (nested) result, in order; tapes and scalars by type only."""
    if isinstance(result, dict):
        return [v for k in result for v in flatten(result[k])]
    if isinstance(result, (tuple, list)):
        return [v for r in result for v in flatten(r)]
    if isinstance(result, np.ndarray) or result is None:
        return [result]
    return [type(result)]


def identical(u, v):
    """Bitwise equality of two arrays (NaN payloads included), or == of anything else."""
    if isinstance(u, np.ndarray) and isinstance(v, np.ndarray):
        if u.dtype != v.dtype or u.shape != v.shape:
            return False
        return u.tolist() == v.tolist() if u.dtype.hasobject else u.tobytes() == v.tobytes()
    return u is v or (not isinstance(u, np.ndarray) and not isinstance(v, np.ndarray) and u == v)


def same(a, b):
    fa, fb = flatten(a), flatten(b)
    return len(fa) == len(fb) and all(identical(u, v) for u, v in zip(fa, fb))


def snapshot(model):
    if model is None:
        return None
    return model.state_dict(), model._rng.bit_generator.state


def inputs_of(args):
    """Copies of every writeable array reachable from args, to check that the call wrote none
    (read-only ones, such as huge broadcast views, cannot be written)."""
    return [np.array(v, copy=True) for v in flatten(args)
            if isinstance(v, np.ndarray) and v.flags.writeable]


def run_case(rng, index):
    case = make_case(rng)
    initial = snapshot(case.model)

    def call(args):
        if case.model is not None:  # same dropout masks for the valid and the changed call
            case.model._rng.bit_generator.state = initial[1]
        return case.call(**args)

    valid = call(case.args)
    args, change, kept = mutate(rng, case)
    print(f"case {index}: {case.entry} {change}", flush=True)
    if case.model is not None:
        case.model._rng.bit_generator.state = initial[1]
    before, given = snapshot(case.model), inputs_of(args)
    try:
        result = call(args)
    except (ValueError, TypeError) as exc:
        msg = str(exc)
        m = MESSAGE.match(msg)
        # T, B, I, H, "T*B", "sizes": the C++ size checks name the dimension they refuse.
        known = set(list(case.args)) | {"T*B", "sizes", "T", "B", "I", "H"}
        if not m or m.group("name") not in known:
            return "bad message", f"{case.entry} {change}: {type(exc).__name__}: {msg}"
        if case.model is not None and not same(snapshot(case.model), before):
            return "model changed", f"{case.entry} {change}: {msg}"
        outcome = type(exc).__name__
    except Exception as exc:  # noqa: BLE001 (any other exception is the finding)
        return "wrong exception", f"{case.entry} {change}: {type(exc).__name__}: {exc}"
    else:
        if kept and not same(result, valid):
            return "different result", f"{case.entry} {change}"
        outcome = "ok (equal)" if kept else "ok"
    if not same(inputs_of(args), given):
        return "input written", f"{case.entry} {change}"
    return outcome, None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    opts = p.parse_args(argv)
    if _core is None:
        sys.exit("the compiled extension is not built")
    threads = _core.build_info()["threads"]
    counts = collections.Counter()
    failures = []
    for index in range(opts.cases):
        rng = np.random.default_rng([opts.seed, index])
        outcome, detail = run_case(rng, index)
        counts[outcome] += 1
        if detail:
            failures.append(f"case {index} (seed {opts.seed}): {outcome}: {detail}")
    fr.set_num_threads(threads)
    print(json.dumps(dict(counts=counts, failures=failures)), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
