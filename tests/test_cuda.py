"""The CUDA backend: every functional-op check of test_kernels.py again on the GPU, against the
CPU kernels and the NumPy reference; parity with torch.nn on CUDA (cuDNN); results in the
caller's array library; compute-sanitizer. The arrays are torch CUDA tensors.

Without a usable GPU (or without torch built with CUDA) the GPU tests skip, saying why; the checks
that need no device (what a build without CUDA or without a GPU reports) still run."""

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import KERNEL_CELLS, LAYERS, layer_arrays, leaves, random_state, rel_err, run_layer
from test_kernels import LENGTHS, RTOL, B, H, I, T, output_grads

from fusedrnn import ops
from fusedrnn._backend import cuda_module, cuda_status

torch = pytest.importorskip("torch", reason="the CUDA tests make their device arrays with torch")
_cuda = cuda_module()

CUDA_OK, CUDA_WHY = cuda_status()
if not CUDA_OK:
    GPU_SKIP = f"no GPU for the CUDA backend: {CUDA_WHY}"
elif not torch.cuda.is_available():
    GPU_SKIP = "torch sees no CUDA device (the GPU tests make their arrays with torch)"
else:
    GPU_SKIP = None
needs_gpu = pytest.mark.skipif(GPU_SKIP is not None, reason=GPU_SKIP or "")
DTYPES = [np.float32, np.float64]


@pytest.fixture(autouse=True)
def poisoned_allocations():
    """Every device allocation of the backend starts as NaN: an element a kernel fails to write
    turns a result NaN, which no comparison below lets through."""
    if _cuda is not None:
        _cuda.set_poison_allocations(True)
    yield
    if _cuda is not None:
        _cuda.set_poison_allocations(False)


def to_gpu(a):
    return None if a is None else torch.from_numpy(np.ascontiguousarray(a)).cuda()


def to_host(t):
    assert t is None or (isinstance(t, torch.Tensor) and t.is_cuda), type(t)
    return None if t is None else t.cpu().numpy()


def forward_backward(where, kcell, arrays, grads, lengths=None, reverse=False, tf32=False):
    """Every output of ops.forward and ops.backward by name, as NumPy arrays. where: "cuda"
    (the arrays go to the GPU as torch tensors), "cpu" or "numpy"."""
    cell, reset_after = KERNEL_CELLS[kcell]
    move = to_gpu if where == "cuda" else (lambda a: a)
    back = to_host if where == "cuda" else (lambda a: a)
    kw = dict(tf32=True) if tf32 else {}
    y, h_n, c_n, tape = ops.forward(cell, **{k: move(a) for k, a in arrays.items()},
                                    lengths=lengths, reverse=reverse, training=True,
                                    reset_after=reset_after,
                                    backend="auto" if where == "cuda" else where, **kw)
    grads = ops.backward(tape, **{k: move(g) for k, g in grads.items()})
    return {k: back(v) for k, v in dict(y=y, h_n=h_n, c_n=c_n, **grads._asdict()).items()}


def assert_close(got, want, rtol):
    for name, ref in want.items():
        if ref is None:
            assert got[name] is None, name
        else:
            assert got[name].dtype == ref.dtype, name
            assert rel_err(got[name], ref) < rtol, name


# -- the functional ops against the CPU kernels and the reference --------------------------------

@needs_gpu
@pytest.mark.parametrize("which_grads", ["y", "final", "both"])
@pytest.mark.parametrize("state", [False, True], ids=["zero_state", "state"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("lengths", LENGTHS.values(), ids=LENGTHS.keys())
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kcell", KERNEL_CELLS)
def test_op_matches_cpu_and_reference(kcell, dtype, reverse, lengths, bias, state, which_grads):
    rng = np.random.default_rng(0)
    arrays = layer_arrays(rng, kcell, dtype, T, B, I, H, bias=bias, state=state)
    grads = output_grads(rng, kcell, dtype, which_grads)
    got = forward_backward("cuda", kcell, arrays, grads, lengths, reverse)
    # Tolerances of test_kernels.py: the GPU's exp/tanh differ from the CPU's by a few ulp, and
    # cuBLAS sums in another order; neither is more than the rounding those bounds allow.
    for where in ("numpy", "cpu"):
        assert_close(got, forward_backward(where, kcell, arrays, grads, lengths, reverse),
                     RTOL[dtype])


# Sizes of 1, sizes no warp or block divides, and more units than one block of threads.
@needs_gpu
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 1, 2, 3), (4, 2, 9, 13), (2, 40, 5, 33),
                                   (3, 70, 40, 300)], ids=lambda s: "T{}B{}I{}H{}".format(*s))
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kcell", KERNEL_CELLS)
def test_op_matches_reference_at_odd_sizes(kcell, dtype, reverse, shape):
    T, B, I, H = shape
    rng = np.random.default_rng(5)
    arrays = layer_arrays(rng, kcell, dtype, T, B, I, H)
    lengths = rng.integers(1, T + 1, B)
    grads = dict(dy=rng.uniform(-1, 1, (T, B, H)).astype(dtype),
                 dh_n=rng.uniform(-1, 1, (B, H)).astype(dtype))
    got = forward_backward("cuda", kcell, arrays, grads, lengths, reverse)
    want = forward_backward("numpy", kcell, arrays, grads, lengths, reverse)
    assert_close(got, {k: v for k, v in want.items() if v is not None}, RTOL[dtype])


