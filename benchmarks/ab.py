"""Two builds of fusedrnn timed against each other in one process, in alternating turns.

    python benchmarks/ab.py DIR_A DIR_B lstm infer --T 200 --B 16 --H 512

DIR_A and DIR_B each hold a `fusedrnn` package with its built extension (say, a copy of
python/fusedrnn after building each commit). Both are loaded side by side, under other names, so
that both runs see the same machine: this 2-core machine has spells of minutes in which small
cases run up to half again as long, and runs of one build after the other, each in its own
process, kept showing 2-5% differences that an A/A comparison showed too. Here a build runs for
--secs at a turn, after 20 ms of untimed runs (the other build's idle workers spin for a fraction
of a millisecond before they sleep), and the printed figures are the medians of all timed runs;
B/A < 1 means B is faster. An A/A run (the same build twice) reads within 1% of 1.000 for most
cases; but where the steps stream a large W_hh (a batch of one), the build loaded second ran up
to 4% faster on a Zen 3 (A/A 0.959, GRU training T=200 B=1 H=512): there, run both orders and
take the geometric mean of B/A and of 1/(A/B). The range of the rounds' own B/A (each round's
medians) follows: where it straddles 1.000 widely, a difference of a few percent is the
machine's, not the builds' (two A/Bs of one change read 0.984 and 1.063 in one hour).
"""
import argparse
import os
import importlib
import importlib.util
import statistics
import sys
import time

import numpy as np


def load_layers(name, directory, threads):
    """fusedrnn from `directory`, imported as the package `name`, running on `threads` threads
    (None: all cores); its layers module."""
    spec = importlib.util.spec_from_file_location(
        name, f"{directory}/fusedrnn/__init__.py",
        submodule_search_locations=[f"{directory}/fusedrnn"])
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    spec.loader.exec_module(package)
    backend = importlib.import_module(name + "._backend")
    if backend._core is None:
        sys.exit(f"{directory}: no compiled kernels ({backend.CORE_ERROR})")
    if threads:
        package.set_num_threads(threads)
    return importlib.import_module(name + ".layers")


def runner(layers, args, x, dy):
    cls = {"lstm": layers.LSTM, "gru": layers.GRU}.get(args.cell, layers.RNN)
    kwargs = {} if args.cell in ("lstm", "gru") else {"nonlinearity": args.cell[4:]}
    model = cls(args.I or args.H, args.H, num_layers=args.layers,
                bidirectional=args.bidirectional, dtype=args.dtype, seed=0, **kwargs)

    def run():
        if args.mode == "infer":
            model(x)
        else:
            _, _, tape = model.forward(x, training=True)
            model.backward(tape, dy)
    return run


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dir_a")
    p.add_argument("dir_b")
    p.add_argument("cell", choices=["lstm", "gru", "rnn_tanh", "rnn_relu"])
    p.add_argument("mode", choices=["train", "infer"])
    p.add_argument("--T", type=int, default=100)
    p.add_argument("--B", type=int, default=16)
    p.add_argument("--I", type=int, default=None, help="input size (default: H)")
    p.add_argument("--H", type=int, default=256)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--bidirectional", action="store_true")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--threads", type=int, default=None, help="kernel threads (default: all cores)")
    p.add_argument("--rounds", type=int, default=12, help="turns of each build")
    p.add_argument("--secs", type=float, default=0.5, help="seconds a turn")
    args = p.parse_args(argv)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.T, args.B, args.I or args.H)).astype(args.dtype)
    directions = 2 if args.bidirectional else 1
    dy = rng.standard_normal((args.T, args.B, directions * args.H)).astype(args.dtype)
    if os.path.samefile(args.dir_a, args.dir_b):
        # One process loads an extension file once: the second import would fail.
        sys.exit("DIR_A and DIR_B are the same directory: compare a copy of it")
    runs = {}
    for label, directory in (("A", args.dir_a), ("B", args.dir_b)):
        layers = load_layers("fusedrnn_" + label, directory, args.threads)
        runs[label] = runner(layers, args, x, dy)
        runs[label]()  # allocations, thread pool, lazy initialisation
    times = {"A": [], "B": []}
    round_ratios = []  # B/A of each round's medians: how far the machine moved between turns
    for r in range(args.rounds):
        turn = {}
        for label in ("AB" if r % 2 == 0 else "BA"):
            run = runs[label]
            start = time.perf_counter()
            while time.perf_counter() - start < 0.02:
                run()
            turn[label] = []
            start = time.perf_counter()
            while time.perf_counter() - start < args.secs:
                t0 = time.perf_counter()
                run()
                turn[label].append(time.perf_counter() - t0)
            times[label] += turn[label]
        round_ratios.append(statistics.median(turn["B"]) / statistics.median(turn["A"]))
    a, b = (statistics.median(times[k]) * 1e3 for k in "AB")
    print(f"{args.cell} {args.mode} T={args.T} B={args.B} I={args.I or args.H} H={args.H} "
          f"L={args.layers}{' bi' if args.bidirectional else ''}"
          f"{'' if args.dtype == 'float32' else ' ' + args.dtype}: A {a:.3f} ms, B {b:.3f} ms, "
          f"B/A {b / a:.3f} ({len(times['A'])} and {len(times['B'])} runs; by round "
          f"{min(round_ratios):.3f} to {max(round_ratios):.3f})")


if __name__ == "__main__":
    main()
