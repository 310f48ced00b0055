"""Parity with torch.nn.LSTM, GRU and RNN: outputs, final states and the gradients torch's
autograd computes, with torch's parameters loaded into the fusedrnn layers and back."""

import functools

import numpy as np
import pytest
from conftest import LAYERS, leaves, random_state, rel_err, run_layer

torch = pytest.importorskip("torch", reason="torch parity tests need torch")
pack_padded_sequence = torch.nn.utils.rnn.pack_padded_sequence
pad_packed_sequence = torch.nn.utils.rnn.pad_packed_sequence

# torch's GRU applies the reset gate after the recurrent product: no reset-before counterpart.
TORCH = {
    "lstm": torch.nn.LSTM,
    "gru": torch.nn.GRU,
    "rnn_tanh": functools.partial(torch.nn.RNN, nonlinearity="tanh"),
    "rnn_relu": functools.partial(torch.nn.RNN, nonlinearity="relu"),
}
# float64: the same arithmetic in another summation order; float32: ~1e-7 rounding per
# operation over ~1e2 accumulated operations (see test_kernels.py).
RTOL = {np.float32: 1e-5, np.float64: 1e-10}
TORCH_DTYPES = {np.float32: torch.float32, np.float64: torch.float64}
DTYPES = list(RTOL)

T, B, I, H = 6, 3, 5, 4
LENGTHS = np.array([T, 1, 4])


def torch_pair(kind, dtype, seed=0, **kwargs):
    """A torch module from torch.manual_seed(seed) and a fusedrnn layer loaded with its
    parameters."""
    torch.manual_seed(seed)
    module = TORCH[kind](I, H, dtype=TORCH_DTYPES[dtype], **kwargs)
    layer = LAYERS[kind](I, H, dtype=dtype, backend="cpu", **kwargs)
    layer.load_state_dict({k: v.detach().numpy() for k, v in module.state_dict().items()})
    return module, layer


def run_torch(module, x, state, lengths, dy, dstate):
    """torch's forward and autograd backward, named as :func:`conftest.run_layer` names them
    (dstate0 only when an initial state is given)."""
    x = torch.tensor(x, requires_grad=True)
    state = None if state is None else [torch.tensor(s, requires_grad=True) for s in leaves(state)]
    inp = x if lengths is None else pack_padded_sequence(
        x, lengths.tolist(), batch_first=module.batch_first, enforce_sorted=False)
    hx = None if state is None else tuple(state) if isinstance(module, torch.nn.LSTM) else state[0]
    y, state_n = module(inp, hx)
    if lengths is not None:
        y = pad_packed_sequence(y, batch_first=module.batch_first, total_length=T)[0]
    loss = (y * torch.from_numpy(dy)).sum() + sum(
        (s * torch.from_numpy(d)).sum() for s, d in zip(leaves(state_n), leaves(dstate)))
    loss.backward()
    out = dict(y=y, dx=x.grad, **{k: p.grad for k, p in module.named_parameters()},
               **{f"state_n[{k}]": s for k, s in enumerate(leaves(state_n))},
               **{f"dstate0[{k}]": s.grad for k, s in enumerate(state or ())})
    return {k: v.detach().numpy() for k, v in out.items()}


def check_torch_parity(kind, dtype, x_shape, lengths=None, with_state=True, **kwargs):
    module, layer = torch_pair(kind, dtype, num_layers=2, **kwargs)
    rng = np.random.default_rng(20)
    batch = None if len(x_shape) == 2 else B
    x = rng.uniform(-1, 1, x_shape).astype(dtype)
    state = random_state(rng, layer, batch) if with_state else None
    dstate = random_state(rng, layer, batch)
    dy = rng.uniform(-1, 1, x_shape[:-1] + (layer.num_directions * H,)).astype(dtype)
    want = run_torch(module, x, state, lengths, dy, dstate)
    got = run_layer(layer, x, state, lengths, dy, dstate)
    assert want.keys() <= got.keys()
    for name, value in want.items():
        assert rel_err(got[name], value) < RTOL[dtype], name


@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "state"])
@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["padded", "packed"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", TORCH)
def test_matches_torch(kind, dtype, bidirectional, batch_first, lengths, with_state):
    check_torch_parity(kind, dtype, (B, T, I) if batch_first else (T, B, I), lengths, with_state,
                       bidirectional=bidirectional, batch_first=batch_first)


@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "state"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", TORCH)
def test_unbatched_matches_torch(kind, dtype, bidirectional, with_state):
    check_torch_parity(kind, dtype, (T, I), with_state=with_state, bidirectional=bidirectional)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("kind", TORCH)
def test_state_dict_loads_into_torch(kind, bidirectional):
    layer = LAYERS[kind](I, H, num_layers=2, bidirectional=bidirectional, dtype="float64",
                         seed=21, backend="cpu")
    module = TORCH[kind](I, H, num_layers=2, bidirectional=bidirectional, dtype=torch.float64)
    module.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    x = np.random.default_rng(22).uniform(-1, 1, (T, B, I))
    y, state = layer(x)
    with torch.no_grad():
        y_torch, state_torch = module(torch.from_numpy(x))
    assert rel_err(y, y_torch.numpy()) < 1e-10
    assert len(leaves(state)) == len(leaves(state_torch))
    for s, s_torch in zip(leaves(state), leaves(state_torch)):
        assert rel_err(s, s_torch.numpy()) < 1e-10


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", LAYERS)
def test_init_distribution(kind, dtype):
    def params(seed):
        return LAYERS[kind](I, H, num_layers=2, bidirectional=True, dtype=dtype, seed=seed,
                            backend="numpy").state_dict()

    torch.manual_seed(0)
    expected = TORCH[kind.replace("_reset_before", "")](I, H, num_layers=2, bidirectional=True)
    first = params(1)
    assert {k: v.shape for k, v in first.items()} == {
        k: tuple(v.shape) for k, v in expected.state_dict().items()}
    # torch.nn's initialisation: every parameter uniform in ±1/√H (the bound rounded like them).
    bound = dtype(1 / np.sqrt(H))
    values = np.concatenate([p.ravel() for p in first.values()])
    assert values.dtype == dtype
    assert np.all(np.abs(values) <= bound)
    assert np.abs(values).max() > 0.95 * bound  # the whole range is used ...
    assert abs(values.std() / (bound / np.sqrt(3)) - 1) < 0.1  # ... with a uniform's spread
    assert abs(values.mean()) < 0.1 * bound
    for name, p in params(1).items():
        np.testing.assert_array_equal(p, first[name], err_msg=name)
    for name, p in params(2).items():
        assert not np.any(p == first[name]), name
