"""Benchmarks: the same work through fusedrnn and its peers (torch.nn when installed, the NumPy
reference on request), interleaved in one process after a warm-up, median of the timed runs.

On the GPU (device "cuda") the peer is torch.nn on CUDA (cuDNN), both get torch CUDA tensors,
and each run is timed with CUDA events on the default stream, where both libraries work."""

import os
import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np

from . import layers
from ._backend import _core

QUICK_CASES = [
    dict(cell="lstm", T=100, B=64, I=256, H=256, layers=1, bidirectional=False, mode="train"),
    dict(cell="lstm", T=100, B=64, I=256, H=256, layers=1, bidirectional=False, mode="infer"),
    dict(cell="gru", T=100, B=16, I=128, H=128, layers=1, bidirectional=False, mode="train"),
    dict(cell="rnn_tanh", T=100, B=16, I=128, H=128, layers=1, bidirectional=False,
         mode="train"),
    dict(cell="lstm", T=20, B=1, I=20, H=20, layers=2, bidirectional=False, mode="train"),
    dict(cell="lstm", T=50, B=16, I=128, H=128, layers=2, bidirectional=True, mode="infer"),
]

# The GPU table: LSTM and GRU, T=100, B in {1, 16, 64, 256}, H in {256, 1024} (I = H).
CUDA_CASES = [dict(cell=cell, T=100, B=b, I=h, H=h, layers=1, bidirectional=False, mode=mode)
              for cell in ("lstm", "gru") for h in (256, 1024) for b in (1, 16, 64, 256)
              for mode in ("train", "infer")]


@dataclass
class Case:
    cell: str = "lstm"
    T: int = 100
    B: int = 64
    I: int = 256
    H: int = 256
    layers: int = 1
    bidirectional: bool = False
    mode: str = "train"
    dtype: str = "float32"
    threads: int = None
    device: str = "cpu"
    tf32: bool = False  # cuda, float32: both fusedrnn and cuDNN may use TF32 tensor cores

    @property
    def label(self):
        d = "bi" if self.bidirectional else "uni"
        math = " tf32" if self.tf32 else ""
        return (f"{self.cell} {self.mode} T={self.T} B={self.B} I={self.I} H={self.H} "
                f"L={self.layers} {d} {self.dtype}{math}")

    def flops(self):
        """GEMM flops: forward 2·T·B·G·H·(I+H) per layer and direction; backward twice that
        (dx and dW_ih, dh and dW_hh)."""
        G = {"lstm": 4, "gru": 3}.get(self.cell, 1)
        D = 2 if self.bidirectional else 1
        total = 0
        for layer in range(self.layers):
            width = self.I if layer == 0 else D * self.H
            total += D * 2 * self.T * self.B * G * self.H * (width + self.H)
        return total * (3 if self.mode == "train" else 1)


