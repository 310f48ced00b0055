"""fusedrnn.torch: the drop-in torch.nn.LSTM/GRU/RNN modules against torch.nn itself (outputs,
states and every gradient), torch.autograd.gradcheck through fusedrnn's backward, PackedSequence,
state dicts both ways, torch.compile and bad input."""


import numpy as np
import pytest
from conftest import rel_err

import fusedrnn

torch = pytest.importorskip("torch", reason="fusedrnn.torch needs torch")
if "cpu" not in fusedrnn.backends():
    pytest.skip(f"fusedrnn.torch needs the compiled kernels ({fusedrnn.CORE_ERROR})",
                allow_module_level=True)
import fusedrnn.torch as frt  # noqa: E402  (after the skips)
from fusedrnn._torch_ops import backend_for  # noqa: E402



@pytest.fixture(autouse=True, scope="module")
def torch_threads_shared():
    """As a program importing fusedrnn.torch runs (the tests' conftest turns that off)."""
    frt.share_threads()
    yield
    frt.share_threads(False)


pack_padded_sequence = torch.nn.utils.rnn.pack_padded_sequence
pad_packed_sequence = torch.nn.utils.rnn.pad_packed_sequence

MODULES = {  # kind: (fusedrnn.torch class, torch.nn class, extra constructor arguments)
    "lstm": (frt.LSTM, torch.nn.LSTM, {}),
    "gru": (frt.GRU, torch.nn.GRU, {}),
    "rnn_tanh": (frt.RNN, torch.nn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (frt.RNN, torch.nn.RNN, {"nonlinearity": "relu"}),
}
# As in test_torch_parity.py: float64 differs from torch only in summation order; float32 by
# ~1e-7 rounding per operation over ~1e2 accumulated operations.
RTOL = {torch.float32: 1e-5, torch.float64: 1e-10}
T, B, I, H = 6, 3, 5, 4
LENGTHS = torch.tensor([4, T, 1])  # unsorted, so packing permutes the batch


def pair(kind, dtype=torch.float64, seed=0, **kwargs):
    """torch.nn's module from torch.manual_seed(seed) and fusedrnn's, loaded with its state."""
    ours, theirs, extra = MODULES[kind]
    torch.manual_seed(seed)
    reference = theirs(I, H, dtype=dtype, **extra, **kwargs)
    module = ours(I, H, dtype=dtype, **extra, **kwargs)
    module.load_state_dict(reference.state_dict())
    return module, reference


def inputs(kind, module, dtype, batched=True, state=True, seed=1):
    """x (requiring grad) and hx (requiring grad, or None), shaped for `module`."""
    gen = torch.Generator().manual_seed(seed)
    shape = ((B, T, I) if module.batch_first else (T, B, I)) if batched else (T, I)
    x = torch.rand(shape, generator=gen, dtype=dtype).mul(2).sub(1).requires_grad_()
    if not state:
        return x, None
    state_shape = (module.num_layers * (2 if module.bidirectional else 1),) + (
        (B,) if batched else ()) + (H,)
    parts = [torch.rand(state_shape, generator=gen, dtype=dtype).requires_grad_()
             for _ in range(2 if kind == "lstm" else 1)]
    return x, (tuple(parts) if kind == "lstm" else parts[0])


def leaves(state):
    return list(state) if isinstance(state, tuple) else [state]


def run(module, x, hx, packed, call=None):
    """Forward (through `call`, by default the module itself) and backward of a fixed random
    weighting of every output; returns the outputs and all gradients by name."""
    inp = pack_padded_sequence(x, LENGTHS, batch_first=module.batch_first,
                               enforce_sorted=False) if packed else x
    y, state = (module if call is None else call)(inp, hx)
    if packed:
        assert isinstance(y, torch.nn.utils.rnn.PackedSequence)
        y = pad_packed_sequence(y, batch_first=module.batch_first, total_length=T)[0]
    outputs = [y] + leaves(state)
    gen = torch.Generator().manual_seed(2)
    loss = sum((o * torch.rand(o.shape, generator=gen, dtype=o.dtype).to(o.device)).sum()
               for o in outputs)
    given = [x] if x.requires_grad else []
    wrt = given + ([] if hx is None else leaves(hx)) + list(module.parameters())
    grads = torch.autograd.grad(loss, wrt)
    names = ["dx"] * len(given) + [
        f"dhx[{k}]" for k in range(len(wrt) - len(given) - len(list(module.parameters())))]
    names += [f"d{name}" for name, _ in module.named_parameters()]
    results = {f"out[{k}]": o for k, o in enumerate(outputs)}
    results.update(zip(names, grads))
    return {k: v.detach().cpu() for k, v in results.items()}


CONFIGS = [  # (num_layers, bidirectional, batch_first, bias, state, packed)
    (1, False, False, True, False, False),
    (1, True, True, True, True, False),
    (2, False, True, False, True, True),
    (2, True, False, True, True, True),
    (3, True, True, True, False, True),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "L{}-bi{:d}-bf{:d}-bias{:d}-"
                         "state{:d}-packed{:d}".format(*c))
@pytest.mark.parametrize("kind", MODULES)
def test_equals_torch_nn(kind, config, dtype):
    layers, bidirectional, batch_first, bias, state, packed = config
    module, reference = pair(kind, dtype, num_layers=layers, bidirectional=bidirectional,
                             batch_first=batch_first, bias=bias)
    x, hx = inputs(kind, module, dtype, state=state)
    ours, theirs = run(module, x, hx, packed), run(reference, x, hx, packed)
    assert ours.keys() == theirs.keys()
    for name in theirs:
        assert rel_err(ours[name].numpy(), theirs[name].numpy()) < RTOL[dtype], name


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("kind", MODULES)
def test_input_without_grad_equals_torch_nn(kind, bidirectional):
    """x needs no gradient: the first layer's backward goes without dx (need_dx)."""
    module, reference = pair(kind, num_layers=2, bidirectional=bidirectional)
    x, hx = inputs(kind, module, torch.float64)
    x = x.detach()
    ours, theirs = run(module, x, hx, False), run(reference, x, hx, False)
    assert ours.keys() == theirs.keys() and "dx" not in ours
    for name in theirs:
        assert rel_err(ours[name].numpy(), theirs[name].numpy()) < 1e-10, name


@pytest.mark.parametrize("kind", MODULES)
def test_unbatched_input_equals_torch_nn(kind):
    module, reference = pair(kind, num_layers=2, bidirectional=True, batch_first=True)
    x, hx = inputs(kind, module, torch.float64, batched=False)
    ours, theirs = run(module, x, hx, False), run(reference, x, hx, False)
    for name in theirs:
        assert ours[name].shape == theirs[name].shape, name
        assert rel_err(ours[name].numpy(), theirs[name].numpy()) < 1e-10, name


@pytest.mark.parametrize("kind", MODULES)
def test_inference_without_grad_equals_torch_nn(kind):
    module, reference = pair(kind, dtype=torch.float32, num_layers=2, dropout=0.5)
    module.eval(), reference.eval()  # no dropout in eval mode
    x = torch.rand(T, B, I) * 2 - 1
    with torch.no_grad():
        (y, state), (y_ref, state_ref) = module(x), reference(x)
    for a, b in zip([y] + leaves(state), [y_ref] + leaves(state_ref)):
        assert rel_err(a.numpy(), b.numpy()) < 1e-5


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_backward_makes_no_zeros_for_the_tape(bidirectional):
    """The tape's outputs never get a gradient. Autograd's default made zeros of their shapes at
    every backward, a second tape's worth of memory (the backward now takes None for them)."""
    module = frt.LSTM(I, H, dtype=torch.float64, bidirectional=bidirectional)
    x = torch.rand(T, B, I, dtype=torch.float64, requires_grad=True)
    tape_bytes = 8 * (2 * (T + 1) * B * H + 4 * T * B * H) * (2 if bidirectional else 1)
    with torch.profiler.profile(profile_memory=True) as prof:
        y, _ = module(x)
        y.sum().backward()
    zeros = sum(e.cpu_memory_usage for e in prof.key_averages()
                if e.key in ("aten::zeros", "aten::new_zeros", "aten::zeros_like"))
    assert zeros < tape_bytes / 4, (zeros, tape_bytes)


@pytest.mark.parametrize("kind", MODULES)
def test_gradcheck(kind):
    """torch.autograd.gradcheck of every input and parameter (float64, finite differences)
    through two bidirectional layers with packed lengths and an initial state."""
    module, _ = pair(kind, num_layers=2, bidirectional=True)
    x, hx = inputs(kind, module, torch.float64)
    names = [name for name, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]

    def f(x, *rest):
        hx_parts, weights = rest[:len(rest) - len(names)], rest[len(rest) - len(names):]
        hx = tuple(hx_parts) if kind == "lstm" else hx_parts[0]
        packed = pack_padded_sequence(x, LENGTHS, enforce_sorted=False)
        y, state = torch.func.functional_call(module, dict(zip(names, weights)), (packed, hx))
        return (pad_packed_sequence(y)[0],) + tuple(leaves(state))

    assert torch.autograd.gradcheck(f, (x, *leaves(hx), *params), eps=1e-6, atol=1e-7)


def test_gradcheck_with_dropout_between_layers():
    """Dropout draws from torch's RNG; reseeding makes the function deterministic, and the
    gradients must still be those of the masked network."""
    module, _ = pair("gru", num_layers=3, dropout=0.4)
    module.train()
    x, hx = inputs("gru", module, torch.float64)

    def f(x, hx):
        torch.manual_seed(5)
        return module(x, hx)

    assert torch.autograd.gradcheck(f, (x, hx), eps=1e-6, atol=1e-7)
    torch.manual_seed(5)
    y_train = module(x, hx)[0]
    assert not torch.equal(y_train, module.eval()(x, hx)[0])  # the masks did act


@pytest.mark.parametrize("kind", MODULES)
def test_state_dict_loads_both_ways(kind):
    module, reference = pair(kind, num_layers=2, bidirectional=True)
    assert isinstance(module, torch.nn.RNNBase) and module.mode == reference.mode
    assert list(module.state_dict()) == list(reference.state_dict())
    assert repr(module).split("(", 1)[1] == repr(reference).split("(", 1)[1]
    torch.manual_seed(9)
    other = MODULES[kind][1](I, H, num_layers=2, bidirectional=True, dtype=torch.float64,
                             **MODULES[kind][2])
    other.load_state_dict(module.state_dict())
    for (name, a), b in zip(other.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_torch_compile_keeps_one_opaque_op_per_layer(bidirectional):
    """One op per layer and direction; on the CPU one for both directions of a layer."""
    module, _ = pair("lstm", num_layers=2, bidirectional=bidirectional)
    x, hx = inputs("lstm", module, torch.float64)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(module, backend=backend, fullgraph=True)
    eager, traced = run(module, x, hx, False), run(module, x, hx, False, compiled)
    for name in eager:
        assert torch.equal(eager[name], traced[name]), name
    calls = [node.target for node in graphs[0].graph.nodes if node.op == "call_function"]
    ops_per_layer = {torch.ops.fusedrnn.bilayer_forward.default: 2} if bidirectional else {
        torch.ops.fusedrnn.layer_forward.default: 2}
    assert {op: calls.count(op) for op in set(calls) if "fusedrnn" in str(op)} == ops_per_layer


def test_operator_schema_and_fake_shapes_agree():
    """torch.library's own consistency checks of the two ops (schema, fake vs real shapes,
    autograd registration)."""
    module, _ = pair("gru")
    x, hx = inputs("gru", module, torch.float64)
    args = (x, module.weight_ih_l0, module.weight_hh_l0, module.bias_ih_l0, module.bias_hh_l0,
            hx[0], None, LENGTHS, "gru", True, True, True)
    torch.library.opcheck(torch.ops.fusedrnn.layer_forward.default, args,
                          test_utils=("test_schema", "test_faketensor",
                                      "test_autograd_registration"))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_bidirectional_operator_schema_and_fake_shapes_agree(kind):
    """The same checks of the bidirectional layer's ops, forward and backward."""
    module, _ = pair(kind, bidirectional=True)
    x, hx = inputs(kind, module, torch.float64)
    h0, c0 = hx if kind == "lstm" else (hx, None)
    weights = [getattr(module, f"{name}_l0{suffix}") for suffix in ("", "_reverse")
               for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    args = (x, *weights, h0, c0, LENGTHS, kind, True, True)
    checks = ("test_schema", "test_faketensor", "test_autograd_registration")
    torch.library.opcheck(torch.ops.fusedrnn.bilayer_forward.default, args, test_utils=checks)
    _, h_n, c_n, *tapes = torch.ops.fusedrnn.bilayer_forward(*args)
    dy = torch.rand(T, B, 2 * H, dtype=torch.float64)
    torch.library.opcheck(torch.ops.fusedrnn.bilayer_backward.default,
                          (x, *weights, LENGTHS, *tapes, dy, torch.ones_like(h_n),
                           torch.ones_like(c_n), kind, True, True),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("make, error, match", [
    (lambda: frt.LSTM(I, H, proj_size=2), ValueError, "proj_size: expected 0"),
    (lambda: frt.GRU(I, H)(torch.zeros(T, B, I, dtype=torch.float16)), ValueError,
     "does not match weight dtype"),
    (lambda: frt.GRU(I, H, dtype=torch.float16)(torch.zeros(T, B, I, dtype=torch.float16)),
     TypeError, "input: expected a float32 or float64 tensor"),
    (lambda: frt.RNN(I, H)(torch.zeros(T, B, I, 1)), ValueError, "input: expected a 2-D"),
    (lambda: frt.RNN(I, H)(torch.zeros(T, B, I + 1)), RuntimeError, "input.size"),
    (lambda: frt.LSTM(I, H)(torch.zeros(T, I), (torch.zeros(1, 1, H),) * 2), RuntimeError,
     r"hx\[0\]: expected a 2-D tensor"),
])
def test_bad_input_names_the_problem(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.skipif("cuda" in fusedrnn.backends(), reason="this build has the CUDA backend")
def test_cuda_tensors_need_the_cuda_backend():
    with pytest.raises(RuntimeError, match="a CUDA tensor needs fusedrnn's CUDA backend"):
        backend_for(torch.device("cuda"))


def test_meta_tensors_give_torch_nn_shapes():
    """On the meta device (shapes only) the ops' fake implementations answer."""
    module, reference = pair("lstm", num_layers=2, bidirectional=True, batch_first=True)
    x = torch.zeros(B, T, I, device="meta", dtype=torch.float64)
    y, (h, c) = module.to("meta")(x)
    y_ref, (h_ref, c_ref) = reference.to("meta")(x)
    assert (y.shape, h.shape, c.shape) == (y_ref.shape, h_ref.shape, c_ref.shape)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device for torch")
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "L{}-bi{:d}-bf{:d}-bias{:d}-"
                         "state{:d}-packed{:d}".format(*c))
@pytest.mark.parametrize("kind", MODULES)
def test_cuda_tensors_run_on_the_cuda_backend_or_say_it_is_missing(kind, config):
    """On CUDA tensors the modules run fusedrnn's CUDA backend, forward and backward (the tape
    travels through autograd as views of the backend's tape), and equal torch.nn on cuDNN."""
    layers, bidirectional, batch_first, bias, state, packed = config
    module, reference = pair(kind, torch.float64, num_layers=layers, bidirectional=bidirectional,
                             batch_first=batch_first, bias=bias)
    module, reference = module.cuda(), reference.cuda()
    x, hx = inputs(kind, module, torch.float64, state=state)
    x = x.detach().cuda().requires_grad_()
    if hx is not None:
        hx = tuple(h.detach().cuda().requires_grad_() for h in leaves(hx))
        hx = hx if kind == "lstm" else hx[0]
    if "cuda" not in fusedrnn.backends():
        with pytest.raises(RuntimeError, match="needs fusedrnn's CUDA backend"):
            module(x, hx)
        return
    ours, theirs = run(module, x, hx, packed), run(reference, x, hx, packed)
    assert ours.keys() == theirs.keys()
    for name in theirs:
        assert rel_err(ours[name].numpy(), theirs[name].numpy()) < RTOL[torch.float64], name
