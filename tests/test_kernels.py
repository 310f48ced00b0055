"""The C++ kernels (backend "cpu") against the NumPy reference (backend "numpy"): the functional
ops for one layer and direction, then the stacked layers built on them."""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import (KERNEL_CELLS, LAYERS, assert_same_rows, clear_relu_kinks, layer_arrays,
                      leaves, random_state, rel_err, run_layer)

import fusedrnn as fr
from fusedrnn import ops
from fusedrnn._backend import _core

# float64: both sides do the same arithmetic and only the summation order differs (BLAS versus
# NumPy), so they agree to a few ulps (~1e-16) times the accumulation depth.
# float32: ~1e-7 rounding per operation and ~1e2 operations accumulated through the time steps
# and the weight-gradient sums.
RTOL = {np.float32: 1e-5, np.float64: 1e-10}
DTYPES = [np.float32, np.float64]

T, B, I, H = 7, 5, 6, 8
LENGTHS = {
    "no_lengths": None,
    "mixed": np.array([T, 1, 4, T - 2, 3]),  # a full-length row and a length-1 row
    "all_short": np.array([3, 1, T - 1, 2, 5]),  # no row reaches T
}


def output_grads(rng, kcell, dtype, which):
    """dy, dh_n, dc_n for backward: `which` is "y" (dy only), "final" (dh_n, dc_n) or "both"."""
    def uniform(shape, wanted):
        return rng.uniform(-1, 1, shape).astype(dtype) if wanted else None

    final = which in ("final", "both")
    return dict(dy=uniform((T, B, H), which in ("y", "both")), dh_n=uniform((B, H), final),
                dc_n=uniform((B, H), final and kcell == "lstm"))


def run_op(backend, kcell, arrays, lengths=None, reverse=False, training=True):
    cell, reset_after = KERNEL_CELLS[kcell]
    return ops.forward(cell, **arrays, lengths=lengths, reverse=reverse, training=training,
                       reset_after=reset_after, backend=backend)


def forward_backward(backend, kcell, arrays, grads, lengths=None, reverse=False):
    """Every output of forward and backward by name: y, h_n, c_n, dx, dh0, ..., db_hh."""
    y, h_n, c_n, tape = run_op(backend, kcell, arrays, lengths, reverse)
    return dict(y=y, h_n=h_n, c_n=c_n, **ops.backward(tape, **grads)._asdict())


