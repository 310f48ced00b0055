"""Character-level language model (seeds 001/002, "Anna Karenina"): a 2-layer LSTM learns to
predict the next character of a text and then writes new text.

Training uses truncated backpropagation through time: the text is cut into parallel streams,
read in chunks whose final state starts the next chunk while gradients stop at chunk borders
(fusedrnn.tbptt); gradients are clipped by their global norm; Adam. Sampling feeds the model its
own output one step at a time (``LSTM.step``), drawing each character from the softmax at a
temperature. Default text: sources of the Python standard library (this machine has them); give
any UTF-8 text with --text (e.g. Anna Karenina from Project Gutenberg). Prints the loss per
character (nats; bits in brackets) as it falls, the held-out loss, and a sample.

    python examples/char_lm.py [--quick] [--text FILE] [--prime "def "] [--temperature 0.8]
"""

import inspect
import math
import pathlib
import time

import numpy as np

import fusedrnn as fr
from fusedrnn import tbptt, train

import example_setup

DEFAULT_MODULES = ("argparse", "textwrap", "difflib", "inspect", "functools", "dataclasses")


def default_text():
    """The sources of a few pure-Python standard library modules, one after another."""
    modules = [__import__(name) for name in DEFAULT_MODULES]
    return "".join(inspect.getsource(m) for m in modules)


class Vocabulary:
    def __init__(self, text):
        self.chars = sorted(set(text))
        self._index = {c: i for i, c in enumerate(self.chars)}

    def __len__(self):
        return len(self.chars)

    def encode(self, text):
        unknown = sorted(set(text) - set(self._index))
        if unknown:
            raise ValueError(f"characters {unknown} do not occur in the training text")
        return np.array([self._index[c] for c in text], np.int64)

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)

    def one_hot(self, ids, dtype=np.float32):
        return np.eye(len(self), dtype=dtype)[ids]


def streams(ids, batch):
    """ids cut into `batch` equal, contiguous streams: (batch, N). Stream b continues where the
    text left stream b-1 off, so each row is a long, coherent piece of text."""
    n = len(ids) // batch
    return ids[:n * batch].reshape(batch, n)


def chunk_starts(length, steps):
    """Starts of the chunks over a (B, length) stream; each chunk needs steps + 1 ids (the
    targets are the inputs shifted by one)."""
    return range(0, length - steps, steps)


class CharModel:
    """A recurrent stack over one-hot characters and a linear head giving next-character logits.
    ``make_rnn(input_size)`` builds the stack, batch_first."""

    def __init__(self, vocab, make_rnn, seed=0):
        self.vocab = vocab
        self.rnn = make_rnn(len(vocab))
        self.head = train.Linear(self.rnn.hidden_size, len(vocab), seed=seed + 1)
        self.models = [self.rnn, self.head]

    def train_chunks(self, data, steps, opt, clip, state=None):
        """One pass of truncated BPTT over `data` (B, N); yields the loss of each chunk."""
        starts = chunk_starts(data.shape[1], steps)
        inputs = (self.vocab.one_hot(data[:, s:s + steps]) for s in starts)
        for chunk, s in zip(tbptt.run(self.rnn, inputs, state), starts):
            loss, dlogits = train.softmax_cross_entropy(self.head(chunk.y),
                                                        data[:, s + 1:s + steps + 1])
            dy, dhead = self.head.backward(chunk.y, dlogits)
            _, drnn = chunk.backward(dy, need_dx=False)
            train.clip_grad_norm([drnn, dhead], clip)
            opt.step([drnn, dhead])
            yield loss

    def evaluate(self, data, steps):
        """Mean loss per character over `data` (B, N), the state carried across chunks."""
        state, total, count = None, 0.0, 0
        for s in chunk_starts(data.shape[1], steps):
            y, state = self.rnn(self.vocab.one_hot(data[:, s:s + steps]), state)
            loss, _ = train.softmax_cross_entropy(self.head(y), data[:, s + 1:s + steps + 1])
            total, count = total + loss * y.shape[1], count + y.shape[1]
        return total / count

    def sample(self, prime, length, temperature, rng):
        """`prime` followed by `length` characters drawn one at a time."""
        y, state = self.rnn(self.vocab.one_hot(self.vocab.encode(prime))[None])
        out = []
        logits = self.head(y[0, -1])
        for _ in range(length):
            c = rng.choice(len(self.vocab), p=train.softmax(logits.astype(np.float64),
                                                            temperature))
            out.append(c)
            y, state = self.rnn.step(self.vocab.one_hot(c)[None], state)
            logits = self.head(y[0])
        return prime + self.vocab.decode(out)


