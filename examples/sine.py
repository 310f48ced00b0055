"""Sine prediction (seed 002): 20 samples of a sine wave predict the next one.

A 2-layer LSTM of 20 units with dropout between the layers reads each window; a linear head maps
the last output to the prediction; mean squared error, Adam. The data are the seed's: training
windows from sin over [0, 100), held-out windows from [100, 110), both sampled every 0.01.
Prints the held-out MSE (next to the "repeat the last sample" baseline, which a sine sampled this
finely makes strong) and saves a plot of predicted against real on the held-out range.

    python examples/sine.py [--quick] [--plot sine.png]
"""

import time

import numpy as np

import fusedrnn as fr
from fusedrnn import train

import example_setup

WINDOW = 20
TARGET_MSE = 1e-3  # the quality bar for the held-out range


def windows(series, steps=WINDOW):
    """(N, steps, 1) inputs and (N, 1) next values, as seed 002's generate_data builds them."""
    starts = np.arange(len(series) - steps - 1)
    x = series[starts[:, None] + np.arange(steps)]
    return x[:, :, None].astype(np.float32), series[starts + steps, None].astype(np.float32)


TEST_GRID = np.linspace(100, 110, 1000)


def seed_data():
    train_x, train_y = windows(np.sin(np.linspace(0, 100, 10000)))
    test_x, test_y = windows(np.sin(TEST_GRID))
    return train_x, train_y, test_x, test_y


class Model:
    """LSTM stack plus a linear head on the last step's output."""

    def __init__(self, hidden=20, layers=2, dropout=0.2, seed=0):
        self.rnn = fr.LSTM(1, hidden, num_layers=layers, dropout=dropout, batch_first=True,
                           seed=seed)
        self.head = train.Linear(hidden, 1, seed=seed + 1)

    def predict(self, x):
        y, _ = self.rnn(x)
        return self.head(y[:, -1])

    def train_step(self, x, target, opt):
        y, _, tape = self.rnn.forward(x, training=True)
        last = y[:, -1]
        loss, dpred = train.mse(self.head(last), target)
        dlast, dhead = self.head.backward(last, dpred)
        dy = np.zeros_like(y)
        dy[:, -1] = dlast
        _, _, drnn = self.rnn.backward(tape, dy, need_dx=False)
        opt.step([drnn, dhead])
        return loss


def save_plot(path, predicted, real):
    """The seed's figure: predicted (red) over the real sine (green, dashed). Returns the path,
    or None when matplotlib is not installed."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no GUI backend needed to save a PNG
    except ImportError:
        return None
    fig = Figure(figsize=(8, 3.5))
    ax = fig.subplots()
    t = TEST_GRID[WINDOW:WINDOW + len(real)]  # the time of each predicted sample
    ax.plot(t, predicted, "r", label="predicted")
    ax.plot(t, real, "g--", label="real sin")
    ax.set_xlabel("t")
    ax.set_title("fusedrnn LSTM: next-sample prediction on the held-out range")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def main(argv=None):
    parser = example_setup.parser(__doc__)
    parser.add_argument("--epochs", type=int, help="training epochs (default 30, quick 6)")
    parser.add_argument("--plot", default="sine.png", help="where to save the plot ('' for none)")
    args = parser.parse_args(argv)
    with example_setup.blas_threads(args.threads):
        return run(args)


def run(args):
    epochs = args.epochs or (6 if args.quick else 30)

    start = time.perf_counter()
    train_x, train_y, test_x, test_y = seed_data()
    model = Model(seed=args.seed)
    opt = train.Adam([model.rnn, model.head], lr=3e-3)
    rng = np.random.default_rng(args.seed)
    batch = 64
    bar = train.progress(range(epochs), desc="epoch")
    for _ in bar:
        order = rng.permutation(len(train_x))
        losses = [model.train_step(train_x[idx], train_y[idx], opt)
                  for idx in np.array_split(order, len(order) // batch)]
        bar.show(train_mse=float(np.mean(losses)))

    predicted = model.predict(test_x)
    test_mse = float(np.mean((predicted - test_y) ** 2))
    baseline = float(np.mean((test_x[:, -1] - test_y) ** 2))
    seconds = time.perf_counter() - start
    print(f"held-out MSE {test_mse:.2e} (target <= {TARGET_MSE:.0e}; repeating the last sample "
          f"gives {baseline:.2e})  [{seconds:.1f} s]")
    plot = save_plot(args.plot, predicted[:, 0], test_y[:, 0]) if args.plot else None
    if args.plot:
        print(f"plot saved to {plot}" if plot else "plot skipped: matplotlib is not installed")
    return {"test_mse": test_mse, "baseline_mse": baseline, "seconds": seconds, "plot": plot}


if __name__ == "__main__":
    main()
