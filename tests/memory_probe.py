"""Memory measurements for tests/test_memory.py, each run in a fresh process (its peak RSS is then
its own) and printed as one JSON line:

    python tests/memory_probe.py steady   N       RSS after warm-up and after N more steps
    python tests/memory_probe.py retained N       the same, keeping every tape (a real leak)
    python tests/memory_probe.py tape     CELL    RSS with a tape held, dropped, reused, released
    python tests/memory_probe.py kept     CELL    RSS as nine tapes are dropped (eight are kept)
    python tests/memory_probe.py peak     CELL    peak RSS of one ops.forward+backward
    python tests/memory_probe.py hugepage CELL    whether a tape's mapping is advised for huge pages
(CELL is a kernel cell name: lstm, gru, gru_reset_before, rnn_tanh, rnn_relu.)

test_memory.py runs it with MALLOC_MMAP_THRESHOLD_ set low, so that glibc serves every large
buffer with its own mapping and gives it back to the system when freed: a freed buffer then
shows in RSS at once instead of staying in the allocator for reuse.
"""

import json
import sys

import numpy as np

import fusedrnn as fr
from fusedrnn import ops

PAGE = 4096


def status(field):
    """A /proc/self/status size field (VmRSS, VmHWM) in bytes."""
    with open("/proc/self/status") as f:
        line = next(l for l in f if l.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def rss():
    return status("VmRSS")


def reset_peak():
    """Sets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def steady(calls, keep):
    """forward(training=True)+backward on a small model, fresh input arrays every call (a
    reference leaked on an input would then keep memory)."""
    m = fr.LSTM(8, 16, num_layers=1, dtype="float64", seed=0)
    rng = np.random.default_rng(0)
    kept = []

    def one():
        x = rng.uniform(-1, 1, (8, 4, 8))
        y, state, tape = m.forward(x, training=True)
        m.backward(tape, np.ones_like(y), state)
        if keep:
            kept.append(tape)

    for _ in range(500):  # warm-up: the allocator's pools, BLAS buffers
        one()
    before = rss()
    for _ in range(calls):
        one()
    return dict(before=before, after=rss(), tape_nbytes=m.forward(
        rng.uniform(-1, 1, (8, 4, 8)), training=True)[2].nbytes)


def arrays(cell, T, B, I, H, dtype=np.float32):
    rng = np.random.default_rng(1)
    G = ops.GATES[cell]

    def u(*shape):
        a = rng.random(shape, dtype)  # in place below: no float64 temporaries
        a -= 0.5
        a *= 0.2
        return a

    return dict(x=u(T, B, I), w_ih=u(G * H, I), w_hh=u(G * H, H), b_ih=u(G * H), b_hh=u(G * H))


def forward(kcell, a):
    """ops.forward(training=True) of a kernel cell name."""
    cell, reset_after = ("gru", False) if kcell == "gru_reset_before" else (kcell, True)
    return ops.forward(cell, **a, reset_after=reset_after, training=True)


SIZES = dict(T=64, B=64, I=64, H=256)  # float32 LSTM tape: about 25 MB


def tape(cell):
    """RSS with a tape held; after dropping it (its memory kept for the next tape, as y's for the
    next y); with a second tape of the same size held, which reuses that memory; after dropping that one too; after
    fr.release_memory(); and the growth while a tape is made that no kept block fits."""
    a = arrays(cell, **SIZES)
    # Warm-up (BLAS buffers, the kernels' scratch), its tape held throughout: nothing is kept
    # when the measured tapes start.
    warm = forward(cell, a)
    before = rss()
    res = forward(cell, a)
    held = rss()
    nbytes = res.tape.nbytes
    outputs = sum(v.nbytes for v in res[:3] if v is not None)
    # Dropped, outputs of 128 KB or more keep their memory for the next outputs too (rnn.h's
    # OutputBuffer): y here.
    kept_outputs = sum(v.nbytes for v in res[:3] if v is not None and v.nbytes >= 128 << 10)
    del res
    dropped = rss()
    res = forward(cell, a)
    again = rss()
    del res
    kept = rss()
    fr.release_memory()
    released = rss()
    # A kept tape too small for the next one is freed before that one's memory is allocated.
    small = forward(cell, arrays(cell, **dict(SIZES, T=SIZES["T"] // 4)))
    small_nbytes = small.tape.nbytes
    del small
    before_miss = rss()
    res = forward(cell, a)
    missed = rss() - before_miss
    del res, warm
    return dict(before=before, held=held, dropped=dropped, again=again, kept=kept,
                released=released, missed=missed, small_nbytes=small_nbytes, tape_nbytes=nbytes,
                outputs=outputs, kept_outputs=kept_outputs)


def kept_tapes(cell):
    """RSS as nine tapes of 6 MB are dropped (at most eight of 4 MB or more are kept, the first
    dropped freed) and after fr.release_memory(); a tape of half their size then takes a kept
    block."""
    a = arrays(cell, **dict(SIZES, T=SIZES["T"] // 4))
    b = arrays(cell, **dict(SIZES, T=SIZES["T"] // 8))
    tapes = [forward(cell, a).tape for _ in range(9)]
    nbytes = tapes[0].nbytes
    before = rss()
    del tapes
    dropped = rss()
    half = forward(cell, b)  # takes a kept block
    with_half = rss()
    half_tape = half.tape.nbytes
    half_outputs = sum(v.nbytes for v in half[:3] if v is not None)
    del half
    fr.release_memory()
    return dict(before=before, dropped=dropped, with_half=with_half, released=rss(),
                tape_nbytes=nbytes, half_tape_nbytes=half_tape, half_outputs=half_outputs)


def peak(cell):
    """The peak of one training step over the RSS before it, with what it allocates."""
    a = arrays(cell, **SIZES)
    T, B, I, H = (SIZES[k] for k in "TBIH")
    dy = np.ones((T, B, H), np.float32)
    for _ in range(2):  # the first is a warm-up: BLAS buffers, the allocator's own state
        fr.release_memory()  # the scratch kept from the warm-up would not count in the peak
        before = rss()
        reset_peak()
        res = forward(cell, a)
        grads = ops.backward(res.tape, dy)
        peak = status("VmHWM")
        sizes = dict(tape=res.tape.nbytes, y=res.y.nbytes, dx=grads.dx.nbytes,
                     weight_grads=sum(g.nbytes for g in grads[1:] if g is not None))
        del res, grads
    return dict(before=before, peak=peak, **sizes)


def hugepage(cell):
    """The VmFlags of the mapping that holds a tape's gates: "hg" when it was advised for huge
    pages (madvise MADV_HUGEPAGE)."""
    res = forward(cell, arrays(cell, **SIZES))
    address = ops.tape_arrays(res.tape)[2].ctypes.data
    flags, inside = None, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):  # a mapping's first line: start-end ...
                start, end = (int(v, 16) for v in head.split("-"))
                inside = start <= address < end
            elif inside and head == "VmFlags:":
                flags = line.split()[1:]
    return dict(flags=flags)


def main(what, arg):
    if what in ("steady", "retained"):
        out = steady(int(arg), keep=what == "retained")
    else:
        out = {"tape": tape, "kept": kept_tapes, "peak": peak, "hugepage": hugepage}[what](arg)
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:])