def _inputs(case, as_torch=False):
    """x and dy: NumPy arrays, or torch tensors (on the GPU for a GPU case)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((case.T, case.B, case.I)).astype(case.dtype)
    D = 2 if case.bidirectional else 1
    dy = rng.standard_normal((case.T, case.B, D * case.H)).astype(case.dtype)
    if as_torch or case.device == "cuda":
        import torch
        return (torch.from_numpy(x).to(case.device), torch.from_numpy(dy).to(case.device))
    return x, dy


def _fusedrnn_runner(case, backend):
    cls = {"lstm": layers.LSTM, "gru": layers.GRU}.get(case.cell, layers.RNN)
    kw = {"nonlinearity": case.cell[4:]} if case.cell.startswith("rnn") else {}
    if case.device == "cuda":
        kw.update(device="cuda", tf32=case.tf32)
    else:
        kw.update(backend=backend)
    m = cls(case.I, case.H, num_layers=case.layers, bidirectional=case.bidirectional,
            dtype=case.dtype, seed=0, **kw)
    x, dy = _inputs(case)

    def train():
        _, _, tape = m.forward(x, training=True)
        m.backward(tape, dy)

    def infer():
        m(x)

    return m, (train if case.mode == "train" else infer)


def _torch_runner(case, fused):
    try:
        import torch
    except ImportError:
        return None
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}.get(case.cell, torch.nn.RNN)
    kw = {"nonlinearity": case.cell[4:]} if case.cell.startswith("rnn") else {}
    tdt = getattr(torch, case.dtype)
    m = cls(case.I, case.H, num_layers=case.layers, bidirectional=case.bidirectional,
            dtype=tdt, device=case.device, **kw)
    m.load_state_dict({k: torch.from_numpy(v) for k, v in fused.state_dict().items()})
    if case.device == "cuda":
        # cuDNN computes float32 with TF32 tensor cores by default; fusedrnn only with tf32=True.
        torch.backends.cudnn.allow_tf32 = case.tf32
        torch.backends.cuda.matmul.allow_tf32 = case.tf32
    x, dy = _inputs(case, as_torch=True)

    def train():
        xg = x.detach().requires_grad_(True)
        y, _ = m(xg)
        y.backward(dy)

    def infer():
        with torch.inference_mode():
            m(x)

    return train if case.mode == "train" else infer


def _time(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _time_cuda(fn):
    """Seconds between CUDA events around fn on the default stream (fusedrnn's kernels and
    torch's run there), after the work queued before has finished."""
    import torch
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def _set_threads(threads):
    threads = threads or os.cpu_count()
    if _core is not None:
        _core.set_num_threads(threads)
    try:
        import torch
        torch.set_num_threads(threads)
    except ImportError:
        pass
    return threads


def run_case(case, runs=7, with_numpy=False):
    """Median seconds of each implementation, the runs interleaved so that drift in the
    machine's speed hits every implementation alike."""
    threads = _set_threads(case.threads)
    fused, fused_fn = _fusedrnn_runner(case, "auto")
    impls = {"fusedrnn": fused_fn}
    torch_fn = _torch_runner(case, fused)
    if torch_fn is not None:
        impls["torch"] = torch_fn
    if with_numpy:
        impls["numpy"] = _fusedrnn_runner(case, "numpy")[1]
    for fn in impls.values():  # warm-up: allocations, thread pools, lazy init
        fn()
    timer = _time_cuda if case.device == "cuda" else _time
    times = {name: [] for name in impls}
    order = list(impls)
    for r in range(runs):
        for name in (order if r % 2 == 0 else order[::-1]):
            times[name].append(timer(impls[name]))
    medians = {name: statistics.median(t) for name, t in times.items()}
    result = dict(case=asdict(case), threads=threads, runs=runs, device=_device_name(case),
                  median_ms={k: v * 1e3 for k, v in medians.items()},
                  gflops_fusedrnn=case.flops() / medians["fusedrnn"] / 1e9)
    if "torch" in medians:
        result["ratio_torch_over_fusedrnn"] = medians["torch"] / medians["fusedrnn"]
    return result


def _device_name(case):
    if case.device != "cuda":
        return "cpu"
    import torch
    return torch.cuda.get_device_name()


def run_cases(cases, runs=7, with_numpy=False, progress=None):
    if cases and cases[0].device == "cuda":
        print(f"device: {_device_name(cases[0])}; peer: torch.nn on CUDA (cuDNN); CUDA events")
    header = (f"{'case':<58} {'fusedrnn ms':>11} {'torch ms':>9} {'torch/fused':>11} "
              f"{'GFLOP/s':>8}" + (f" {'numpy ms':>9}" if with_numpy else ""))
    print(header)
    print("-" * len(header))
    results = []
    for i, case in enumerate(cases):
        if progress is not None:
            progress.write(f"\r[{i + 1}/{len(cases)}] {case.label} ...")
            progress.flush()
        r = run_case(case, runs, with_numpy)
        if progress is not None:
            progress.write("\r" + " " * 100 + "\r")
        ms = r["median_ms"]
        torch_ms = f"{ms['torch']:9.2f}" if "torch" in ms else f"{'-':>9}"
        ratio = r.get("ratio_torch_over_fusedrnn")
        ratio_s = f"{ratio:10.2f}x" if ratio else f"{'-':>11}"
        line = (f"{case.label:<58} {ms['fusedrnn']:11.2f} {torch_ms} {ratio_s} "
                f"{r['gflops_fusedrnn']:8.1f}")
        if with_numpy:
            line += f" {ms['numpy']:9.1f}"
        print(line, flush=True)
        results.append(r)
    ratios = [r["ratio_torch_over_fusedrnn"] for r in results if "ratio_torch_over_fusedrnn" in r]
    if ratios:
        geo = float(np.exp(np.mean(np.log(ratios))))
        print(f"torch/fusedrnn: min {min(ratios):.2f}x, geometric mean {geo:.2f}x "
              f"over {len(ratios)} cases (median of {runs} interleaved runs each)")
    else:
        print("torch is not installed: fusedrnn timings only (pip install torch to compare)")
    return results
