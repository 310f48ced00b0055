"""Determinism: identical inputs give bitwise identical outputs and gradients, within a process and
across processes, and whatever the kernels' thread count (they cut work into blocks by size
alone, or where a cut follows the thread count it changes no bit; see csrc/thread_pool.h).

The workload: every layer kind, two stacked bidirectional layers with dropout (seeded), lengths,
both dtypes; its digest is a SHA-256 of every output and gradient."""

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import LAYERS, random_state

import fusedrnn as fr
from fusedrnn._backend import _core

pytestmark = pytest.mark.skipif(_core is None, reason="the compiled extension is not built")


def digest():
    """SHA-256 over every output and gradient of a fixed workload."""
    h = hashlib.sha256()
    rng = np.random.default_rng(0)
    T, B, I, H = 12, 6, 16, 32
    for kind in LAYERS:
        for dtype in (np.float32, np.float64):
            m = LAYERS[kind](I, H, num_layers=2, bidirectional=True, dropout=0.3, dtype=dtype,
                             seed=1)
            x = rng.uniform(-1, 1, (T, B, I)).astype(dtype)
            state = random_state(rng, m, B)
            lengths = rng.integers(1, T + 1, B)
            y, state_n, tape = m.forward(x, state, lengths, training=True)
            dx, dstate, dparams = m.backward(tape, np.ones_like(y), state_n)
            for a in (y, dx, *np.atleast_1d(state_n), *np.atleast_1d(dstate),
                      *dparams.values()):
                h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def digest_in_child(threads):
    code = ("import sys; sys.path[:0] = sys.argv[2:]; import fusedrnn, test_determinism as t; "
            "fusedrnn.set_num_threads(int(sys.argv[1])); print(t.digest())")
    here = os.path.dirname(__file__)
    proc = subprocess.run([sys.executable, "-c", code, str(threads), here, *sys.path],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.split()[-1]


@pytest.fixture
def threads_restored():
    """Restores the kernels' thread count after a test that changes it."""
    before = _core.build_info()["threads"]
    yield
    fr.set_num_threads(before)


def test_same_digest_in_process_across_processes_and_thread_counts(threads_restored):
    fr.set_num_threads(1)
    here = digest()
    assert digest() == here  # the same process again (allocations, buffers warmed)
    for threads in (2, 3):
        fr.set_num_threads(threads)
        assert digest() == here, f"{threads} threads"
    assert digest_in_child(2) == here  # a fresh process: other addresses, cold caches


@pytest.mark.parametrize("T, B, I, H", [(24, 32, 384, 384), (64, 16, 384, 384),
                                        (80, 700, 5, 24)], ids=["T24B32", "T64B16", "H24"])
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_walking_rows_or_cutting_units_gives_the_same_bits(kind, T, B, I, H, threads_restored):
    """A float32 W_hh that fits in L3 but not in L2 (H=384: 0.6-2.4 MB packed) is walked by
    batch rows where the pool has no more threads than row blocks (2 at B=32; at B=16, 2 in a
    walk of 64 steps), and cut by units at every step where it has more (csrc/cells_cpu.h,
    kWalkFromL3Bytes, kMinLongWalkSteps); inference may walk where training's forward cuts.
    Every way sums each element the same way, and so does either loop order of the kernel's
    products (panels outer where a walk's block reads all of W_hh, rows outer where a step's
    block of units reads a share that fits in half of L2): the bits agree. Where the BLAS takes
    the weight gradients, one too small to cut by rows or columns (H=24) is cut along k, into
    parts of each chunk of steps whose sums are kept over all the chunks (csrc/parallel_gemm.h,
    KPartSums; 56000 rows in chunks of up to 26214, 8 parts each): which thread takes a part
    changes no bit either."""
    rng = np.random.default_rng(5)
    m = LAYERS[kind](I, H, dtype=np.float32, seed=4)
    x = rng.uniform(-1, 1, (T, B, I)).astype(np.float32)
    dy = rng.uniform(-1, 1, (T, B, H)).astype(np.float32)
    results = {}
    for threads in (1, 2, 3):
        fr.set_num_threads(threads)
        y_infer, state_infer = m(x)
        y, state, tape = m.forward(x, training=True)
        dx, dstate, dparams = m.backward(tape, dy)
        arrays = [y_infer, *np.atleast_1d(state_infer), y, *np.atleast_1d(state), dx,
                  *np.atleast_1d(dstate), *dparams.values()]
        results[threads] = [np.ascontiguousarray(a).tobytes() for a in arrays]
        n_state = len(np.atleast_1d(state))
        assert results[threads][:1 + n_state] == results[threads][1 + n_state:2 + 2 * n_state], \
            f"inference and training differ at {threads} threads"
    assert results[2] == results[1], "2 threads"
    assert results[3] == results[1], "3 threads"


# Sizes whose walks cut every step into blocks of units (LSTM, GRU and RNN): a batch of one at
# H=512, and three rows of random lengths at H=320.
STEPPED_SHAPES = {"T16B1": (16, 1, 8, 512), "T9B3": (9, 3, 8, 320)}


def stepped_results(kind, shape, bidirectional):
    """The bytes of every output and gradient of inference and of a training step of a layer of
    `kind` over a walk of `shape` (T, B, I, H), with random lengths."""
    T, B, I, H = shape
    rng = np.random.default_rng(6)
    m = LAYERS[kind](I, H, bidirectional=bidirectional, dtype=np.float32, seed=4)
    x = rng.uniform(-1, 1, (T, B, I)).astype(np.float32)
    dy = rng.uniform(-1, 1, (T, B, H * (1 + bidirectional))).astype(np.float32)
    lengths = rng.integers(1, T + 1, B)
    y, state, tape = m.forward(x, None, lengths, training=True)
    dx, dstate, dparams = m.backward(tape, dy)
    arrays = [m(x, None, lengths)[0], y, *np.atleast_1d(state), dx, *np.atleast_1d(dstate),
              *dparams.values()]
    return [np.ascontiguousarray(a).tobytes() for a in arrays]


@pytest.mark.parametrize("shape", STEPPED_SHAPES.values(), ids=STEPPED_SHAPES.keys())
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_steps_in_one_job_give_the_same_bits_on_any_threads(kind, shape, threads_restored):
    """A walk whose steps are cut into blocks of units runs every step's blocks in one job of
    the pool (csrc/thread_pool.h's parallel_steps): whichever thread takes a block, the bits are
    those of one thread, with rows that end early, and in either direction of a bidirectional
    layer too (whose directions run on a thread each, each step whole)."""
    for bidirectional in (False, True):
        results = {}
        for threads in (1, 2, 3):
            fr.set_num_threads(threads)
            results[threads] = stepped_results(kind, shape, bidirectional)
        assert results[2] == results[1], f"2 threads, bidirectional={bidirectional}"
        assert results[3] == results[1], f"3 threads, bidirectional={bidirectional}"


@pytest.fixture
def set_flush_denormal():
    """torch's switch for flush-to-zero and denormals-are-zero on the calling thread; off again
    after the test."""
    torch = pytest.importorskip("torch", reason="torch.set_flush_denormal sets the test's mode")
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU has no flush-to-zero mode")
    yield torch.set_flush_denormal
    torch.set_flush_denormal(False)


def denormals(rng, shape):
    """float32 denormals of either sign, made from their bits: arithmetic in flush-to-zero mode
    would make zeros."""
    bits = rng.integers(1, 1 << 23, shape, dtype=np.uint32) | (rng.integers(0, 2, shape,
                                                                          dtype=np.uint32) << 31)
    return bits.view(np.float32)


# Rows cut between the threads; a bidirectional layer's directions run side by side (as in
# test_pair.py), the second on a worker.
@pytest.mark.parametrize("T, B, I, H, bidirectional", [(8, 64, 32, 64, False),
                                                       (40, 5, 24, 32, True)])
@pytest.mark.parametrize("threads_of", ["fusedrnn", "torch"])
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_every_thread_computes_in_the_callers_floating_point_mode(kind, T, B, I, H, bidirectional,
                                                                  threads_of, set_flush_denormal,
                                                                  threads_restored):
    """Inputs so small that every product and state is denormal, flushed to zero or not as the
    calling thread says. The pool's workers start in the mode of the call that starts them; they
    must take each call's, or the rows they compute differ from those of a one-thread call."""
    m = LAYERS[kind](I, H, bias=False, bidirectional=bidirectional, dtype=np.float32, seed=3)
    x = denormals(np.random.default_rng(4), (T, B, I))
    dy = denormals(np.random.default_rng(5), (T, B, m.num_directions * H))

    def outputs():
        y, state_n, tape = m.forward(x, None, training=True)
        dx, _, dparams = m.backward(tape, dy, state_n)
        return [y, dx, *dparams.values()]

    fr.set_num_threads(1)
    one_thread = {}
    for flush in (True, False):
        set_flush_denormal(flush)
        one_thread[flush] = outputs()
    assert any(not np.array_equal(a, b) for a, b in zip(one_thread[True], one_thread[False])), \
        "the inputs make no denormals: the test cannot see the mode"
    fr.set_num_threads(2)
    import fusedrnn.torch as frt
    try:
        # On torch's OpenMP threads (fusedrnn.torch), as many as torch runs its ops on.
        if threads_of == "torch" and not frt.share_threads():
            pytest.skip("torch has no libgomp here to share")
        for flush in (True, False, True):  # the workers start flushing, must stop, then flush
            set_flush_denormal(flush)
            for a, b in zip(outputs(), one_thread[flush]):
                np.testing.assert_array_equal(a, b, err_msg=f"flush {flush}")
    finally:
        if threads_of == "torch":
            frt.share_threads(False)