@pytest.mark.parametrize("which_grads", ["y", "final", "both"])
@pytest.mark.parametrize("state", [False, True], ids=["zero_state", "state"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("lengths", LENGTHS.values(), ids=LENGTHS.keys())
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kcell", KERNEL_CELLS)
def test_op_matches_reference(kcell, dtype, reverse, lengths, bias, state, which_grads):
    rng = np.random.default_rng(0)
    arrays = layer_arrays(rng, kcell, dtype, T, B, I, H, bias=bias, state=state)
    grads = output_grads(rng, kcell, dtype, which_grads)
    got = forward_backward("cpu", kcell, arrays, grads, lengths, reverse)
    want = forward_backward("numpy", kcell, arrays, grads, lengths, reverse)
    for name, ref in want.items():
        if ref is None:  # c_n, dc0 of a non-LSTM cell; bias gradients without bias
            assert got[name] is None, name
        else:
            assert got[name].dtype == dtype, name
            assert rel_err(got[name], ref) < RTOL[dtype], name


@pytest.mark.parametrize("shape", [(T, B, I, H), (64, 16, 96, 128), (9, 130, 5, 24)],
                         ids=["small", "chunked", "row_parts"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["", "lengths"])
@pytest.mark.parametrize("backend", ["cpu", "numpy"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kcell", KERNEL_CELLS)
def test_backward_without_dx_gives_the_other_gradients_bit_for_bit(kcell, dtype, backend,
                                                                   with_lengths, shape):
    """need_dx=False: dx is None, and the kernels skip its product without touching the rest."""
    T_, B_, I_, H_ = shape
    rng = np.random.default_rng(1)
    arrays = layer_arrays(rng, kcell, dtype, T_, B_, I_, H_)
    lengths = rng.integers(1, T_ + 1, B_) if with_lengths else None
    tape = run_op(backend, kcell, arrays, lengths).tape
    dy = rng.uniform(-1, 1, (T_, B_, H_)).astype(dtype)
    full = ops.backward(tape, dy)
    without = ops.backward(tape, dy, need_dx=False)
    assert without.dx is None and full.dx is not None
    for name, g in full._asdict().items():
        if name != "dx":
            assert (g is None) == (getattr(without, name) is None), name
            if g is not None:
                np.testing.assert_array_equal(getattr(without, name), g, err_msg=name)


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_layer_backward_without_dx_gives_the_other_gradients_bit_for_bit(kind, bidirectional,
                                                                         backend):
    """A layer's need_dx=False skips the first layer's dx only: the layers above still pass
    theirs down, through the dropout between them."""
    rng = np.random.default_rng(2)
    m = LAYERS[kind](I, H, num_layers=2, bidirectional=bidirectional, dropout=0.3, seed=4,
                     dtype=np.float32, backend=backend)
    x = rng.uniform(-1, 1, (T, B, I)).astype(np.float32)
    y, state_n, tape = m.forward(x, random_state(rng, m, B), LENGTHS["mixed"], training=True)
    dy = rng.uniform(-1, 1, y.shape).astype(np.float32)
    dx, dstate, dparams = m.backward(tape, dy)
    no_dx, dstate_, dparams_ = m.backward(tape, dy, need_dx=False)
    assert no_dx is None and dx is not None
    for a, b in zip(leaves(dstate), leaves(dstate_), strict=True):
        np.testing.assert_array_equal(b, a)
    assert dparams.keys() == dparams_.keys()
    for name in dparams:
        np.testing.assert_array_equal(dparams_[name], dparams[name], err_msg=name)


def check_random_lengths_against_reference(rng, kcell, dtype, shape, reverse=False, **kwargs):
    """The kernels against the reference on random arrays of `shape` (T, B, I, H), random
    lengths, dy and dh_n; returns the kernels' results. kwargs go to layer_arrays."""
    T, B, I, H = shape
    arrays = layer_arrays(rng, kcell, dtype, T, B, I, H, **kwargs)
    lengths = rng.integers(1, T + 1, B)
    grads = dict(dy=rng.uniform(-1, 1, (T, B, H)).astype(dtype),
                 dh_n=rng.uniform(-1, 1, (B, H)).astype(dtype))
    if kcell == "rnn_relu":
        clear_relu_kinks(rng, arrays, lengths, reverse)
    got = forward_backward("cpu", kcell, arrays, grads, lengths, reverse)
    want = forward_backward("numpy", kcell, arrays, grads, lengths, reverse)
    for name, ref in want.items():
        if ref is not None:
            assert rel_err(got[name], ref) < RTOL[dtype], name
    return arrays, lengths, got


# Sizes of 1, sizes that are not multiples of a SIMD width, more rows than hidden units, a
# W_hh too large for a step to split its rows (cells_cpu.h's kRowSplitBytes): it splits units,
# and products too small to cut by rows or columns, which parallel_gemm.h cuts along k: weight
# gradients of H=32 over 704 rows, and a batch of one's input projection over I=8000 (a
# matrix-vector product).
# A batch of one reads W_hh where it lies (forward: with AVX-512 by row_dots, else BLAS's
# matrix-vector product; backward: with AVX2 or AVX-512 by row_axpys, whose last units past a
# whole vector go one by one at H=13, 33, 161), or, with AVX2 or AVX-512 and 32 steps or more,
# runs the packed kernel one row at a time (T40B1, T32B1; an RNN's forward excepted).
# From 16 batch rows (AVX-512), LSTM's, GRU's and RNN's backward lays each chunk's gate
# gradients out by halves of the batch and takes their weight gradients, bias sums and dx half
# by half (sequence_cpu.cc's kRowParts): halves of 65 and 66 rows (T3B131), of 9 and 10 over
# two chunks of 54 and 6 steps (T60B19, H=128, float32), and a call of three chunks (T20B128,
# H=64: 8 steps a chunk).
# A W_hh too large for each thread to read whole cuts each step into blocks of units, and a walk
# of such steps runs all their blocks in one job of the pool (thread_pool.h's parallel_steps),
# each step's blocks once the step before is done, forward and backward (but GRU_RESET_BEFORE's,
# whose steps are two passes): a batch of one at H=512 (LSTM's steps in 4 blocks forward and 2
# backward, where W_hh is read where it lies) and three rows at H=320, whose ended rows' blocks
# carry their state and get zero gate gradients (T12B1, T9B3).
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 1, 2, 3), (5, 3, 4, 1), (4, 2, 9, 13),
                                   (2, 40, 5, 33), (3, 8, 7, 161), (2, 8, 5, 300),
                                   (11, 64, 100, 32), (1, 1, 8000, 63), (40, 1, 5, 33),
                                   (32, 1, 3, 161), (3, 131, 5, 12), (20, 128, 6, 64),
                                   (60, 19, 5, 128), (12, 1, 3, 512), (9, 3, 5, 320)],
                         ids=lambda s: "T{}B{}I{}H{}".format(*s))
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kcell", KERNEL_CELLS)
def test_op_matches_reference_at_odd_sizes(kcell, dtype, reverse, shape):
    check_random_lengths_against_reference(np.random.default_rng(5), kcell, dtype, shape,
                                           reverse)


# A batch of one's backward packs a W_hh of 8 MB or more from 16 steps on (BLAS reads it in
# strips of columns; recurrent_product.h's min_steps_packing_one_row): LSTM and GRU, float32
# H=840 (11.3 and 8.5 MB), 16 steps; the forward's products, under 32 steps, read W_hh where it
# lies (with AVX-512 by row_dots, which on a Zen 4 past 8 MB asks for the next rows' lines:
# dots_ask_in_rows).
@pytest.mark.parametrize("kcell", ["lstm", "gru"])
def test_op_packing_a_large_w_hh_for_a_batch_of_ones_backward_matches_reference(kcell):
    check_random_lengths_against_reference(np.random.default_rng(16), kcell, np.float32,
                                           (16, 1, 3, 840))


# So does an RNN's backward from 4 MB (cells_cpu.h's kRnnPackingBytes), in a call of 32 steps:
# float32 H=1024 packs, H=1023 reads W_hh where it lies; its forward never packs.
@pytest.mark.parametrize("H_", [1023, 1024])
@pytest.mark.parametrize("kcell", ["rnn_tanh", "rnn_relu"])
def test_op_packing_an_rnn_w_hh_for_a_batch_of_ones_backward_matches_reference(kcell, H_):
    check_random_lengths_against_reference(np.random.default_rng(17), kcell, np.float32,
                                           (32, 1, 3, H_))


# A batch of one over 32 steps or more runs the packed kernel one row at a time; where the packed
# W_hh does not fit in half the L2 of every thread, that row's kernel asks for its panels' lines
# ahead (recurrent_product.cc's streams_panels): float32 LSTM and GRU at H=512 (4 and 3 MB),
# float64 LSTM at H=256 (2 MB), on a machine of up to 4 threads of 1 MB of L2 (or 8 of 512 KB).
# Against the reference, in forward and backward; and the requests change no bit: a batch of two
# holding the sequence twice (2-row tiles, no requests) gives it the same y, h_n and dx. On an
# AMD of family 25 (a Zen 4) the row's kernel streams without the requests, and this holds the
# plain one-row tile to the same. With the portable kernel a batch of one goes through BLAS
# instead, whose sums need not be the kernel's.
@pytest.mark.parametrize("kcell, dtype, H_", [("lstm", np.float32, 512), ("gru", np.float32, 512),
                                              ("lstm", np.float64, 256)])
def test_op_streaming_a_batch_of_ones_w_hh_matches_reference_and_a_batch_of_two(kcell, dtype, H_):
    rng = np.random.default_rng(H_)
    arrays = layer_arrays(rng, kcell, dtype, 32, 1, 3, H_)
    grads = dict(dy=rng.uniform(-1, 1, (32, 1, H_)).astype(dtype),
                 dh_n=rng.uniform(-1, 1, (1, H_)).astype(dtype))
    got = forward_backward("cpu", kcell, arrays, grads)
    want = forward_backward("numpy", kcell, arrays, grads)
    for name, ref in want.items():
        if ref is not None:
            assert rel_err(got[name], ref) < RTOL[dtype], name
    if _core.build_info()["recurrent_kernel"] == "portable":
        return
    twice = {name: None if a is None else np.concatenate([a, a], axis=1) if name == "x" else
             np.concatenate([a, a]) if name in ("h0", "c0") else a for name, a in arrays.items()}
    grads_twice = dict(dy=np.concatenate([grads["dy"]] * 2, axis=1),
                       dh_n=np.concatenate([grads["dh_n"]] * 2))
    two = forward_backward("cpu", kcell, twice, grads_twice)
    np.testing.assert_array_equal(two["y"][:, :1], got["y"])
    np.testing.assert_array_equal(two["h_n"][:1], got["h_n"])
    np.testing.assert_array_equal(two["dx"][:, :1], got["dx"])


# The recurrent products run fusedrnn's own kernel: panels of 8, 16 or 32 hidden units by gate
# count (float32; 4, 8 or 16 float64); AVX2 tiles of 1 to 3 batch rows, or 4 rows against half
# a panel (B % 3 == 1); AVX-512 tiles of up to 12 or 8 rows. Sizes on both sides of each edge.
@pytest.mark.parametrize("H_", [3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 48, 65])
@pytest.mark.parametrize("B_", [1, 2, 3, 4, 7, 9, 13, 25])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kcell", KERNEL_CELLS)
def test_op_matches_reference_around_panel_edges(kcell, dtype, B_, H_):
    check_random_lengths_against_reference(np.random.default_rng(H_ * 10 + B_), kcell, dtype,
                                           (3, B_, 5, H_))


# With AVX-512, a batch of one over at most 96 steps projects x by dot products of its rows with
# a W_ih of more than 2 MB where it lies (chunk_product.h's dots_pay): float32 I = 4099 (a k
# past the last whole register; an RNN's W_ih 2.1 MB) and H = 130 (gate rows past a multiple
# of four), T = 13 (tiles of 5, 4 and 4 rows of x) and either side of 96 steps; float64
# I = 2053. Against the reference, and inference against training (both read W_ih alike).
@pytest.mark.parametrize("dtype, I_", [(np.float32, 4099), (np.float64, 2053)],
                         ids=["float32", "float64"])
@pytest.mark.parametrize("T_", [13, 96, 97])
@pytest.mark.parametrize("kcell", KERNEL_CELLS)
def test_op_projecting_a_batch_of_one_by_dots_matches_reference(kcell, T_, dtype, I_):
    arrays, lengths, got = check_random_lengths_against_reference(
        np.random.default_rng(T_), kcell, dtype, (T_, 1, I_, 130), state=True)
    y_infer = run_op("cpu", kcell, arrays, lengths, False, training=False)[0]
    np.testing.assert_array_equal(y_infer, got["y"])


# A backward whose chunks hold at most 96 rows (steps times B) and whose W_ih passes 2 MB takes
# dx = dG·W_ih by rows_axpys, W_ih read where it lies (chunk_product.h's axpys_pay; with
# AVX-512, I a multiple of 64 floats or 32 doubles), in the packed kernel's bits: against the
# reference; and B=2 (26 rows) gives the bits of the same two rows in B=8 (104 rows, packed)
# where the kernel is AVX-512's (elsewhere BLAS takes both, which may round a row by its place).
@pytest.mark.parametrize("dtype, I_", [(np.float32, 4096), (np.float64, 2048)],
                         ids=["float32", "float64"])
@pytest.mark.parametrize("kcell", KERNEL_CELLS)
def test_op_dx_over_few_rows_matches_reference_and_a_larger_batch(kcell, dtype, I_):
    T_, B_, H_ = 13, 8, 130
    rng = np.random.default_rng(I_)
    arrays = layer_arrays(rng, kcell, dtype, T_, B_, I_, H_)
    lengths = rng.integers(1, T_ + 1, B_)
    grads = dict(dy=rng.uniform(-1, 1, (T_, B_, H_)).astype(dtype),
                 dh_n=rng.uniform(-1, 1, (B_, H_)).astype(dtype))
    if kcell == "rnn_relu":
        clear_relu_kinks(rng, arrays, lengths, False)
    first_two = {name: None if a is None else a[:, :2] if name == "x" else
                 a[:2] if name in ("h0", "c0") else a for name, a in arrays.items()}
    grads_two = dict(dy=grads["dy"][:, :2], dh_n=grads["dh_n"][:2])
    for batch, batch_grads, rows in ((arrays, grads, B_), (first_two, grads_two, 2)):
        got = forward_backward("cpu", kcell, batch, batch_grads, lengths[:rows])
        want = forward_backward("numpy", kcell, batch, batch_grads, lengths[:rows])
        assert rel_err(got["dx"], want["dx"]) < RTOL[dtype], rows
        if rows == B_:
            dx_eight = got["dx"]
    if _core.build_info()["recurrent_kernel"] == "avx512f":
        np.testing.assert_array_equal(got["dx"], dx_eight[:, :2])


# A weight gradient of 8 MB or more, written whole, is written by non-temporal stores (with
# AVX-512: chunk_product.h's streams_c; the outputs start on cache lines, rnn.h's OutputBuffer):
# dW_ih at H = 512 and the least I, a multiple of a panel's 128 bytes, that takes it to 8 MB: its
# panels whole, and with one cache line more, the last panel cut short (written through the
# tile's scratch).
@pytest.mark.parametrize("short", [False, True], ids=["whole_panels", "last_panel_short"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kcell", KERNEL_CELLS)
def test_op_large_weight_gradients_match_reference(kcell, dtype, short):
    gates = 4 if kcell == "lstm" else 3 if kcell.startswith("gru") else 1
    size = np.dtype(dtype).itemsize
    panel, line = 128 // size, 64 // size
    columns = -(-(8 << 20) // (gates * 512 * size * panel)) * panel + (line if short else 0)
    check_random_lengths_against_reference(np.random.default_rng(columns), kcell, dtype,
                                           (5, 2, columns, 512))


# An LSTM or RNN whose packed [W_ihᵀ; W_hhᵀ] fits in half of L2 takes x's product inside each
# step's (cells_cpu.h, StepProducts::stacks_input). With a 1 MB L2 (the edge at 512 KB): float32
# LSTM I = H = 128 just does, I = 129 does not; a float32 RNN up to I = H = 256; float64 LSTM
# H = 64 up to I = 192, RNN H = 128 up to I = 384 (with a 512 KB L2, as a Zen 3's, the edge is at
# 256 KB and only the RNN of H = 40 here stacks); a batch of one never. Each side of each edge against the reference, and
# inference against training (both must stack alike). B=17 is past the batches that stack up
# to 8 MB (the next test), so it sees the L2 edge.
@pytest.mark.parametrize("kcell, dtype, I_, H_", [
    ("lstm", np.float32, 128, 128), ("lstm", np.float32, 129, 128),
    ("rnn_tanh", np.float32, 256, 256), ("rnn_tanh", np.float32, 257, 256),
    ("rnn_relu", np.float32, 8, 40), ("lstm", np.float64, 192, 64),
    ("lstm", np.float64, 193, 64), ("rnn_tanh", np.float64, 384, 128),
    ("rnn_tanh", np.float64, 385, 128)], ids=lambda v: getattr(v, "__name__", str(v)))
@pytest.mark.parametrize("B_", [1, 2, 17])
def test_op_matches_reference_around_stacking_edge(kcell, dtype, I_, H_, B_):
    check_stacking_case(kcell, dtype, I_, H_, B_)


# A batch of 4 to 16 rows (or more, where L1 holds 48 KB or a tile's rows of [x | h] take at
# most half of it, as AVX2's 3 rows of LSTM I = H = 512) stacks a packed [W_ihᵀ; W_hhᵀ] of up
# to 8 MB, streamed from L3: float32 LSTM I = H = 512 and RNN I = H = 1024 just do, I one more
# does not, nor B=3 (nor B=17 with a smaller L1 and AVX-512's 12-row tiles); float64 LSTM
# H = 256 up to I = 768.
@pytest.mark.parametrize("kcell, dtype, I_, H_, B_", [
    ("lstm", np.float32, 512, 512, 16), ("lstm", np.float32, 513, 512, 16),
    ("lstm", np.float32, 512, 512, 3), ("lstm", np.float32, 512, 512, 4),
    ("lstm", np.float32, 512, 512, 17), ("rnn_tanh", np.float32, 1024, 1024, 5),
    ("rnn_tanh", np.float32, 1025, 1024, 5), ("lstm", np.float64, 768, 256, 9),
    ("lstm", np.float64, 769, 256, 9)], ids=lambda v: getattr(v, "__name__", str(v)))
def test_op_matches_reference_around_stacking_from_l3_edge(kcell, dtype, I_, H_, B_):
    check_stacking_case(kcell, dtype, I_, H_, B_)


# Rows of h 4 KB apart (float32 H = 1024, float64 H = 512) share L1's cache sets, so with AVX-512
# a step whose tiles have more than 8 rows first copies h transposed and its product reads that
# (recurrent_product.h, reads_a_transposed): LSTM and RNN at B=17 (tiles of 9 and 8 rows; past
# the batches that stack, so that the product is h's alone). Against the reference; and each
# element is still one sum in k order: the first two rows alone (B=2, h read in place) give the
# same bits. GRU's tiles have at most 8 rows, so it reads h in place at any B; it is here for
# the reference. The RNN's I + H > 2048 keeps it from stacking at B=17 where L1 holds 48 KB (its
# stacked weights then pass 8 MB); its input projection, over k = I, then goes through BLAS
# where the kernel is not AVX-512's, which may sum a row differently in a batch of another size,
# as may GRU's (never stacked) and LSTM's (unless walked by rows, which depends on the caches)
# where that BLAS rounds a row by its place (conftest.blas_rows_exact).
@pytest.mark.parametrize("dtype, H_", [(np.float32, 1024), (np.float64, 512)],
                         ids=["float32", "float64"])
@pytest.mark.parametrize("kcell", KERNEL_CELLS)
def test_op_reading_h_transposed_matches_reference_and_a_smaller_batch(kcell, dtype, H_):
    I_ = 2049 - H_ if kcell.startswith("rnn") else 6
    arrays, lengths, got = check_random_lengths_against_reference(
        np.random.default_rng(H_), kcell, dtype, (3, 17, I_, H_), state=True)
    blas_projects = _core.build_info()["recurrent_kernel"] != "avx512f"
    if I_ > 6 and blas_projects:
        return  # no transposed reads without AVX-512, and the projection's bits are BLAS's
    first_two = {name: None if a is None else a[:, :2] if name == "x" else
                 a[:2] if name in ("h0", "c0") else a for name, a in arrays.items()}
    y_two = run_op("cpu", kcell, first_two, lengths[:2], training=False)[0]
    projection = (I_, ops.GATES[kcell] * H_) if blas_projects else None
    assert_same_rows(y_two, got["y"][:, :2], projection)


def check_stacking_case(kcell, dtype, I_, H_, B_):
    arrays, lengths, got = check_random_lengths_against_reference(
        np.random.default_rng(I_ + B_), kcell, dtype, (4, B_, I_, H_), state=True)
    y_infer = run_op("cpu", kcell, arrays, lengths, False, training=False)[0]
    np.testing.assert_array_equal(y_infer, got["y"])


# The CPU driver walks time in chunks of ceil(rows / B) steps (sequence_cpu.cc's chunk_rows):
# 1024 rows at H=300, so B=700 makes chunks of 2, 2, 2 and 1 of T=7 steps, and gradients cross
# chunk edges in both directions. H=300 makes W_hh large enough that each step splits its units
# over threads, so a step reading gate gradients that its chunk has overwritten shows up (it
# did, when the carry between chunks was taken out). H=24 splits the rows, and its chunks hold
# more rows (RNN float32 26214, 38 steps): T=80 still crosses several edges.
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("T_, H_, dtype", [(80, 24, np.float32), (80, 24, np.float64),
                                           (7, 300, np.float32)],
                         ids=["H24-float32", "H24-float64", "H300-float32"])
@pytest.mark.parametrize("kcell", KERNEL_CELLS)
def test_op_matches_reference_over_several_chunks(kcell, T_, H_, dtype, reverse, bias):
    arrays, lengths, got = check_random_lengths_against_reference(
        np.random.default_rng(9), kcell, dtype, (T_, 700, 5, H_), reverse, bias=bias,
        state=True)
    y_infer = run_op("cpu", kcell, arrays, lengths, reverse, training=False)[0]
    np.testing.assert_array_equal(y_infer, got["y"])


# What build_info may name under each FUSEDRNN_KERNEL_ISA: the recurrent kernel, the pointwise
# rows (the CPU may lack what the cap allows; a build for another architecture has one version).
CAPPED_KERNELS = {
    "avx2": ({"portable", "avx2+fma"},
             {"x86-64-v3 (avx2, fma)", "sse2 (x86-64 baseline)", "the compiler's default"}),
    "portable": ({"portable"}, {"sse2 (x86-64 baseline)", "the compiler's default"}),
}


@pytest.mark.parametrize("cap", CAPPED_KERNELS)
def test_smaller_kernels_match_reference(cap):
    """The code a CPU without AVX-512, or without AVX2/FMA, runs (the recurrent kernel and the
    pointwise rows), forced on this one: this file's tests and test_extremes.py's against the
    reference."""
    # The rerun is a pytest session of its own, not one of pytest-xdist's workers (under
    # `pytest -n`, pytest-benchmark reads PYTEST_XDIST_WORKER and warns, an error here).
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    env["FUSEDRNN_KERNEL_ISA"] = cap
    info = subprocess.run([sys.executable, "-c", "import fusedrnn._core as c; i = c.build_info(); "
                           "print(i['recurrent_kernel']); print(i['simd'])"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert info.returncode == 0, info.stderr[-3000:]
    kernel, rows = info.stdout.splitlines()
    assert kernel in CAPPED_KERNELS[cap][0] and rows in CAPPED_KERNELS[cap][1], (kernel, rows)
    native = _core.build_info()
    if (kernel, rows) == (native["recurrent_kernel"], native["simd"]):
        # A CPU without AVX-512 runs the capped code already, and the rest of the suite covers
        # it: the rerun took 42 s on a Zen 3 (279 s sanitized, which CI now runs on a narrower
        # selection: .ci/run).
        pytest.skip(f"this CPU runs {kernel} and {rows} without FUSEDRNN_KERNEL_ISA={cap}")
    here = os.path.dirname(__file__)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                           "-k", "not test_smaller_kernels", __file__,
                           os.path.join(here, "test_extremes.py")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.parametrize("kcell", KERNEL_CELLS)
def test_op_accepts_non_contiguous_arrays(kcell):
    """Fortran-order and strided views give bitwise the results of their contiguous copies."""
    rng = np.random.default_rng(6)
    arrays = layer_arrays(rng, kcell, np.float64, T, B, I, H)
    grads = output_grads(rng, kcell, np.float64, "both")

    def strided(a):
        return None if a is None else np.asfortranarray(a) if a.ndim > 1 else np.repeat(a, 2)[::2]

    lengths = np.repeat(LENGTHS["mixed"], 2)[::2]
    got = forward_backward("cpu", kcell, {k: strided(a) for k, a in arrays.items()},
                           {k: strided(g) for k, g in grads.items()}, lengths, reverse=True)
    want = forward_backward("cpu", kcell, arrays, grads, LENGTHS["mixed"], reverse=True)
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)


@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kcell", KERNEL_CELLS)
def test_one_direction_of_a_shared_output(kcell, dtype, training):
    """What a bidirectional layer does with each direction: forward writes y into its columns
    of a (T, B, 2H) array (the other columns untouched), backward reads dy from them; bitwise
    what a forward's own y and a contiguous dy give."""
    rng = np.random.default_rng(7)
    arrays = layer_arrays(rng, kcell, dtype, T, B, I, H)
    grads = output_grads(rng, kcell, dtype, "both")
    cell, reset_after = KERNEL_CELLS[kcell]
    both = np.full((T, B, 2 * H), 7.0, dtype)
    dy_both = np.zeros((T, B, 2 * H), dtype)
    dy_both[..., H:] = grads["dy"]
    half = both[..., H:]
    got = _core.forward(list(_core.CELLS).index(kcell), arrays["x"], arrays["h0"], arrays["c0"],
                        arrays["w_ih"], arrays["w_hh"], arrays["b_ih"], arrays["b_hh"],
                        LENGTHS["mixed"], True, training, half)
    want = forward_backward("cpu", kcell, arrays, grads, LENGTHS["mixed"], reverse=True)
    assert got[0] is half
    np.testing.assert_array_equal(half, want["y"])
    np.testing.assert_array_equal(both[..., :H], 7.0)
    if training:
        dx = _core.backward(got[3], dy_both[..., H:], grads["dh_n"], grads["dc_n"])[0]
        np.testing.assert_array_equal(dx, want["dx"])


@pytest.mark.parametrize("shape", [(1, 3, 4), (4, 1, 4), (4, 3, 1), (1, 1, 1)],
                         ids=lambda s: "T=%d B=%d H=%d" % s)
def test_shared_output_where_an_axis_has_length_one(shape):
    """Axes of length 1 carry strides the kernels never use: y and dy as the columns of a
    wider array still give the plain call's bits."""
    T_, B_, H_ = shape
    rng = np.random.default_rng(8)
    arrays = layer_arrays(rng, "lstm", np.float32, T_, B_, 3, H_)
    args = [arrays[k] for k in ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh")]
    wide = np.zeros((T_, B_, 3 * H_), np.float32)
    y, _, _, tape = _core.forward(0, *args, None, False, True, wide[..., H_:2 * H_])
    plain, _, _, plain_tape = _core.forward(0, *args, None, False, True)
    np.testing.assert_array_equal(y, plain)
    dy = rng.uniform(-1, 1, (T_, B_, H_)).astype(np.float32)
    wide[..., H_:2 * H_] = dy
    np.testing.assert_array_equal(_core.backward(tape, wide[..., H_:2 * H_], None, None)[0],
                                  _core.backward(plain_tape, dy, None, None)[0])


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_layer_backward_takes_an_unaligned_dy(bidirectional):
    """An unaligned dy is copied aligned once, as x is in forward."""
    layer = fr.LSTM(input_size=3, hidden_size=4, bidirectional=bidirectional, seed=0)
    x = np.random.default_rng(9).uniform(-1, 1, (5, 2, 3)).astype(np.float32)
    y, _, tape = layer.forward(x, training=True)
    buf = np.zeros(y.nbytes + 1, np.uint8)
    dy = np.frombuffer(buf.data, np.float32, y.size, offset=1).reshape(y.shape)
    dy[...] = 1.0
    dx = layer.backward(tape, dy)[0]
    y, _, tape = layer.forward(x, training=True)
    np.testing.assert_array_equal(dx, layer.backward(tape, np.ones_like(y))[0])


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("kcell", KERNEL_CELLS)
def test_nothing_past_length(kcell, reverse, backend):
    rng = np.random.default_rng(1)
    lengths = LENGTHS["mixed"]
    arrays = layer_arrays(rng, kcell, np.float64, T, B, I, H)
    out = forward_backward(backend, kcell, arrays, output_grads(rng, kcell, np.float64, "both"),
                           lengths, reverse)
    past = np.arange(T)[:, None] >= lengths  # (T, B)
    assert np.all(out["y"][past] == 0)
    assert np.all(out["dx"][past] == 0)
    # The final state is the output of each row's last valid step (position 0 in reverse).
    last = np.zeros(B, int) if reverse else lengths - 1
    np.testing.assert_array_equal(out["h_n"], out["y"][last, np.arange(B)])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kcell", KERNEL_CELLS)
def test_op_is_deterministic(kcell, dtype):
    rng = np.random.default_rng(2)
    arrays = layer_arrays(rng, kcell, dtype, T, B, I, H)
    grads = output_grads(rng, kcell, dtype, "both")
    first, second = (forward_backward("cpu", kcell, arrays, grads, LENGTHS["mixed"])
                     for _ in range(2))
    for name, value in first.items():
        np.testing.assert_array_equal(second[name], value, err_msg=name)


def large_enough_to_split(kcell, dtype, split="rows"):
    """Arrays, lengths and output gradients big enough that every GEMM and pointwise pass is
    cut into several blocks for the kernels' threads: a step's blocks split the batch rows
    when W_hh is small, its hidden units when it is large; weight gradients too small to cut
    by rows or columns are cut along time."""
    rng = np.random.default_rng(5)
    t, b, i, h = {"rows": (5, 64, 80, 128), "units": (3, 16, 40, 300),
                  "time": (11, 64, 100, 32)}[split]
    arrays = layer_arrays(rng, kcell, dtype, t, b, i, h)
    lengths = rng.integers(1, t + 1, b)
    grads = dict(dy=rng.uniform(-1, 1, (t, b, h)).astype(dtype),
                 dh_n=rng.uniform(-1, 1, (b, h)).astype(dtype),
                 dc_n=rng.uniform(-1, 1, (b, h)).astype(dtype) if kcell == "lstm" else None)
    return arrays, lengths, grads


@pytest.mark.parametrize("split", ["rows", "units", "time"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kcell", KERNEL_CELLS)
def test_thread_count_does_not_change_results(kcell, dtype, split):
    """The kernels cut work into blocks by size alone: any thread count gives the same bits."""
    arrays, lengths, grads = large_enough_to_split(kcell, dtype, split)
    before = _core.build_info()["threads"]
    results = []
    try:
        for threads in (1, 2, 3):
            fr.set_num_threads(threads)
            results.append(forward_backward("cpu", kcell, arrays, grads, lengths))
    finally:
        fr.set_num_threads(before)
    for other in results[1:]:
        for name, value in results[0].items():
            np.testing.assert_array_equal(other[name], value, err_msg=name)


@pytest.mark.parametrize("kcell", ["lstm", "gru_reset_before"])
def test_concurrent_calls_equal_serial_calls(kcell):
    """Python threads calling the kernels at once (the GIL is released) share the kernels'
    threads: a call that finds them busy runs alone, with the same blocks and the same bits."""
    arrays, lengths, grads = large_enough_to_split(kcell, np.float32)
    serial = forward_backward("cpu", kcell, arrays, grads, lengths)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(forward_backward, "cpu", kcell, arrays, grads, lengths)
                   for _ in range(8)]
        concurrent = [f.result() for f in futures]
    for result in concurrent:
        for name, value in serial.items():
            np.testing.assert_array_equal(result[name], value, err_msg=name)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kcell", KERNEL_CELLS)
def test_inference_equals_training(kcell, dtype, reverse):
    arrays = layer_arrays(np.random.default_rng(3), kcell, dtype, T, B, I, H)
    infer = run_op("cpu", kcell, arrays, LENGTHS["mixed"], reverse, training=False)
    train = run_op("cpu", kcell, arrays, LENGTHS["mixed"], reverse, training=True)
    assert infer.tape is None
    for name in ("y", "h_n", "c_n"):
        np.testing.assert_array_equal(getattr(infer, name), getattr(train, name), err_msg=name)


# -- layers -------------------------------------------------------------------------------------

def check_layers_agree(kind, dtype, x_shape, lengths=None, **kwargs):
    """Builds the layer on both backends with the same parameters, runs forward and backward with
    random state, dy and dstate, and compares everything."""
    # The same seed gives the same dropout masks; the parameters are copied explicitly.
    ref = LAYERS[kind](I, H, dtype=dtype, seed=7, backend="numpy", **kwargs)
    cpu = LAYERS[kind](I, H, dtype=dtype, seed=7, backend="cpu", **kwargs)
    cpu.load_state_dict(ref.state_dict())
    rng = np.random.default_rng(4)
    batch = None if len(x_shape) == 2 else x_shape[0 if ref.batch_first else 1]
    x = rng.uniform(-1, 1, x_shape).astype(dtype)
    state, dstate = random_state(rng, ref, batch), random_state(rng, ref, batch)
    dy = rng.uniform(-1, 1, x_shape[:-1] + (ref.num_directions * H,)).astype(dtype)
    got, want = (run_layer(layer, x, state, lengths, dy, dstate) for layer in (cpu, ref))
    assert got.keys() == want.keys()
    for name, value in want.items():
        assert rel_err(got[name], value) < RTOL[dtype], name
    assert want["y"].shape == dy.shape and want["dx"].shape == x.shape


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lengths", [None, LENGTHS["mixed"]], ids=["no_lengths", "lengths"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("kind", LAYERS)
def test_layer_matches_reference(kind, num_layers, bidirectional, batch_first, lengths, dtype):
    check_layers_agree(kind, dtype, (B, T, I) if batch_first else (T, B, I), lengths,
                       num_layers=num_layers, bidirectional=bidirectional,
                       batch_first=batch_first)


@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("kind", LAYERS)
def test_layer_unbatched_matches_reference(kind, bidirectional, batch_first):
    check_layers_agree(kind, np.float64, (T, I), num_layers=2, bidirectional=bidirectional,
                       batch_first=batch_first)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("kind", LAYERS)
def test_layer_dropout_matches_reference(kind, bidirectional):
    check_layers_agree(kind, np.float64, (T, B, I), LENGTHS["mixed"], num_layers=3, dropout=0.5,
                       bidirectional=bidirectional)
    # Dropout acted: the training output differs from the same layer's inference output.
    layer = LAYERS[kind](I, H, num_layers=3, dropout=0.5, bidirectional=bidirectional,
                         dtype=np.float64, seed=7, backend="numpy")
    x = np.random.default_rng(4).uniform(-1, 1, (T, B, I))
    assert not np.allclose(layer(x)[0], layer.forward(x, training=True)[0])


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("kind", LAYERS)
def test_layer_gradients_are_keyed_as_state_dict(kind, bidirectional, bias, backend):
    layer = LAYERS[kind](I, H, num_layers=2, bias=bias, bidirectional=bidirectional,
                         dtype="float64", seed=8, backend=backend)
    y, _, tape = layer.forward(np.random.default_rng(5).uniform(-1, 1, (T, B, I)), training=True)
    dparams = layer.backward(tape, np.ones_like(y))[2]
    params = layer.state_dict()
    assert list(dparams) == list(params)
    for name, p in params.items():
        assert dparams[name].shape == p.shape and dparams[name].dtype == p.dtype, name