@needs_gpu
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("kcell", KERNEL_CELLS)
def test_nothing_past_length(kcell, reverse):
    rng = np.random.default_rng(1)
    lengths = LENGTHS["mixed"]
    arrays = layer_arrays(rng, kcell, np.float64, T, B, I, H)
    out = forward_backward("cuda", kcell, arrays, output_grads(rng, kcell, np.float64, "both"),
                           lengths, reverse)
    past = np.arange(T)[:, None] >= lengths  # (T, B)
    assert np.all(out["y"][past] == 0)
    assert np.all(out["dx"][past] == 0)
    last = np.zeros(B, int) if reverse else lengths - 1
    np.testing.assert_array_equal(out["h_n"], out["y"][last, np.arange(B)])


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kcell", KERNEL_CELLS)
def test_inference_equals_training(kcell, dtype):
    cell, reset_after = KERNEL_CELLS[kcell]
    arrays = {k: to_gpu(a) for k, a in
              layer_arrays(np.random.default_rng(3), kcell, dtype, T, B, I, H).items()}
    infer, train = (ops.forward(cell, **arrays, lengths=LENGTHS["mixed"], training=training,
                                reset_after=reset_after) for training in (False, True))
    assert infer.tape is None and train.tape.backend == "cuda"
    for name in ("y", "h_n", "c_n"):
        a, b = getattr(infer, name), getattr(train, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert torch.equal(a, b), name


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kcell", KERNEL_CELLS)
def test_op_is_deterministic(kcell, dtype):
    """cuBLAS's default GEMMs and the one-thread-per-unit kernels give bitwise repeatable
    results."""
    rng = np.random.default_rng(2)
    arrays = layer_arrays(rng, kcell, dtype, T, B, I, H)
    grads = output_grads(rng, kcell, dtype, "both")
    first, second = (forward_backward("cuda", kcell, arrays, grads, LENGTHS["mixed"])
                     for _ in range(2))
    for name, value in first.items():
        np.testing.assert_array_equal(second[name], value, err_msg=name)


# TF32 rounds the products' inputs to a 10-bit mantissa (relative 2^-11 ≈ 5e-4 each); summed over
# I + H terms and carried through T steps the results drift by ~1e-3: 1e-2 leaves margin while
# still catching a wrong formula (errors of order 1).
@needs_gpu
@pytest.mark.parametrize("kcell", KERNEL_CELLS)
def test_tf32_is_close_to_reference(kcell):
    rng = np.random.default_rng(9)
    arrays = layer_arrays(rng, kcell, np.float32, T, B, I, H)
    grads = output_grads(rng, kcell, np.float32, "both")
    got = forward_backward("cuda", kcell, arrays, grads, LENGTHS["mixed"], tf32=True)
    assert_close(got, forward_backward("numpy", kcell, arrays, grads, LENGTHS["mixed"]), 1e-2)


# -- arrays of the caller's library -------------------------------------------------------------

@needs_gpu
def test_results_are_torch_tensors_on_the_inputs_device():
    arrays = {k: to_gpu(a) for k, a in
              layer_arrays(np.random.default_rng(0), "lstm", np.float32, T, B, I, H).items()}
    y, h_n, c_n, tape = ops.forward("lstm", **arrays, training=True)
    for t in (y, h_n, c_n):
        assert isinstance(t, torch.Tensor) and t.device == arrays["x"].device
    assert tape.nbytes == 4 * ((T + 1) * B * H * 2 + T * B * H * 4)
    g = ops.backward(tape, torch.ones_like(y))
    assert all(isinstance(v, torch.Tensor) for v in g if v is not None)


@needs_gpu
def test_results_come_back_as_cupy_arrays():
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed")
    host = layer_arrays(np.random.default_rng(0), "gru", np.float32, T, B, I, H)
    y, h_n, _, _ = ops.forward("gru", **{k: None if a is None else cupy.asarray(a)
                                         for k, a in host.items()})
    assert isinstance(y, cupy.ndarray)
    want = ops.forward("gru", **host, backend="numpy")
    assert rel_err(cupy.asnumpy(y), want.y) < RTOL[np.float32]
    assert rel_err(cupy.asnumpy(h_n), want.h_n) < RTOL[np.float32]


@needs_gpu
def test_device_arrays_export_through_dlpack_without_a_copy():
    host = layer_arrays(np.random.default_rng(0), "rnn_tanh", np.float64, T, B, I, H)
    a = {k: to_gpu(v) for k, v in host.items()}
    y, h_n, c_n, tape = _cuda.forward(3, a["x"], a["h0"], None, a["w_ih"], a["w_hh"], a["b_ih"],
                                      a["b_hh"], None, False, False, False)
    assert c_n is None and tape is None
    assert y.shape == (T, B, H) and y.dtype == "float64"
    assert y.__dlpack_device__() == (2, torch.cuda.current_device())
    t1, t2 = torch.from_dlpack(y), torch.from_dlpack(y)
    assert t1.data_ptr() == t2.data_ptr()  # both views of the one buffer
    want = ops.forward("rnn_tanh", **host, backend="numpy")
    assert rel_err(t1.cpu().numpy(), want.y) < RTOL[np.float64]


# -- the tape as arrays (what fusedrnn.torch's custom ops carry through autograd) ----------------

@needs_gpu
@pytest.mark.parametrize("kcell", KERNEL_CELLS)
def test_tape_round_trips_through_its_arrays(kcell):
    """tape_arrays views the tape's buffers and keeps them alive after the tape is dropped;
    tape_from_arrays over those views gives the original tape's gradients, bitwise."""
    cell, reset_after = KERNEL_CELLS[kcell]
    rng = np.random.default_rng(4)
    host = layer_arrays(rng, kcell, np.float64, T, B, I, H)
    a = {k: to_gpu(v) for k, v in host.items()}
    grads = {k: to_gpu(g) for k, g in output_grads(rng, kcell, np.float64, "both").items()}
    kw = dict(lengths=LENGTHS["mixed"], reverse=True, reset_after=reset_after)
    tape = ops.forward(cell, **a, training=True, **kw).tape
    views = ops.tape_arrays(tape)
    want = ops.backward(tape, **grads)
    assert [None if v is None else tuple(v.shape) for v in views] == list(
        ops.tape_shapes(cell, T, B, H, reset_after))
    assert all(v is None or isinstance(v, torch.Tensor) and v.is_cuda for v in views)
    del tape  # the views keep its memory: the allocations below must not take it over
    torch.cuda.synchronize()
    rebuilt = ops.tape_from_arrays(cell, a["x"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"],
                                   *views, **kw)
    got = ops.backward(rebuilt, **grads)
    for name, value in want._asdict().items():
        assert (value is None) == (getattr(got, name) is None), name
        if value is not None:
            assert torch.equal(getattr(got, name), value), name


@needs_gpu
@pytest.mark.parametrize("which, change, exc, match", [
    (0, lambda v: v[:-1], ValueError, r"h_states: expected shape \(8, 5, 8\), got \(7, 5, 8\)"),
    (1, lambda v: v.cpu(), ValueError, r"c_states: expected an array on a CUDA device"),
    (2, lambda v: None, TypeError, r"gates: expected an array on a CUDA device, got None"),
    (2, lambda v: v.float(), TypeError, r"gates: expected dtype float64 \(that of x\)"),
])
def test_tape_from_device_arrays_checks_them(which, change, exc, match):
    a = {k: to_gpu(v) for k, v in
         layer_arrays(np.random.default_rng(0), "lstm", np.float64, T, B, I, H).items()}
    views = list(ops.tape_arrays(ops.forward("lstm", **a, training=True).tape))
    views[which] = change(views[which])
    with pytest.raises(exc, match=match):
        ops.tape_from_arrays("lstm", a["x"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], *views)


# -- bad input on the device --------------------------------------------------------------------

@needs_gpu
@pytest.mark.parametrize("name, change, exc, match", [
    ("w_hh", lambda a: a.cpu(), ValueError, r"w_hh: expected an array on a CUDA device"),
    ("w_ih", lambda a: a.double(), TypeError, r"w_ih: expected dtype float32 \(that of x\), "
                                              r"got float64"),
    ("h0", lambda a: a[:, :-1], ValueError, r"h0: expected shape \(5, 8\), got \(5, 7\)"),
    ("x", lambda a: a.transpose(0, 1).contiguous().transpose(0, 1), ValueError,
     r"x: expected a C-contiguous array"),
    ("b_ih", lambda a: None, ValueError, r"b_ih, b_hh: expected both or neither"),
    ("lengths", lambda a: to_gpu(np.array([T, 1, 2, 3, 4])), TypeError,
     r"lengths: expected a host array .* got a torch.Tensor on CUDA device"),
])
def test_device_arrays_are_checked(name, change, exc, match):
    arrays = {k: to_gpu(a) for k, a in
              layer_arrays(np.random.default_rng(0), "lstm", np.float32, T, B, I, H).items()}
    arrays[name] = change(arrays.get(name))
    lengths = arrays.pop("lengths", None)
    with pytest.raises(exc, match=match):
        ops.forward("lstm", **arrays, lengths=lengths)


# -- torch.nn on CUDA (cuDNN) ---------------------------------------------------------------------

TORCH_CELLS = {"lstm": ("LSTM", {}), "gru": ("GRU", {}),
               "rnn_tanh": ("RNN", {"nonlinearity": "tanh"}),
               "rnn_relu": ("RNN", {"nonlinearity": "relu"})}


@needs_gpu
@pytest.mark.parametrize("lengths", [None, LENGTHS["mixed"]], ids=["no_lengths", "lengths"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kcell", TORCH_CELLS)
def test_op_matches_torch_cudnn(kcell, dtype, lengths, monkeypatch):
    # cuDNN may use TF32 for float32 unless told not to; the comparison is of FP32 arithmetic.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    name, kw = TORCH_CELLS[kcell]
    tdt = {np.float32: torch.float32, np.float64: torch.float64}[dtype]
    torch.manual_seed(0)
    module = getattr(torch.nn, name)(I, H, dtype=tdt, device="cuda", **kw)
    rng = np.random.default_rng(2)
    x = to_gpu(rng.uniform(-1, 1, (T, B, I)).astype(dtype))
    h0 = to_gpu(rng.uniform(-1, 1, (B, H)).astype(dtype))
    c0 = to_gpu(rng.uniform(-1, 1, (B, H)).astype(dtype)) if kcell == "lstm" else None
    dy = to_gpu(rng.uniform(-1, 1, (T, B, H)).astype(dtype))
    dh_n = to_gpu(rng.uniform(-1, 1, (B, H)).astype(dtype))
    dc_n = to_gpu(rng.uniform(-1, 1, (B, H)).astype(dtype)) if kcell == "lstm" else None

    xt = x.clone().requires_grad_(True)
    states = [s.clone()[None].requires_grad_(True) for s in (h0, c0) if s is not None]
    inp = xt if lengths is None else torch.nn.utils.rnn.pack_padded_sequence(
        xt, lengths.tolist(), enforce_sorted=False)
    yt, st = module(inp, tuple(states) if kcell == "lstm" else states[0])
    if lengths is not None:
        yt = torch.nn.utils.rnn.pad_packed_sequence(yt, total_length=T)[0]
    st = st if kcell == "lstm" else (st,)
    loss = (yt * dy).sum() + sum((s[0] * d).sum() for s, d in zip(st, (dh_n, dc_n)))
    loss.backward()
    want = dict(y=yt, h_n=st[0][0], c_n=st[1][0] if kcell == "lstm" else None, dx=xt.grad,
                dh0=states[0].grad[0], dc0=states[1].grad[0] if kcell == "lstm" else None,
                dw_ih=module.weight_ih_l0.grad, dw_hh=module.weight_hh_l0.grad,
                db_ih=module.bias_ih_l0.grad, db_hh=module.bias_hh_l0.grad)

    params = [p.detach() for p in (module.weight_ih_l0, module.weight_hh_l0, module.bias_ih_l0,
                                   module.bias_hh_l0)]
    y, h_n, c_n, tape = ops.forward(kcell, x, *params, h0, c0, lengths=lengths, training=True)
    got = dict(y=y, h_n=h_n, c_n=c_n, **ops.backward(tape, dy, dh_n, dc_n)._asdict())
    assert_close({k: to_host(v) for k, v in got.items()},
                 {k: None if v is None else v.detach().cpu().numpy() for k, v in want.items()},
                 RTOL[dtype])


# -- layers on the GPU (device="cuda") -----------------------------------------------------------

def cupy_or_skip():
    return pytest.importorskip("cupy", reason="CuPy is not installed (a layer with device='cuda' "
                                              "keeps its parameters in CuPy arrays)")


def state_to_gpu(state):
    return tuple(map(to_gpu, state)) if isinstance(state, tuple) else to_gpu(state)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lengths", [None, LENGTHS["mixed"]], ids=["no_lengths", "lengths"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("kind", LAYERS)
def test_layer_on_gpu_matches_cpu(kind, num_layers, bidirectional, batch_first, lengths, dtype):
    """Layers, directions, dropout between layers (the same seed draws the same parameters and
    masks on both devices), batch_first, lengths and states: torch CUDA tensors in and out."""
    cupy_or_skip()
    kw = dict(num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first,
              dropout=0.5 if num_layers > 1 else 0.0, dtype=dtype, seed=7)
    cpu = LAYERS[kind](I, H, backend="cpu", **kw)
    gpu = LAYERS[kind](I, H, device="cuda", **kw)
    for name, p in cpu.state_dict().items():
        np.testing.assert_array_equal(gpu.state_dict()[name], p, err_msg=name)
    rng = np.random.default_rng(4)
    x_shape = (B, T, I) if batch_first else (T, B, I)
    x = rng.uniform(-1, 1, x_shape).astype(dtype)
    state, dstate = random_state(rng, cpu, B), random_state(rng, cpu, B)
    dy = rng.uniform(-1, 1, x_shape[:-1] + (cpu.num_directions * H,)).astype(dtype)
    want = run_layer(cpu, x, state, lengths, dy, dstate)
    got = run_layer(gpu, to_gpu(x), state_to_gpu(state), lengths, to_gpu(dy),
                    state_to_gpu(dstate))
    assert got.keys() == want.keys()
    assert_close({k: to_host(v) for k, v in got.items()}, want, RTOL[dtype])


@needs_gpu
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("kind", LAYERS)
def test_layer_on_gpu_unbatched_matches_cpu(kind, bidirectional):
    cupy_or_skip()
    kw = dict(num_layers=2, bidirectional=bidirectional, dtype=np.float64, seed=3)
    cpu, gpu = LAYERS[kind](I, H, backend="cpu", **kw), LAYERS[kind](I, H, device="cuda", **kw)
    rng = np.random.default_rng(6)
    x = rng.uniform(-1, 1, (T, I))
    state, dstate = random_state(rng, cpu, None), random_state(rng, cpu, None)
    dy = rng.uniform(-1, 1, (T, cpu.num_directions * H))
    want = run_layer(cpu, x, state, None, dy, dstate)
    got = run_layer(gpu, to_gpu(x), state_to_gpu(state), None, to_gpu(dy), state_to_gpu(dstate))
    assert_close({k: to_host(v) for k, v in got.items()}, want, RTOL[np.float64])


@needs_gpu
def test_layer_on_gpu_takes_host_arrays_and_keeps_host_state_dict():
    cupy = cupy_or_skip()
    gpu = LAYERS["lstm"](I, H, num_layers=2, device="cuda", seed=1)
    cpu = LAYERS["lstm"](I, H, num_layers=2, backend="cpu", seed=1)
    assert all(isinstance(p, np.ndarray) for p in gpu.state_dict().values())
    assert all(isinstance(p, cupy.ndarray) for p in gpu._params.values())
    x = np.random.default_rng(0).uniform(-1, 1, (T, B, I)).astype(np.float32)
    (y, (h, c)), (y_cpu, (h_cpu, c_cpu)) = gpu(x), cpu(x)
    assert isinstance(y, np.ndarray) and isinstance(h, np.ndarray)
    for got, want in ((y, y_cpu), (h, h_cpu), (c, c_cpu)):
        assert rel_err(got, want) < RTOL[np.float32]
    # Parameters from torch CUDA tensors load as they would from NumPy.
    gpu.load_state_dict({k: to_gpu(v * 2) for k, v in cpu.state_dict().items()})
    for name, p in cpu.state_dict().items():
        np.testing.assert_array_equal(gpu.state_dict()[name], p * 2, err_msg=name)


# -- compute-sanitizer ----------------------------------------------------------------------------

SANITIZER = shutil.which("compute-sanitizer") or os.path.join(
    os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "compute-sanitizer")

# Every cell, training forward and backward, with lengths and in reverse: small, so that the
# instrumented run stays within a minute.
SANITIZED_RUN = textwrap.dedent("""
    import numpy as np, torch
    from fusedrnn import ops
    rng = np.random.default_rng(0)
    T, B, I, H = 4, 3, 5, 7
    for cell, reset_after in [("lstm", True), ("gru", True), ("gru", False), ("rnn_tanh", True),
                              ("rnn_relu", True)]:
        G = {"lstm": 4, "gru": 3}.get(cell, 1)
        a = [torch.from_numpy(rng.uniform(-1, 1, s).astype(np.float32)).cuda()
             for s in [(T, B, I), (G * H, I), (G * H, H), (G * H,), (G * H,)]]
        y, h_n, c_n, tape = ops.forward(cell, *a, lengths=np.array([4, 1, 2]), reverse=True,
                                        training=True, reset_after=reset_after)
        ops.backward(tape, torch.ones_like(y), torch.ones_like(h_n))
    torch.cuda.synchronize()
""")


@needs_gpu
@pytest.mark.skipif(not os.path.exists(SANITIZER), reason="compute-sanitizer was not found "
                    "(it comes with the CUDA toolkit; put it on PATH)")
@pytest.mark.parametrize("tool", ["memcheck", "racecheck"])
def test_compute_sanitizer_is_clean(tool):
    run = subprocess.run([SANITIZER, "--tool", tool, "--error-exitcode", "99", sys.executable,
                          "-c", SANITIZED_RUN], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]


# -- what needs no device -------------------------------------------------------------------------

def test_status_says_why_not():
    ok, reason = cuda_status()
    assert isinstance(ok, bool) and reason


@pytest.mark.skipif(_cuda is None, reason="the CUDA extension is not built")
def test_backend_cuda_rejects_host_arrays():
    arrays = layer_arrays(np.random.default_rng(0), "lstm", np.float32, T, B, I, H)
    with pytest.raises(TypeError, match=r"x: backend 'cuda' expects an array on a CUDA device"):
        ops.forward("lstm", **arrays, backend="cuda")


@pytest.mark.skipif(_cuda is None, reason="the CUDA extension is not built")
@pytest.mark.parametrize("x, exc, match", [
    (torch.zeros(2, 3, 4), ValueError, r"x: expected an array on a CUDA device \(DLPack device "
                                       r"type 2\), got a Tensor on device type 1 \(CPU\)"),
    ([1.0], TypeError, r"x: expected an array on a CUDA device \(one with __dlpack__"),
])
def test_glue_rejects_host_arrays(x, exc, match):
    with pytest.raises(exc, match=match):
        _cuda.forward(0, x, None, None, None, None, None, None, None, False, False, False)


@pytest.mark.skipif(_cuda is None, reason="the CUDA extension is not built")
def test_cpu_layer_refuses_gpu_arrays_by_name():
    class OnGpu:  # what a CUDA array says about itself
        def __dlpack_device__(self):
            return (2, 0)
    with pytest.raises(ValueError, match=r"x: expected a host array for a layer on the CPU, got "
                                         r"a .*OnGpu on CUDA device 0 \(build the layer with "
                                         r"device='cuda'\)"):
        LAYERS["gru"](I, H, backend="cpu")(OnGpu())


@pytest.mark.skipif(_cuda is not None, reason="the CUDA extension is built")
def test_backend_cuda_says_it_is_not_built():
    arrays = layer_arrays(np.random.default_rng(0), "lstm", np.float32, T, B, I, H)
    with pytest.raises(ValueError, match=r"backend: 'cuda' needs the CUDA extension"):
        ops.forward("lstm", **arrays, backend="cuda")
