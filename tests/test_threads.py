"""Threads: concurrent forward/backward calls give bitwise the results of serial calls, and the
kernels run without the GIL.

The GIL checks avoid timing thresholds, which a shared machine makes flaky: two kernel calls
started together in two threads must overlap in time (with the GIL held they cannot: the second
thread could not even enter its call), and a Python thread must keep running while a kernel
runs. How much faster two threads are than one is measured by benchmarks/threads.py, not here."""

import contextlib
import os
import threading
import time

import numpy as np
import pytest
from conftest import KERNEL_CELLS, LAYERS, layer_arrays, random_state

import fusedrnn as fr
from fusedrnn import ops
from fusedrnn._backend import _core

pytestmark = pytest.mark.skipif(_core is None, reason="the compiled extension is not built")

THREADS = 8
T, B, I, H = 6, 4, 5, 7


def step(model, x, state, dy):
    """One training step's results, as a flat list of arrays."""
    y, state_n, tape = model.forward(x, state, training=True)
    dx, dstate, dparams = model.backward(tape, dy, state_n)
    leaves = lambda s: list(s) if isinstance(s, tuple) else [s]  # noqa: E731
    return [y, dx, *leaves(state_n), *leaves(dstate), *dparams.values()]


def run_threads(work, n):
    """Runs work(i) for i < n in n threads started together; returns the results by i."""
    results = [None] * n
    errors = []
    barrier = threading.Barrier(n)

    def target(i):
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shared", [True, False], ids=["shared_model", "separate_models"])
@pytest.mark.parametrize("kind", LAYERS)
def test_concurrent_steps_equal_serial_steps(kind, shared, dtype):
    # No dropout: a model's dropout masks come from its one generator, so threads sharing a model
    # would draw them in whatever order they happen to run (see README, "Threads").
    def make(seed):
        return LAYERS[kind](I, H, num_layers=2, bidirectional=True, dtype=dtype, seed=seed)

    models = [make(0)] * THREADS if shared else [make(i) for i in range(THREADS)]
    rng = np.random.default_rng(1)
    inputs = []
    for i in range(THREADS):
        x = rng.uniform(-1, 1, (T, B, I)).astype(dtype)
        dy = rng.uniform(-1, 1, (T, B, 2 * H)).astype(dtype)
        inputs.append((x, random_state(rng, models[i], B), dy))
    repeats = 5
    serial = [step(models[i], *inputs[i]) for i in range(THREADS)]
    concurrent = run_threads(lambda i: [step(models[i], *inputs[i]) for _ in range(repeats)],
                             THREADS)
    for i in range(THREADS):
        for r in range(repeats):
            for got, want in zip(concurrent[i][r], serial[i]):
                assert got.tobytes() == want.tobytes(), (i, r)


@contextlib.contextmanager
def kernel_threads(n):
    """The kernels on n threads, then on as many as before."""
    before = _core.build_info()["threads"]
    fr.set_num_threads(n)
    try:
        yield
    finally:
        fr.set_num_threads(before)


@pytest.fixture
def one_kernel_thread():
    """One kernel thread per call: two callers then need two cores, not four."""
    with kernel_threads(1):
        yield


def long_kernel_call():
    """Arguments of an ops.forward that runs for about 0.1 s in C++ on one thread (LSTM, T=400,
    B=64, H=256: 95 ms here). At T=200, B=16, H=128 it took 3.4 ms, and under load the other
    thread was not scheduled at all in that time."""
    rng = np.random.default_rng(2)
    G, Tl, Bl, Il, Hl = 4, 400, 64, 128, 256
    return dict(cell="lstm", x=rng.uniform(-1, 1, (Tl, Bl, Il)).astype(np.float32),
                w_ih=rng.uniform(-0.1, 0.1, (G * Hl, Il)).astype(np.float32),
                w_hh=rng.uniform(-0.1, 0.1, (G * Hl, Hl)).astype(np.float32))


def test_kernel_calls_in_two_threads_overlap(one_kernel_thread):
    args = long_kernel_call()
    ops.forward(**args)  # warm-up: BLAS buffers, page faults

    def timed(_):
        start = time.perf_counter()
        ops.forward(**args)
        return start, time.perf_counter()

    (s0, e0), (s1, e1) = run_threads(timed, 2)
    overlap = min(e0, e1) - max(s0, s1)
    shorter = min(e0 - s0, e1 - s1)
    # Held for the whole call, the GIL would keep the intervals apart (overlap <= 0).
    assert overlap > 0.25 * shorter, (overlap, shorter)


def test_python_runs_while_a_kernel_runs(one_kernel_thread):
    args = long_kernel_call()
    ops.forward(**args)
    done = threading.Event()
    span = []

    def kernel():
        start = time.perf_counter()
        ops.forward(**args)
        span.extend((start, time.perf_counter()))
        done.set()

    worker = threading.Thread(target=kernel)
    ticks = []
    worker.start()
    while not done.is_set():
        ticks.append(time.perf_counter())
    worker.join()
    start, end = span
    during = [t for t in ticks if start <= t <= end]
    gaps = np.diff([start, *during, end])
    # With the GIL held by the kernel this thread could not tick at all during the call: one gap
    # as long as the call. Released, the longest gap is a scheduling hiccup.
    assert len(during) > 10 and gaps.max() < 0.5 * (end - start), (len(during), gaps.max(),
                                                                     end - start)


