"""The two GRUs of seed 001 compared on the character language model of char_lm.py.

Seed 001 writes the GRU candidate as tanh(W_c[Γ_r ⊙ c_{t-1}, x_t] + b_c): the reset gate acts
before the recurrent product (Cho et al. 2014; fr.GRU(reset_after=False)). torch, cuDNN and
Keras by default apply it after: tanh(W x + b + Γ_r ⊙ (U c_{t-1} + b_U)) (fr.GRU(), the
default). Same parameters, same data, same seeds, same training (truncated BPTT, clipping,
Adam); the table gives the held-out loss per character and the training time of each, and a
plot of the training curves is saved when matplotlib is installed.

    python examples/gru_variants.py [--quick] [--text FILE] [--seeds 3] [--plot gru_variants.png]
"""

import pathlib

import numpy as np

import fusedrnn as fr

import char_lm
import example_setup

VARIANTS = {"reset after (torch, cuDNN)": True, "reset before (seed 001, Cho et al.)": False}
SETTINGS = {"full": dict(hidden=128, batch=16, steps=32, updates=1500, lr=5e-3),
            "quick": dict(hidden=64, batch=16, steps=32, updates=300, lr=1e-2)}


def save_plot(path, curves):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    window = 20  # a running mean: single chunks' losses are noisy
    for label, runs in curves.items():
        mean = np.mean(runs, axis=0)
        ax.plot(np.convolve(mean, np.ones(window) / window, mode="valid"), label=label)
    ax.set_xlabel("training chunk")
    ax.set_ylabel("training loss per character (nats)")
    ax.set_title(f"GRU reset forms on the character model (mean of {len(runs)} seeds, "
                 f"running mean of {window} chunks)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def main(argv=None):
    parser = example_setup.parser(__doc__)
    parser.add_argument("--text", help="a UTF-8 text file (default: Python standard library "
                        "sources)")
    parser.add_argument("--seeds", type=int, help="runs per variant (default 3, quick 1)")
    parser.add_argument("--updates", type=int, help="training chunks (default 1500, quick 300)")
    parser.add_argument("--plot", default="gru_variants.png", help="'' for none")
    args = parser.parse_args(argv)
    with example_setup.blas_threads(args.threads):
        return run(args)


def run(args):
    settings = dict(SETTINGS["quick" if args.quick else "full"])
    settings["updates"] = args.updates or settings["updates"]
    hidden = settings.pop("hidden")
    seeds = range(args.seed, args.seed + (args.seeds or (1 if args.quick else 3)))
    text = (pathlib.Path(args.text).read_text(encoding="utf-8") if args.text
            else char_lm.default_text())
    vocab = char_lm.Vocabulary(text)
    print(f"text: {len(text)} characters; 2-layer GRUs of {hidden} units, "
          f"{settings['updates']} chunks, seeds {list(seeds)}")
    results, curves = {}, {}
    for label, reset_after in VARIANTS.items():
        held_out, seconds, curves[label] = [], [], []
        for seed in seeds:
            model = char_lm.CharModel(vocab, lambda v, s=seed, after=reset_after: fr.GRU(
                v, hidden, num_layers=2, batch_first=True, reset_after=after, seed=s), seed)
            r = char_lm.fit(model, text, clip=5.0, desc=label.split(" (")[0], **settings)
            held_out.append(r["held_out"])
            seconds.append(r["seconds"])
            curves[label].append(r["curve"])
        results[label] = {"held_out": float(np.mean(held_out)), "range": (min(held_out),
                                                                           max(held_out)),
                          "seconds": float(np.mean(seconds))}
    print(f"{'GRU':38s} {'held-out loss/char: mean (range)':>33s} {'seconds':>8s}")
    for label, r in results.items():
        low, high = r["range"]
        loss = f"{r['held_out']:.3f} ({low:.3f}-{high:.3f})"
        print(f"{label:38s} {loss:>33s} {r['seconds']:8.1f}")
    plot = save_plot(args.plot, curves) if args.plot else None
    if args.plot:
        print(f"plot saved to {plot}" if plot else "plot skipped: matplotlib is not installed")
    return {"results": results, "uniform_loss": float(np.log(len(vocab))), "plot": plot}


if __name__ == "__main__":
    main()