def fit(model, text, *, batch, steps, updates, lr, clip, desc="train"):
    """Trains on the first 90 % of `text` for `updates` chunks (looping over the streams as
    often as needed), then measures the held-out loss on the rest. Returns a dict: the training
    loss curve (per chunk), held-out loss before and after, seconds."""
    ids = model.vocab.encode(text)
    split = int(len(ids) * 0.9)
    train_data, held_out = streams(ids[:split], batch), streams(ids[split:], 8)
    if held_out.shape[1] <= steps or train_data.shape[1] <= steps:
        raise ValueError(f"text: {len(ids)} characters are too few for streams of {steps + 1} "
                         f"(need about {(steps + 1) * 8 * 10} or more)")
    opt = train.Adam(model.models, lr=lr)
    start = time.perf_counter()
    before = model.evaluate(held_out, steps)
    curve = []
    bar = train.progress(range(updates), desc=desc)
    losses = iter(())
    for _ in bar:
        loss = next(losses, None)
        if loss is None:  # a new pass over the text, from a zero state
            losses = model.train_chunks(train_data, steps, opt, clip)
            loss = next(losses)
        curve.append(loss)
        bar.show(loss=float(np.mean(curve[-20:])))
    after = model.evaluate(held_out, steps)
    return {"curve": curve, "held_out_before": before, "held_out": after,
            "seconds": time.perf_counter() - start}


def bits(nats):
    return nats / math.log(2)


# Quick mode trades model size and step length for more, cheaper updates at a higher rate.
SETTINGS = {"full": dict(hidden=256, batch=32, steps=64, updates=2000, lr=3e-3),
            "quick": dict(hidden=128, batch=16, steps=32, updates=300, lr=1e-2)}


def main(argv=None):
    parser = example_setup.parser(__doc__)
    parser.add_argument("--text", help="a UTF-8 text file (default: Python standard library "
                        "sources)")
    parser.add_argument("--hidden", type=int, help="LSTM units per layer (default 256, quick 128)")
    parser.add_argument("--updates", type=int, help="training chunks (default 2000, quick 300)")
    parser.add_argument("--prime", default="def ", help="text the sample starts from")
    parser.add_argument("--temperature", type=float, default=0.8,
                        help="sampling temperature: below 1 is safer, above 1 wilder")
    parser.add_argument("--length", type=int, default=400, help="characters to sample")
    args = parser.parse_args(argv)
    with example_setup.blas_threads(args.threads):
        return run(args)


def run(args):
    settings = dict(SETTINGS["quick" if args.quick else "full"])
    settings.update({k: getattr(args, k) for k in ("hidden", "updates") if getattr(args, k)})
    hidden = settings.pop("hidden")
    text = pathlib.Path(args.text).read_text(encoding="utf-8") if args.text else default_text()
    vocab = Vocabulary(text)
    vocab.encode(args.prime)  # an unknown character fails now rather than after training
    print(f"text: {len(text)} characters, {len(vocab)} distinct; 2-layer LSTM of {hidden} units")
    model = CharModel(vocab, lambda v: fr.LSTM(v, hidden, num_layers=2, dropout=0.1,
                                               batch_first=True, seed=args.seed), args.seed)
    result = fit(model, text, clip=5.0, **settings)
    curve = result["curve"]
    first, last = float(np.mean(curve[:10])), float(np.mean(curve[-10:]))
    print(f"training loss per character: {first:.3f} ({bits(first):.2f} bits) over the first 10 "
          f"chunks -> {last:.3f} ({bits(last):.2f} bits) over the last 10")
    print(f"held-out loss per character: {result['held_out_before']:.3f} untrained -> "
          f"{result['held_out']:.3f} ({bits(result['held_out']):.2f} bits)  "
          f"[{result['seconds']:.1f} s]")
    sample = model.sample(args.prime, args.length, args.temperature,
                          np.random.default_rng(args.seed))
    print(f"--- sample (temperature {args.temperature}) ---\n{sample}\n---")
    return {**result, "first_loss": first, "last_loss": last, "sample": sample,
            "uniform_loss": math.log(len(vocab))}


if __name__ == "__main__":
    main()
