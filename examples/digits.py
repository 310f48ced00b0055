"""Digit classification row by row (seed 003): an image is a sequence of its pixel rows.

An LSTM reads the rows top to bottom; a bidirectional LSTM reads them both ways. A linear head on
the final hidden state (both directions' final states for the BiLSTM) gives the class; softmax
cross-entropy, Adam. Seed 003 used MNIST (28 rows of 28 pixels), which cannot be downloaded here:
the default is scikit-learn's bundled digits (1797 images, 8 rows of 8), and ``--mnist`` takes a
local MNIST as a Keras-style ``.npz`` (x_train, y_train, x_test, y_test) or a directory holding
the four IDX files (train-images-idx3-ubyte, ..., optionally .gz). Prints test accuracy for
both models and the BiLSTM's confusion matrix.

    python examples/digits.py [--quick] [--mnist PATH]
"""

import gzip
import pathlib
import time

import numpy as np

import fusedrnn as fr
from fusedrnn import train

import example_setup

TARGET_BILSTM_ACCURACY = 0.95  # the bar on the bundled digits


# ---------------------------------------------------------------------------------------------
# Data: (images (N, rows, cols) float32 in [0, 1], labels (N,) int) for train and test
# ---------------------------------------------------------------------------------------------
def sklearn_digits(seed=0, test_fraction=0.25):
    from sklearn.datasets import load_digits  # optional: fusedrnn[examples]

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)  # pixel values are 0..16
    order = np.random.default_rng(seed).permutation(len(images))
    n_test = int(len(images) * test_fraction)
    test, tr = order[:n_test], order[n_test:]
    return images[tr], digits.target[tr], images[test], digits.target[test]


def read_idx(path):
    """An IDX file (the format MNIST ships in), gzipped or not, as a uint8 array."""
    path = pathlib.Path(path)
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path}: not an IDX file of unsigned bytes (magic {data[:4].hex()})")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != np.prod(shape):
        raise ValueError(f"{path}: header says shape {shape}, file holds {body.size} values")
    return body.reshape(shape)


def mnist(path):
    path = pathlib.Path(path)
    if path.suffix == ".npz":
        with np.load(path) as f:
            parts = [f[k] for k in ("x_train", "y_train", "x_test", "y_test")]
    else:
        def find(stem):
            for name in (stem, stem + ".gz"):
                if (path / name).exists():
                    return read_idx(path / name)
            raise FileNotFoundError(f"{path}: no {stem} or {stem}.gz")
        parts = [find(s) for s in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                   "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")]
    x_train, y_train, x_test, y_test = parts
    return ((x_train / 255.0).astype(np.float32), y_train.astype(np.int64),
            (x_test / 255.0).astype(np.float32), y_test.astype(np.int64))


# ---------------------------------------------------------------------------------------------
# The classifier
# ---------------------------------------------------------------------------------------------
class RowClassifier:
    """LSTM (or BiLSTM) over the rows, linear head on the final hidden state(s)."""

    def __init__(self, row_width, hidden, bidirectional, classes=10, seed=0):
        self.rnn = fr.LSTM(row_width, hidden, bidirectional=bidirectional, batch_first=True,
                           seed=seed)
        self.head = train.Linear(self.rnn.num_directions * hidden, classes, seed=seed + 1)

    @staticmethod
    def _features(h_n):
        # (directions, B, H) -> (B, directions*H): the forward state after the last row and,
        # for the BiLSTM, the reverse state after the first row (it has read every row).
        return np.concatenate(list(h_n), axis=1)

    def logits(self, images):
        _, (h_n, _) = self.rnn(images)
        return self.head(self._features(h_n))

    def train_step(self, images, labels, opt):
        y, (h_n, _), tape = self.rnn.forward(images, training=True)
        features = self._features(h_n)
        loss, dlogits = train.softmax_cross_entropy(self.head(features), labels)
        dfeatures, dhead = self.head.backward(features, dlogits)
        dh_n = np.stack(np.split(dfeatures, self.rnn.num_directions, axis=1))
        _, _, drnn = self.rnn.backward(tape, np.zeros_like(y), (dh_n, np.zeros_like(dh_n)),
                                       need_dx=False)
        opt.step([drnn, dhead])
        return loss

    def predict(self, images, batch=1000):
        return np.concatenate([self.logits(images[i:i + batch]).argmax(axis=1)
                               for i in range(0, len(images), batch)])


