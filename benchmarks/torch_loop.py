"""A PyTorch training loop with fusedrnn.torch's module against the same loop with torch.nn's,
for four settings of the threads. Prints the median milliseconds of a step and the ratio
torch.nn / fusedrnn.torch.

    python benchmarks/torch_loop.py [--rounds 15] [--quick]

A step is what a training loop does: zero_grad, forward, MSE loss, backward, SGD step. The two
modules (one state dict) alternate in one process, each primed by untimed steps before a timed
one, as `fusedrnn bench` does.

Why the settings: torch's OpenMP threads (GNU libgomp on Linux) spin after each of torch's
parallel ops, by default for 300000 pauses (GOMP_SPINCOUNT; milliseconds). On fusedrnn's own
threads, a step of fusedrnn.torch's module then runs with a core taken; so importing
fusedrnn.torch runs fusedrnn's parallel loops on torch's OpenMP threads instead
(fusedrnn.torch.share_threads), as torch.nn's LSTM runs its own ops. libgomp reads
GOMP_SPINCOUNT when torch is imported, so each setting runs in a child process:
  shared            torch as installed; fusedrnn on torch's threads (the default)
  own threads       FUSEDRNN_SHARE_TORCH_THREADS=0: fusedrnn on its own threads
  own, spin 20000   the same with GOMP_SPINCOUNT=20000: torch's threads sleep after about a
                    tenth of a millisecond of spinning
  torch threads 1   torch.set_num_threads(1); fusedrnn on torch's threads, so on one too"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CASES = [  # (cell, T, B, H, layers, bidirectional)
    ("lstm", 200, 16, 128, 1, False),
    ("lstm", 200, 1, 128, 1, True),
    ("gru", 20, 16, 32, 1, False),
    ("lstm", 100, 64, 256, 1, False),
    ("lstm", 20, 128, 512, 1, False),
]
QUICK_CASES = CASES[:3]
OWN = {"FUSEDRNN_SHARE_TORCH_THREADS": "0"}
SETTINGS = [  # (label, environment, torch threads)
    ("shared", {}, None),
    ("own threads", OWN, None),
    ("own, spin 20000", {**OWN, "GOMP_SPINCOUNT": "20000"}, None),
    ("torch threads 1", {}, 1),
]
PRIME_S = 0.05


def step_fn(module, x, torch):
    optimizer = torch.optim.SGD(module.parameters(), lr=1e-3)

    def step():
        optimizer.zero_grad()
        y, _ = module(x)
        (y ** 2).mean().backward()
        optimizer.step()
    return step


def measure(case, rounds):
    """Median seconds of a step of each module, alternated."""
    import torch

    import fusedrnn.torch as frt
    cell, T, B, H, layers, bidirectional = case
    torch.manual_seed(0)
    kwargs = dict(num_layers=layers, bidirectional=bidirectional)
    reference = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](H, H, **kwargs)
    ours = {"lstm": frt.LSTM, "gru": frt.GRU}[cell](H, H, **kwargs)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(T, B, H)
    steps = {"fusedrnn.torch": step_fn(ours, x, torch), "torch.nn": step_fn(reference, x, torch)}
    times = {name: [] for name in steps}
    for name, step in steps.items():  # warm-up
        for _ in range(3):
            step()
    for r in range(rounds):
        for name in (list(steps) if r % 2 == 0 else list(steps)[::-1]):
            start = time.perf_counter()
            while time.perf_counter() - start < PRIME_S:
                steps[name]()
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def child(cases, rounds, torch_threads):
    import torch
    if torch_threads:
        torch.set_num_threads(torch_threads)
    for case in cases:
        print(json.dumps(dict(case=case, seconds=measure(case, rounds))), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--quick", action="store_true", help="the first three cases only")
    p.add_argument("--child", help=argparse.SUPPRESS)  # JSON: cases and torch threads
    opts = p.parse_args()
    if opts.child:
        spec = json.loads(opts.child)
        return child([tuple(c) for c in spec["cases"]], opts.rounds, spec["torch_threads"])
    cases = QUICK_CASES if opts.quick else CASES
    print(f"{'setting':16s} {'case':32s} {'fusedrnn.torch':>15s} {'torch.nn':>9s} {'ratio':>6s}")
    for label, env, torch_threads in SETTINGS:
        spec = json.dumps(dict(cases=cases, torch_threads=torch_threads))
        proc = subprocess.Popen([sys.executable, __file__, "--rounds", str(opts.rounds),
                                 "--child", spec], env={**os.environ, **env},
                                stdout=subprocess.PIPE, text=True)
        for line in proc.stdout:
            r = json.loads(line)
            cell, T, B, H, layers, bi = r["case"]
            name = f"{cell} T={T} B={B} H={H} L={layers} {'bi' if bi else 'uni'}"
            ours, theirs = r["seconds"]["fusedrnn.torch"], r["seconds"]["torch.nn"]
            print(f"{label:16s} {name:32s} {ours * 1e3:12.2f} ms {theirs * 1e3:6.2f} ms "
                  f"{theirs / ours:5.2f}x", flush=True)
        if proc.wait():
            sys.exit(f"the child process for {label} failed")


if __name__ == "__main__":
    main()
