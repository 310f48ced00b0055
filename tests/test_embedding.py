"""What the framework bindings stand on, without any framework: a tape carried as arrays
(ops.tape_arrays / ops.tape_from_arrays / ops.tape_shapes) and DLPack arrays taken without a
copy."""

import numpy as np
import pytest
from conftest import KERNEL_CELLS, LAYERS, layer_arrays

import fusedrnn
from fusedrnn import ops
from fusedrnn._checks import as_array

needs_kernels = pytest.mark.skipif("cpu" not in fusedrnn.backends(),
                                   reason=f"needs the compiled kernels ({fusedrnn.CORE_ERROR})")
T, B, I, H = 5, 3, 4, 6
LENGTHS = np.array([2, T, 4])


class DLPackOnly:
    """An array that offers only the DLPack protocol: no __array__, no buffer interface."""

    def __init__(self, array):
        self._array = array

    def __dlpack__(self, **kwargs):
        return self._array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._array.__dlpack_device__()


def forward_args(kcell, dtype=np.float64, seed=0):
    arrays = layer_arrays(np.random.default_rng(seed), kcell, dtype, T, B, I, H)
    return [arrays[k] for k in ("x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0")]


@needs_kernels
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("kcell", KERNEL_CELLS)
def test_tape_rebuilt_from_copies_of_its_arrays_gives_the_same_gradients(kcell, reverse):
    cell, reset_after = KERNEL_CELLS[kcell]
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = forward_args(kcell)
    res = ops.forward(cell, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths=LENGTHS, reverse=reverse,
                      training=True, reset_after=reset_after)
    arrays = ops.tape_arrays(res.tape)
    shapes = ops.tape_shapes(cell, T, B, H, reset_after)
    assert [None if a is None else a.shape for a in arrays] == list(shapes)
    copies = [None if a is None else a.copy() for a in arrays]
    rebuilt = ops.tape_from_arrays(cell, x, w_ih, w_hh, b_ih, b_hh, *copies, lengths=LENGTHS,
                                   reverse=reverse, reset_after=reset_after)
    dy = np.random.default_rng(1).uniform(-1, 1, res.y.shape)
    for a, b in zip(ops.backward(res.tape, dy, h0), ops.backward(rebuilt, dy, h0)):
        assert (a is None and b is None) or np.array_equal(a, b)


@needs_kernels
def test_tape_arrays_hold_the_states_in_their_slots():
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = forward_args("lstm")
    res = ops.forward("lstm", x, w_ih, w_hh, b_ih, b_hh, h0, c0, training=True)
    h_states, c_states, _ = ops.tape_arrays(res.tape)
    np.testing.assert_array_equal(h_states[0], h0)  # slot 0: the initial state
    np.testing.assert_array_equal(c_states[0], c0)
    np.testing.assert_array_equal(h_states[T], res.h_n)  # slot T: the final one
    np.testing.assert_array_equal(c_states[T], res.c_n)
    np.testing.assert_array_equal(h_states[1:], res.y)


@needs_kernels
@pytest.mark.parametrize("cell, change, error, match", [
    ("lstm", dict(h_states=np.zeros((T, B, H))), ValueError,
     r"h_states: expected shape \(6, 3, 6\)"),
    ("lstm", dict(c_states=None), TypeError, "c_states: expected a numpy.ndarray"),
    ("gru", dict(c_states=np.zeros((T + 1, B, H))), ValueError, "c_states: expected None"),
    ("rnn_tanh", dict(gates=np.zeros((T, B, 4 * H))), ValueError, "gates: expected None"),
    ("lstm", dict(gates=np.zeros((T, B, 4 * H), np.float32)), TypeError,
     "gates: expected dtype float64"),
])
def test_tape_from_bad_arrays_names_the_array(cell, change, error, match):
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = forward_args("lstm" if cell == "lstm" else cell)
    res = ops.forward(cell, x, w_ih, w_hh, b_ih, b_hh, h0, c0, training=True)
    arrays = dict(zip(("h_states", "c_states", "gates"), ops.tape_arrays(res.tape)))
    arrays.update(change)
    with pytest.raises(error, match=match):
        ops.tape_from_arrays(cell, x, w_ih, w_hh, b_ih, b_hh, **arrays)


@needs_kernels
def test_tape_from_host_arrays_refuses_tf32():
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = forward_args("lstm")
    res = ops.forward("lstm", x, w_ih, w_hh, b_ih, b_hh, h0, c0, training=True)
    with pytest.raises(ValueError, match="tf32: expected False for a tape on the CPU"):
        ops.tape_from_arrays("lstm", x, w_ih, w_hh, b_ih, b_hh, *ops.tape_arrays(res.tape),
                             tf32=True)


def test_tape_arrays_refuses_the_numpy_backend_tape():
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = forward_args("gru")
    tape = ops.forward("gru", x, w_ih, w_hh, b_ih, b_hh, h0, training=True, backend="numpy").tape
    with pytest.raises(ValueError, match="tape: expected a tape of the compiled kernels"):
        ops.tape_arrays(tape)


def test_dlpack_arrays_are_taken_without_a_copy():
    x = np.random.default_rng(0).standard_normal((T, B, I))
    assert np.shares_memory(as_array(DLPackOnly(x), "x"), x)


@pytest.mark.parametrize("kcell", ["lstm", "gru_reset_before"])
def test_ops_and_layers_accept_dlpack_arrays(kcell):
    cell, reset_after = KERNEL_CELLS[kcell]
    args = forward_args(kcell)
    expected = ops.forward(cell, *args, reset_after=reset_after)
    got = ops.forward(cell, *(None if a is None else DLPackOnly(a) for a in args),
                      reset_after=reset_after)
    for a, b in zip(got[:3], expected[:3]):
        assert (a is None and b is None) or np.array_equal(a, b)
    layer = LAYERS[kcell](I, H, dtype="float64", seed=0)
    np.testing.assert_array_equal(layer(DLPackOnly(args[0]))[0], layer(args[0])[0])
