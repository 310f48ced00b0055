"""The NumPy vanilla RNN of seed 004, expressed with fusedrnn and checked against the seed's
own formulas, then trained as a character model.

Seed 004's model reads one-hot words x_t and computes h_t = tanh(W x_t + U h_{t-1} + b_h),
o_t = softmax(V h_t + b_y), loss L = -sum_t log o_t[y_t]. Its BPTT sends each output's error
back at most ``truncate`` steps. In fusedrnn terms: an RNN layer (tanh) with weight_ih = W,
weight_hh = U, bias_ih = b_h (bias_hh = 0), a linear head (V, b_y) and softmax cross-entropy;
the seed's truncation becomes one fused backward over a batch of windows, window t being the
steps max(0, t - truncate)..t started from the state the full forward had there, with the error
of output t entering at its last step. Both are compared with the seed's formulas in NumPy
(written out below, with two slips of the seed's listing corrected: the bias sits outside
U·h_{t-1}, and the error flows back through U, not W). Then the same model is trained on the
Zen of Python with truncated BPTT in chunks (fusedrnn.tbptt) and plain SGD, and samples text.

    python examples/vanilla_rnn.py [--quick]
"""

import contextlib
import io
import math
import time

import numpy as np

import fusedrnn as fr
from fusedrnn import tbptt, train

import example_setup

GRAD_RTOL = 1e-10  # float64: the same sums in another order (the kernels' GEMMs) agree this far


# ---------------------------------------------------------------------------------------------
# Seed 004's formulas, in NumPy, one time step at a time
# ---------------------------------------------------------------------------------------------
def seed_forward(p, x):
    """h (T+1, H) with h[-1] the zero initial state (the seed's indexing), o (T, vocab)."""
    T, H = len(x), p["U"].shape[0]
    h = np.zeros((T + 1, H))
    o = np.zeros((T, p["V"].shape[0]))
    for t in range(T):
        h[t] = np.tanh(p["W"][:, x[t]] + p["U"] @ h[t - 1] + p["bh"])
        z = p["V"] @ h[t] + p["by"]
        o[t] = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    return h, o


def seed_loss(p, x, y):
    _, o = seed_forward(p, x)
    return -np.sum(np.log(o[np.arange(len(y)), y]))


def seed_bptt(p, x, y, truncate):
    """The seed's truncated BPTT: output t's error goes back through steps t, ..., t-truncate."""
    h, o = seed_forward(p, x)
    g = {k: np.zeros_like(v) for k, v in p.items()}
    delta_o = o.copy()
    delta_o[np.arange(len(y)), y] -= 1
    for t in reversed(range(len(y))):
        g["V"] += np.outer(delta_o[t], h[t])
        g["by"] += delta_o[t]
        delta = (p["V"].T @ delta_o[t]) * (1 - h[t] ** 2)
        for k in range(t, max(0, t - truncate) - 1, -1):
            g["U"] += np.outer(delta, h[k - 1])
            g["bh"] += delta
            g["W"][:, x[k]] += delta
            delta = (p["U"].T @ delta) * (1 - h[k - 1] ** 2)
    return g


# ---------------------------------------------------------------------------------------------
# The same model in fusedrnn
# ---------------------------------------------------------------------------------------------
class SeedRNN:
    """Seed 004's parameters held as an fr.RNN (tanh) and a train.Linear head, float64."""

    def __init__(self, vocab, hidden, seed=0, dtype="float64"):
        self.vocab = vocab
        self.rnn = fr.RNN(vocab, hidden, nonlinearity="tanh", dtype=dtype, seed=seed)
        self.head = train.Linear(hidden, vocab, dtype=dtype, seed=seed + 1)
        sd = self.rnn.state_dict()
        sd["bias_hh_l0"][:] = 0  # the seed has one bias, b_h: keep it in bias_ih
        self.rnn.load_state_dict(sd)

    def seed_params(self):
        sd, head = self.rnn.state_dict(), self.head.state_dict()
        return {"W": sd["weight_ih_l0"], "U": sd["weight_hh_l0"], "bh": sd["bias_ih_l0"],
                "V": head["weight"], "by": head["bias"]}

    def one_hot(self, ids):
        return np.eye(self.vocab, dtype=self.rnn.dtype)[ids]

    def loss_and_grads(self, x, y, truncate=None):
        """The seed's loss (a sum over steps) and its gradients under the seed's names, computed
        by fusedrnn's kernels; truncate=None is full BPTT."""
        T = len(x)
        hs, _, tape = self.rnn.forward(self.one_hot(x)[:, None], training=True)  # (T, 1, H)
        h = hs[:, 0]
        mean_loss, dlogits = train.softmax_cross_entropy(self.head(h), y)
        dlogits *= T  # the seed sums the steps' losses; softmax_cross_entropy averages them
        dh, dhead = self.head.backward(h, dlogits)
        if truncate is None or truncate >= T - 1:
            _, _, drnn = self.rnn.backward(tape, dh[:, None], need_dx=False)
        else:
            drnn = self._windows_backward(x, h, dh, truncate)
        return mean_loss * T, {"W": drnn["weight_ih_l0"], "U": drnn["weight_hh_l0"],
                               "bh": drnn["bias_ih_l0"], "V": dhead["weight"],
                               "by": dhead["bias"]}

    def _windows_backward(self, x, h, dh, truncate):
        """The seed's per-output truncation as one batched forward and backward: window t (a
        batch row) holds steps start..t, start = max(0, t - truncate), begins from the state the
        full forward had before `start`, and receives output t's error at its last step.
        Gradients that would leave a window (into its initial state) are dropped."""
        T, steps = len(x), truncate + 1
        t = np.arange(T)
        start = np.maximum(0, t - truncate)
        lengths = t - start + 1
        idx = np.minimum(start[None, :] + np.arange(steps)[:, None], T - 1)  # (steps, T)
        xs = self.one_hot(x[idx])  # padding past each length is ignored by the kernels
        h0 = np.where((start > 0)[:, None], h[start - 1], 0.0)[None]
        y, _, tape = self.rnn.forward(xs, h0, lengths=lengths, training=True)
        dy = np.zeros_like(y)
        dy[lengths - 1, t] = dh
        _, _, drnn = self.rnn.backward(tape, dy, need_dx=False)
        return drnn