def test_concurrent_functional_ops_equal_serial():
    """The C++ entry points directly, all five kernels, forward and backward, 8 threads."""
    rng = np.random.default_rng(3)
    jobs = []
    for i in range(THREADS):
        kcell = list(KERNEL_CELLS)[i % len(KERNEL_CELLS)]
        cell, reset_after = KERNEL_CELLS[kcell]
        arrays = layer_arrays(rng, kcell, np.float32, 20, 8, 16, 32)
        jobs.append(dict(cell=cell, reset_after=reset_after, **arrays,
                         lengths=rng.integers(1, 21, 8), reverse=bool(i % 2), training=True))

    def run(i):
        out = []
        for _ in range(10):
            res = ops.forward(**jobs[i])
            grads = ops.backward(res.tape, np.ones_like(res.y))
            out.append([a for a in (*res[:3], *grads) if a is not None])
        return out

    serial = [run(i)[0] for i in range(THREADS)]
    for i, results in enumerate(run_threads(run, THREADS)):
        for r in results:
            for got, want in zip(r, serial[i]):
                assert got.tobytes() == want.tobytes(), i


def test_get_num_threads_returns_what_set_num_threads_set():
    before = fr.get_num_threads()
    try:
        for threads in (1, 3, before):
            fr.set_num_threads(threads)
            assert fr.get_num_threads() == threads
    finally:
        fr.set_num_threads(before)


# --- torch's OpenMP threads in place of fusedrnn's own (fusedrnn.torch.share_threads) --------

@pytest.fixture
def two_threads():
    with kernel_threads(2):
        yield


@pytest.fixture
def torch_threads():
    """fusedrnn's parallel loops on torch's OpenMP threads, for the test; back after it."""
    frt = pytest.importorskip("fusedrnn.torch", reason="sharing torch's threads needs torch")
    if not frt.share_threads():
        pytest.skip("torch has no libgomp here to share")
    assert _core.build_info()["openmp_threads"]
    yield frt
    frt.share_threads(False)
    assert not _core.build_info()["openmp_threads"]


def test_torch_threads_give_the_same_bits(torch_threads):
    """The determinism workload (every layer kind, two bidirectional layers, dropout, lengths)
    on 1, 2 and 3 threads of torch's, against fusedrnn's own threads."""
    import test_determinism
    before = _core.build_info()["threads"]
    try:
        shared = []
        for threads in (1, 2, 3):
            fr.set_num_threads(threads)
            shared.append(test_determinism.digest())
        torch_threads.share_threads(False)
        assert shared == [test_determinism.digest()] * 3
    finally:
        fr.set_num_threads(before)


def test_torch_threads_give_the_same_bits_in_steps_in_one_job(torch_threads):
    """Walks whose steps' blocks run in one job (csrc/thread_pool.h's parallel_steps), on 1, 2
    and 3 of torch's threads, against fusedrnn's own threads: a job's steps then run in one
    OpenMP region."""
    import test_determinism
    before = _core.build_info()["threads"]
    cases = [(kind, shape) for kind in ("lstm", "gru", "rnn_tanh")
             for shape in test_determinism.STEPPED_SHAPES.values()]
    try:
        shared = []
        for threads in (1, 2, 3):
            fr.set_num_threads(threads)
            shared.append([test_determinism.stepped_results(kind, shape, False)
                           for kind, shape in cases])
        torch_threads.share_threads(False)
        own = [test_determinism.stepped_results(kind, shape, False) for kind, shape in cases]
        assert shared == [own] * 3
    finally:
        fr.set_num_threads(before)


def pool_worker_threads():
    """The process's threads that fusedrnn's pool started (it names them)."""
    def name(task):
        try:
            with open(f"/proc/self/task/{task}/comm") as f:
                return f.read().strip()
        except FileNotFoundError:  # a thread that ended meanwhile
            return None
    return [t for t in os.listdir("/proc/self/task") if name(t) == "fusedrnn-pool"]


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux's /proc")
def test_torch_threads_replace_the_pools_own(torch_threads, two_threads):
    """While torch's threads are shared, the pool's own workers are stopped and none starts."""
    m = LAYERS["lstm"](64, 128, seed=0)
    x = np.random.default_rng(0).uniform(-1, 1, (20, 64, 64)).astype(np.float32)
    step(m, x, None, np.ones((20, 64, 128), np.float32))
    assert pool_worker_threads() == []
    torch_threads.share_threads(False)
    step(m, x, None, np.ones((20, 64, 128), np.float32))
    assert len(pool_worker_threads()) == 1


def test_concurrent_steps_on_torch_threads_equal_serial_steps(torch_threads):
    """Callers from several Python threads: one runs on torch's threads, the others on their
    own (the pool serves one job at a time)."""
    rng = np.random.default_rng(3)
    models = [LAYERS["lstm"](I, H, bidirectional=True, num_layers=2, seed=i) for i in range(4)]
    xs = [rng.uniform(-1, 1, (40, 16, I)).astype(np.float32) for _ in models]
    dys = [rng.uniform(-1, 1, (40, 16, 2 * H)).astype(np.float32) for _ in models]
    serial = [step(m, x, None, dy) for m, x, dy in zip(models, xs, dys)]
    for _ in range(3):
        concurrent = run_threads(lambda i: step(models[i], xs[i], None, dys[i]), len(models))
        for got, want in zip(concurrent, serial):
            for a, b in zip(got, want):
                np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("path, expected", [(3, TypeError), (None, TypeError)])
def test_share_openmp_threads_refuses_a_path_that_is_no_str(path, expected):
    with pytest.raises(expected, match="library_path: expected a str"):
        _core.share_openmp_threads(path)


def test_share_openmp_threads_of_an_unloaded_library_changes_nothing():
    assert not _core.share_openmp_threads("/nonexistent/libgomp.so.1")
    assert not _core.build_info()["openmp_threads"]
