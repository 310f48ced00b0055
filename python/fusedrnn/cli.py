"""The ``fusedrnn`` command: ``info`` (what this install has) and ``bench`` (fusedrnn against
torch.nn on the same work, interleaved in one process)."""

import argparse
import json
import os
import platform
import sys

import numpy as np

from . import __version__, _backend
from .bench import CUDA_CASES, QUICK_CASES, Case, run_cases, sweep_cases


def info(_args):
    print(f"fusedrnn {__version__}  (Python {platform.python_version()}, NumPy {np.__version__})")
    core = _backend._core
    if core is None:
        print(f"compiled backends: none ({_backend.CORE_ERROR}); using the NumPy reference")
        return 0
    b = core.build_info()
    print("compiled backends: cpu" + (", cuda" if _backend.cuda_module() is not None else ""))
    print(f"  compiler:       {b['compiler']}")
    print(f"  SIMD:           {b['simd']}")
    print(f"  recurrent GEMM: fusedrnn's {b['recurrent_kernel']} kernel (float32, float64)")
    print(f"  BLAS:           {b['blas']}")
    print(f"  threads:        {b['threads']} (fusedrnn's own; OpenBLAS single-threaded)")
    print(f"  CPU:            {_cpu_model()}")
    for line in _cuda_lines():
        print(line)
    return 0


def _cuda_lines():
    cuda = _backend.cuda_module()
    if cuda is None:
        return [f"  CUDA:           {_backend.cuda_error()}"]
    b = cuda.build_info()
    ok, reason = cuda.availability()
    return [f"  CUDA:           built with CUDA {_version(b['cuda_version'], 1000, 10)}, cuBLAS "
            f"{_version(b['cublas_version'], 10000, 100)}, for compute capabilities "
            f"{b['architectures']}",
            f"  GPU:            {reason}"]


def _version(code, major, minor):
    """CUDA's and cuBLAS's integer versions (13000, 131000) as text (13.0, 13.10)."""
    return f"{code // major}.{code % major // minor}"


def _cpu_model():
    """The first CPU's model name, with its family and model numbers where /proc/cpuinfo has
    them: a virtual machine may name only the brand ("AMD EPYC"), and the generation (AVX2 or
    AVX-512 units) changes what the kernels run."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the end of the first CPU's entry
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or "unknown"
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def bench(args):
    if args.device == "cuda":
        error = _cuda_bench_error(args)
        if error:
            print(f"fusedrnn bench --device cuda: {error}", file=sys.stderr)
            return 2
    common = dict(threads=args.threads, dtype=args.dtype, device=args.device, tf32=args.tf32)
    if args.quick or args.sweep:
        grid = (CUDA_CASES if args.device == "cuda" else QUICK_CASES) if args.quick else sweep_cases()
        cases = [Case(**c, **common) for c in grid]
    else:
        cases = [Case(cell=args.cell, T=args.T, B=args.B, I=args.I or args.H, H=args.H,
                      layers=args.layers, bidirectional=args.bidirectional, mode=mode, **common)
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
    core, cuda = _backend._core, _backend.cuda_module()
    return dict(cpu=_cpu_model(), cores=os.cpu_count(), python=platform.python_version(),
                numpy=np.__version__, fusedrnn=__version__,
                build=core.build_info() if core is not None else None,
                cuda_build=cuda.build_info() if cuda is not None else None,
                torch=_torch_version())


def _torch_version():
    try:
        import torch
    except ImportError:
        return None
    return torch.__version__


def _cuda_bench_error(args):
    """Why a GPU benchmark cannot run here, or None."""
    ok, reason = _backend.cuda_status()
    if not ok:
        return reason
    try:
        import cupy  # noqa: F401  (the GPU layers keep their parameters in CuPy)
        import torch
    except ImportError as exc:
        return f"needs CuPy and torch with CUDA ({exc})"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    if args.numpy:
        return "--numpy times the CPU reference; leave it out on the GPU"
    if args.tf32 and args.dtype != "float32":
        return "--tf32 applies to float32 only"
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fusedrnn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="version, compiled backends, BLAS, threads, CPU")
    b = sub.add_parser("bench", help="time fusedrnn against torch.nn on the same work")
    which = b.add_mutually_exclusive_group()
    which.add_argument("--quick", action="store_true",
                       help="a few representative cases (~30 s); with --device cuda the GPU "
                            "table: LSTM and GRU, T=100, B in 1, 16, 64, 256, H in 256, 1024")
    which.add_argument("--sweep", action="store_true",
                       help="the full CPU sweep: cells x T x B x H, train and infer (long)")
    b.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="cuda: fusedrnn's GPU layers against torch.nn on CUDA (cuDNN)")
    b.add_argument("--tf32", action="store_true",
                   help="cuda, float32: allow TF32 tensor cores in both fusedrnn and cuDNN")
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
    b.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    b.add_argument("--runs", type=int, default=7, help="timed runs per case (median reported)")
    b.add_argument("--numpy", action="store_true", help="also time the NumPy reference")
    b.add_argument("--memory", action="store_true",
                   help="also measure peak memory of a training step (a child process each)")
    b.add_argument("--json", metavar="FILE", help="write the results as JSON")
    args = parser.parse_args(argv)
    return {"info": info, "bench": bench}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