def check_against_seed(seed=0, vocab=8, hidden=6, T=10, truncate=3):
    """Largest relative difference between fusedrnn's and the seed's loss and gradients, for
    full BPTT and for the seed's truncation."""
    rng = np.random.default_rng(seed)
    model = SeedRNN(vocab, hidden, seed)
    p = model.seed_params()
    x, y = rng.integers(0, vocab, T), rng.integers(0, vocab, T)
    errors = {}
    for label, trunc in (("full BPTT", None), (f"truncated to {truncate} steps", truncate)):
        loss, grads = model.loss_and_grads(x, y, trunc)
        want = seed_bptt(p, x, y, T if trunc is None else trunc)
        errors[label] = max([abs(loss - seed_loss(p, x, y)) / abs(seed_loss(p, x, y))] + [
            np.max(np.abs(grads[k] - want[k])) / np.max(np.abs(want[k])) for k in want])
    return errors


# ---------------------------------------------------------------------------------------------
# Training on a small text
# ---------------------------------------------------------------------------------------------
def zen_of_python():
    """PEP 20, which the module `this` holds rot13-encoded (and prints when first imported)."""
    with contextlib.redirect_stdout(io.StringIO()):
        import this
    return "".join(this.d.get(c, c) for c in this.s)


def train_chars(text, hidden, epochs, steps, lr, seed):
    chars = sorted(set(text))
    ids = np.array([chars.index(c) for c in text])
    model = SeedRNN(len(chars), hidden, seed, dtype="float32")
    opt = train.SGD([model.rnn, model.head], lr=lr, momentum=0.9)
    batch = 4
    n = (len(ids) - 1) // batch
    xs, ys = ids[:n * batch].reshape(batch, n), ids[1:n * batch + 1].reshape(batch, n)
    curve = []
    bar = train.progress(range(epochs), desc="epoch")
    for _ in bar:
        starts = range(0, n - steps + 1, steps)
        losses = []
        inputs = (model.one_hot(xs[:, s:s + steps]).transpose(1, 0, 2) for s in starts)
        for chunk, s in zip(tbptt.run(model.rnn, inputs), starts):
            loss, dlogits = train.softmax_cross_entropy(model.head(chunk.y),
                                                        ys[:, s:s + steps].T)
            dy, dhead = model.head.backward(chunk.y, dlogits)
            _, drnn = chunk.backward(dy, need_dx=False)
            train.clip_grad_norm([drnn, dhead], 5.0)
            opt.step([drnn, dhead])
            losses.append(loss)
        curve.append(float(np.mean(losses)))
        bar.show(loss=curve[-1])
    return model, chars, curve


def sample(model, chars, prime, length, temperature, rng):
    out, state = list(prime), None
    for c in prime:
        y, state = model.rnn.step(model.one_hot(chars.index(c)), state)
    for _ in range(length):
        p = train.softmax(model.head(y).astype(np.float64), temperature)
        out.append(chars[rng.choice(len(chars), p=p)])
        y, state = model.rnn.step(model.one_hot(chars.index(out[-1])), state)
    return "".join(out)


def main(argv=None):
    parser = example_setup.parser(__doc__)
    parser.add_argument("--epochs", type=int, help="training epochs (default 300, quick 120)")
    args = parser.parse_args(argv)
    with example_setup.blas_threads(args.threads):
        return run(args)


def run(args):
    start = time.perf_counter()
    errors = check_against_seed(args.seed)
    for label, err in errors.items():
        print(f"seed 004 formulas vs fusedrnn, {label}: largest relative difference {err:.1e}")
    text = zen_of_python()
    model, chars, curve = train_chars(text, hidden=128, epochs=args.epochs or (
        120 if args.quick else 300), steps=25, lr=0.02, seed=args.seed)
    print(f"Zen of Python, {len(text)} characters: loss per character {curve[0]:.3f} (first "
          f"epoch; uniform {math.log(len(chars)):.3f}) -> {curve[-1]:.3f} (last)")
    text_out = sample(model, chars, "Beautiful", 300, 0.5, np.random.default_rng(args.seed))
    seconds = time.perf_counter() - start
    print(f"--- sample (temperature 0.5) ---\n{text_out}\n---  [{seconds:.1f} s]")
    return {"grad_errors": errors, "curve": curve, "sample": text_out, "seconds": seconds,
            "uniform_loss": math.log(len(chars))}


if __name__ == "__main__":
    main()
