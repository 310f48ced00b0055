"""Outputs of 128 KB or more (y, dx, weight gradients, a bidirectional layer's joined y) take the
memory of dropped outputs (rnn.h's OutputBuffer): the block of a dropped y serves the next y or
dx, the kernels write every value of it, threads pass blocks among them safely, every output of a
deep bidirectional step finds one, and release_memory() lets it go."""

import threading

import numpy as np
import pytest

import fusedrnn as fr
from fusedrnn import ops
from fusedrnn._backend import _core

pytestmark = pytest.mark.skipif(_core is None, reason="the compiled extension is not built")

# float64, T·B·H·8 = 128 KB: the smallest output that is kept.
T, B, H = 8, 16, 128
KEPT_BYTES = 128 << 10
# A kept output's block holds it and the room to start it on a cache line (OutputBuffer).
LINE_ROOM = 63


def arrays(seed):
    rng = np.random.default_rng(seed)
    u = lambda *shape: rng.uniform(-0.5, 0.5, shape)  # noqa: E731
    return dict(x=u(T, B, H), w_ih=u(4 * H, H) * 0.1, w_hh=u(4 * H, H) * 0.1, b_ih=u(4 * H),
                b_hh=u(4 * H)), u(T, B, H)


def address(a):
    return a.__array_interface__["data"][0]


def training_step(a, dy):
    res = ops.forward("lstm", **a, training=True)
    return res.y, ops.backward(res.tape, dy).dx