def fit(model, x, y, epochs, batch, lr, seed, desc):
    opt = train.Adam([model.rnn, model.head], lr=lr)
    rng = np.random.default_rng(seed)
    bar = train.progress(range(epochs), desc=desc)
    for _ in bar:
        order = rng.permutation(len(x))
        losses = [model.train_step(x[idx], y[idx], opt)
                  for idx in np.array_split(order, max(1, len(order) // batch))]
        bar.show(loss=float(np.mean(losses)))


def confusion_text(labels, predicted, classes=10):
    counts = np.zeros((classes, classes), int)
    np.add.at(counts, (labels, predicted), 1)
    lines = ["true\\pred " + " ".join(f"{c:4d}" for c in range(classes))]
    lines += [f"{r:9d} " + " ".join(f"{n:4d}" for n in row) for r, row in enumerate(counts)]
    return "\n".join(lines)


# Per data set: epochs (full, quick), units per direction, batch size, Adam's learning rate.
SETTINGS = {"digits": dict(epochs=60, quick_epochs=25, hidden=64, batch=64, lr=1e-2),
            "mnist": dict(epochs=3, quick_epochs=1, hidden=128, batch=128, lr=3e-3)}


def main(argv=None):
    parser = example_setup.parser(__doc__)
    parser.add_argument("--mnist", help="a local MNIST: .npz, or a directory of IDX files")
    parser.add_argument("--epochs", type=int, help="default: 60 (digits), 3 (MNIST); quick: 25, 1")
    parser.add_argument("--hidden", type=int, help="units per direction (default 64, MNIST 128)")
    args = parser.parse_args(argv)
    with example_setup.blas_threads(args.threads):
        return run(args)


def run(args):
    if args.mnist:
        data, name, settings = mnist(args.mnist), "MNIST", SETTINGS["mnist"]
    else:
        try:
            data = sklearn_digits(args.seed)
        except ImportError:
            raise SystemExit("the bundled digits need scikit-learn (pip install "
                             "'fusedrnn[examples]'), or give a local MNIST with --mnist") from None
        name, settings = "scikit-learn digits", SETTINGS["digits"]
    epochs = args.epochs or settings["quick_epochs" if args.quick else "epochs"]
    hidden = args.hidden or settings["hidden"]
    x_train, y_train, x_test, y_test = data
    if args.quick and args.mnist:  # a tenth of MNIST keeps quick mode under a minute
        x_train, y_train = x_train[:6000], y_train[:6000]
    print(f"{name}: {len(x_train)} training and {len(x_test)} test images of "
          f"{x_train.shape[1]} rows x {x_train.shape[2]} pixels")

    results = {}
    for label, bidirectional in (("LSTM", False), ("BiLSTM", True)):
        start = time.perf_counter()
        model = RowClassifier(x_train.shape[2], hidden, bidirectional, seed=args.seed)
        fit(model, x_train, y_train, epochs, settings["batch"], settings["lr"], args.seed,
            desc=label)
        predicted = model.predict(x_test)
        accuracy = float(np.mean(predicted == y_test))
        seconds = time.perf_counter() - start
        print(f"{label:6s} test accuracy {accuracy:.4f}  [{seconds:.1f} s]")
        results[label] = {"accuracy": accuracy, "seconds": seconds}
    print("BiLSTM confusion matrix (rows: true digit, columns: predicted):")
    print(confusion_text(y_test, predicted))
    return results


if __name__ == "__main__":
    main()
