"""_core.forward_pair and backward_pair (a bidirectional layer's two directions in one call): the
results of the two calls made one after the other, bit for bit, whether the kernels run them
side by side (small weights and batches: csrc/pair_cpu.cc) or not, on one thread or two."""

import threading

import numpy as np
import pytest

import fusedrnn as fr
from fusedrnn._backend import _core

pytestmark = pytest.mark.skipif(_core is None, reason="the compiled extension is not built")

CELLS = {0: 4, 1: 3, 2: 3, 3: 1, 4: 1}  # _core.CELLS index: gates
T = 40
# (B, I, H) at T steps: side by side on two threads (a batch of fewer than two tiles' rows,
# weights in half of L2, a step block's flops or more, for every cell), and one after the other
# (B=16 at H=128, which the threads walk in row blocks).
SIZES = [(1, 32, 64), (5, 24, 32), (16, 128, 128)]


@pytest.fixture(params=[1, 2], ids=["1 thread", "2 threads"])
def threads(request):
    before = _core.build_info()["threads"]
    fr.set_num_threads(request.param)
    yield request.param
    fr.set_num_threads(before)


def calls(rng, cell, dtype, B, I, H, T, with_lengths):
    """_core.forward's arguments but y for the two directions of a layer, each with its own
    weights and state."""
    G = CELLS[cell]
    x = rng.uniform(-1, 1, (T, B, I)).astype(dtype)
    lengths = rng.integers(1, T + 1, B).astype(np.int64) if with_lengths else None

    def direction(reverse):
        a = lambda *shape: rng.uniform(-0.5, 0.5, shape).astype(dtype)
        c0 = a(B, H) if cell == 0 else None
        return (cell, x, a(B, H), c0, a(G * H, I), a(G * H, H), a(G * H), a(G * H), lengths,
                reverse, True)
    return direction(False), direction(True)


@pytest.mark.parametrize("with_lengths", [False, True], ids=["", "lengths"])
@pytest.mark.parametrize("B, I, H", SIZES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", sorted(CELLS), ids=lambda c: _core.CELLS[c])
def test_pair_gives_the_bits_of_two_calls(cell, dtype, B, I, H, with_lengths, threads):
    """With lengths, the reverse direction's backward also goes without dx (need_dx False)."""
    rng = np.random.default_rng(cell * 100 + B)
    fwd, rev = calls(rng, cell, dtype, B, I, H, T, with_lengths)
    y_both = np.empty((T, B, 2 * H), dtype)
    pair = _core.forward_pair((*fwd, y_both[..., :H]), (*rev, y_both[..., H:]))
    alone = [_core.forward(*fwd), _core.forward(*rev)]
    np.testing.assert_array_equal(y_both, np.concatenate([alone[0][0], alone[1][0]], axis=2))
    for got, want in zip(pair, alone):
        for g, w in zip(got[1:3], want[1:3]):  # h_n, c_n
            np.testing.assert_array_equal(g, w)

    dy = rng.uniform(-1, 1, (T, B, 2 * H)).astype(dtype)
    dh_n = [rng.uniform(-1, 1, (B, H)).astype(dtype) for _ in range(2)]
    dc_n = [rng.uniform(-1, 1, (B, H)).astype(dtype) if cell == 0 else None for _ in range(2)]
    need_dx = (True, not with_lengths)
    grads = _core.backward_pair(*[(pair[d][3], dy[..., d * H:(d + 1) * H], dh_n[d], dc_n[d],
                                   need_dx[d]) for d in range(2)])
    for d in range(2):
        want = _core.backward(alone[d][3], np.ascontiguousarray(dy[..., d * H:(d + 1) * H]),
                              dh_n[d], dc_n[d])
        if not need_dx[d]:
            assert grads[d][0] is None
            want = (None, *want[1:])
        for g, w in zip(grads[d], want):
            if w is None:
                assert g is None
            else:
                np.testing.assert_array_equal(g, w)


def test_pair_after_release_memory_gives_the_same_bits(threads):
    """release_memory() frees the scratch that the second call of a pair keeps (csrc/
    workspace.h's side block) as well as the caller's; the next pair allocates it again."""
    rng = np.random.default_rng(7)
    fwd, rev = calls(rng, 0, np.float32, 2, 16, 32, 30, True)
    first = _core.forward_pair((*fwd, None), (*rev, None))
    fr.release_memory()
    again = _core.forward_pair((*fwd, None), (*rev, None))
    for got, want in zip(again, first):
        for g, w in zip(got[:3], want[:3]):
            np.testing.assert_array_equal(g, w)


def test_pair_of_unlike_calls_gives_the_bits_of_each(threads):
    """The two calls need not be a layer's directions: another cell, other sizes, each y its own
    array."""
    rng = np.random.default_rng(3)
    fwd = calls(rng, 0, np.float32, 3, 32, 48, 40, False)[0]
    rev = calls(rng, 3, np.float32, 2, 24, 40, 30, True)[1]
    ys = [np.empty((40, 3, 48), np.float32), np.empty((30, 2, 40), np.float32)]
    pair = _core.forward_pair((*fwd, ys[0]), (*rev, ys[1]))
    for got, call, y in zip(pair, (fwd, rev), ys):
        want = _core.forward(*call)
        assert got[0] is y
        for g, w in zip(got[:3], want[:3]):
            np.testing.assert_array_equal(g, w)


def test_pairs_from_two_threads_at_once_give_the_bits_of_their_calls(threads):
    """While one thread's pair holds the kernels' threads, another's runs on its own thread: each
    call keeps to its own scratch block."""
    rng = np.random.default_rng(11)
    pairs = [calls(rng, cell, np.float32, 3, 32, 64, T, True) for cell in (0, 1)]
    want = [[_core.forward(*call) for call in pair] for pair in pairs]
    failures = []

    def run(p):
        for _ in range(20):
            got = _core.forward_pair(*[(*call, None) for call in pairs[p]])
            for g, w in zip(got, want[p]):
                if not all(np.array_equal(a, b) for a, b in zip(g[:3], w[:3]) if b is not None):
                    failures.append(p)
    workers = [threading.Thread(target=run, args=(p,)) for p in (0, 1)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not failures
