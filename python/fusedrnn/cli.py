"""The ``fusedrnn`` command: ``info`` (what this install has) and ``bench`` (fusedrnn against
torch.nn on the same work, interleaved in one process)."""

import argparse
import json
import os
import platform
import sys

import numpy as np

from . import __version__, _backend
from .bench import QUICK_CASES, Case, run_cases, sweep_cases


def info(_args):
    print(f"fusedrnn {__version__}  (Python {platform.python_version()}, NumPy {np.__version__})")
    core = _backend._core
    if core is None:
        print(f"compiled backends: none ({_backend.CORE_ERROR}); using the NumPy reference")
        return 0
    b = core.build_info()
    print("compiled backends: cpu")
    print(f"  compiler:       {b['compiler']}")
    print(f"  SIMD:           {b['simd']}")
    print(f"  BLAS:           {b['blas']}")
    print(f"  threads:        {b['threads']} (fusedrnn's own; OpenBLAS single-threaded)")
    print(f"  CPU:            {_cpu_model()}")
    print("  CUDA:           not built (this version has CPU kernels only)")
    return 0


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def bench(args):
    if args.quick or args.sweep:
        chosen = QUICK_CASES if args.quick else sweep_cases()
        cases = [Case(**c, threads=args.threads, dtype=args.dtype) for c in chosen]
    else:
        cases = [Case(cell=args.cell, T=args.T, B=args.B, I=args.I or args.H, H=args.H,
                      layers=args.layers, bidirectional=args.bidirectional, mode=mode,
                      dtype=args.dtype, threads=args.threads)
                 for mode in (["train", "infer"] if args.mode == "both" else [args.mode])]
    # The progress line redraws itself with '\r': only where a terminal shows it, not in CI logs.
    progress = sys.stderr if sys.stderr.isatty() else None
    report = run_cases(cases, runs=args.runs, with_numpy=args.numpy, memory=args.memory,
                       progress=progress)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(machine=_machine(), **report), f, indent=1)
    return 0


def _machine():
    core = _backend._core
    return dict(cpu=_cpu_model(), cores=os.cpu_count(), python=platform.python_version(),
                numpy=np.__version__, fusedrnn=__version__,
                build=core.build_info() if core is not None else None,
                torch=_torch_version())


def _torch_version():
    try:
        import torch
    except ImportError:
        return None
    return torch.__version__


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fusedrnn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="version, compiled backends, BLAS, threads, CPU")
    b = sub.add_parser("bench", help="time fusedrnn against torch.nn on the same work")
    which = b.add_mutually_exclusive_group()
    which.add_argument("--quick", action="store_true", help="a few representative cases (~30 s)")
    which.add_argument("--sweep", action="store_true",
                       help="the full CPU sweep: cells x T x B x H, train and infer (long)")
    b.add_argument("--cell", default="lstm", choices=["lstm", "gru", "rnn_tanh", "rnn_relu"])
    b.add_argument("--T", type=int, default=100, help="sequence length")
    b.add_argument("--B", type=int, default=64, help="batch size")
    b.add_argument("--I", type=int, default=None, help="input size (default: H)")
    b.add_argument("--H", type=int, default=256, help="hidden size")
    b.add_argument("--layers", type=int, default=1)
    b.add_argument("--bidirectional", action="store_true")
    b.add_argument("--mode", default="both", choices=["train", "infer", "both"],
                   help="train = forward + backward")
    b.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    b.add_argument("--threads", type=int, default=None, help="default: all cores")
    b.add_argument("--runs", type=int, default=7, help="timed runs per case (median reported)")
    b.add_argument("--numpy", action="store_true", help="also time the NumPy reference")
    b.add_argument("--memory", action="store_true",
                   help="also measure peak memory of a training step (a child process each)")
    b.add_argument("--json", metavar="FILE", help="write the results as JSON")
    args = parser.parse_args(argv)
    return {"info": info, "bench": bench}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