def test_a_dropped_outputs_memory_serves_the_next_outputs():
    fr.release_memory()
    first, dy_first = arrays(0)
    y, dx = training_step(first, dy_first)
    assert y.nbytes == dx.nbytes == KEPT_BYTES
    blocks = {address(y), address(dx)}
    del y, dx

    # Other inputs into the kept blocks: every value must be this call's, not the last one's.
    second, dy_second = arrays(1)
    y, dx = training_step(second, dy_second)
    assert {address(y), address(dx)} == blocks
    y_kept, dx_kept = y.copy(), dx.copy()
    del y, dx

    fr.release_memory()  # the same step again in memory fresh from the system
    held = [np.ones(KEPT_BYTES // 8) for _ in range(2)]  # (so malloc cannot hand the blocks back)
    y, dx = training_step(second, dy_second)
    np.testing.assert_array_equal(y, y_kept)
    np.testing.assert_array_equal(dx, dx_kept)
    y_into = np.zeros_like(y)
    ops.run_forward("lstm", "cpu", second["x"], second["w_ih"], second["w_hh"], second["b_ih"],
                    second["b_hh"], None, None, None, False, False, y_into)
    np.testing.assert_array_equal(y_into, y_kept)
    del held


def weight_gradients(seed):
    """dw_ih and dw_hh of an LSTM step at float64 H=384: 4.7 MB each, kept when dropped."""
    rng = np.random.default_rng(seed)
    u = lambda *shape: rng.uniform(-0.5, 0.5, shape)  # noqa: E731
    h = 384
    a = dict(x=u(2, 3, h), w_ih=u(4 * h, h) * 0.1, w_hh=u(4 * h, h) * 0.1, b_ih=u(4 * h),
             b_hh=u(4 * h))
    g = ops.backward(ops.forward("lstm", **a, training=True).tape, u(2, 3, h))
    return g.dw_ih, g.dw_hh


def test_dropped_weight_gradients_serve_the_next_ones_with_their_own_values():
    """Weight gradients are outputs too: fresh pages for them took a tenth of LSTM training
    T=20 B=1 H=1024."""
    fr.release_memory()
    dw_ih, dw_hh = weight_gradients(0)
    assert dw_ih.nbytes == dw_hh.nbytes > KEPT_BYTES
    assert dw_ih.base is not None and dw_hh.base is not None  # held by an OutputBuffer
    blocks = {address(dw_ih), address(dw_hh)}
    del dw_ih, dw_hh

    dw_ih, dw_hh = weight_gradients(1)
    assert {address(dw_ih), address(dw_hh)} == blocks
    kept = dw_ih.copy(), dw_hh.copy()
    del dw_ih, dw_hh

    fr.release_memory()
    held = [np.ones(KEPT_BYTES // 8 * 2) for _ in range(2)]
    for got, want in zip(weight_gradients(1), kept):
        np.testing.assert_array_equal(got, want)
    del held


def test_threads_dropping_and_taking_outputs_get_their_own_values():
    """Eight threads each run training steps, dropping their outputs as they go (the blocks pass
    from thread to thread through the kept memory): every step's y and dx are its own."""
    inputs = [arrays(seed) for seed in range(4)]
    expected = []
    for a, dy in inputs:
        y, dx = training_step(a, dy)
        expected.append((y.copy(), dx.copy()))
    barrier, errors = threading.Barrier(8), []

    def work(i):
        try:
            barrier.wait()
            for step in range(3):
                a, dy = inputs[(i + step) % 4]
                y, dx = training_step(a, dy)
                y_expected, dx_expected = expected[(i + step) % 4]
                np.testing.assert_array_equal(y, y_expected)
                np.testing.assert_array_equal(dx, dx_expected)
        except BaseException as exc:  # noqa: BLE001 (reported below, in the test's thread)
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_small_outputs_are_plain_arrays():
    a, _ = arrays(0)
    a = {k: v[:, :B // 2] if k == "x" else v for k, v in a.items()}  # y of 64 KB
    y = ops.forward("lstm", **a).y
    assert y.nbytes < KEPT_BYTES and y.base is None


def test_a_bidirectional_layers_output_keeps_the_layers_values():
    layer = fr.LSTM(H, H, bidirectional=True, dtype="float64", seed=0)
    x, _ = arrays(2)
    y_first = layer(x["x"])[0].copy()
    x_other, _ = arrays(3)
    layer(x_other["x"])  # dropped at once: the next call's output takes its memory
    y = layer(x["x"])[0]
    assert y.nbytes == 2 * KEPT_BYTES
    np.testing.assert_array_equal(y, y_first)


def test_every_output_of_a_deep_bidirectional_step_takes_a_kept_block():
    """A 2-layer bidirectional training step drops 14 outputs of 128 KB or more: 2 joined y's, and
    dx, dW_ih and dW_hh of each layer and direction. Where fewer are kept, a later step misses one
    and frees all the others: every output is then fresh memory, faulted in page by page."""
    layer = fr.LSTM(H, H, num_layers=2, bidirectional=True, dtype="float64", seed=0)
    x, dy = arrays(4)[0]["x"], np.ones((T, B, 2 * H))

    def step():  # everything it made is dropped when it returns
        _, _, tape = layer.forward(x, training=True)
        layer.backward(tape, dy)

    fr.release_memory()
    step()
    kept = _core.kept_memory()["outputs"]  # (blocks, bytes, blocks taken fresh so far)
    for _ in range(3):
        step()
        assert _core.kept_memory()["outputs"] == kept  # the same blocks, none fresh


def test_at_most_32_dropped_outputs_are_kept_8_of_them_large():
    """Room for a deep model's many small outputs, but no more large ones than before those came:
    a program dropping a list of large outputs keeps 8 of them."""
    large_bytes = 4 << 20
    fr.release_memory()
    small = [_core.empty((KEPT_BYTES // 4,), np.float32) for _ in range(30)]
    large = [_core.empty((large_bytes // 4,), np.float32) for _ in range(10)]
    del small  # then the large ones, which take the least recently dropped small ones' places
    del large
    blocks, kept_bytes, _ = _core.kept_memory()["outputs"]
    assert (blocks, kept_bytes) == (32, 8 * large_bytes + 24 * KEPT_BYTES + 32 * LINE_ROOM)


def test_kept_outputs_start_on_a_cache_line():
    """Whatever malloc's alignment, so that a large weight gradient's rows do too, whose product
    writes them by non-temporal stores (chunk_product.h's streams_c)."""
    fr.release_memory()
    outputs = [_core.empty((KEPT_BYTES // 4 + n,), np.float32) for n in range(8)]
    assert [address(a) % 64 for a in outputs] == [0] * 8


def test_empty_names_bad_arguments():
    with pytest.raises(ValueError, match="shape"):
        _core.empty((-1, 2), np.float32)
    with pytest.raises(ValueError, match="shape"):
        _core.empty((2**40, 2**40), np.float32)
    with pytest.raises(TypeError, match="dtype"):
        _core.empty((2,), np.int32)
