"""Benchmarks: the same work through fusedrnn and its peers (torch.nn when installed, the NumPy
reference on request), interleaved in one process after a warm-up, median of the timed runs."""

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

    @property
    def label(self):
        d = "bi" if self.bidirectional else "uni"
        return (f"{self.cell} {self.mode} T={self.T} B={self.B} I={self.I} H={self.H} "
                f"L={self.layers} {d} {self.dtype}")

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


def _fusedrnn_runner(case, backend):
    cls = {"lstm": layers.LSTM, "gru": layers.GRU}.get(case.cell, layers.RNN)
    kw = {"nonlinearity": case.cell[4:]} if case.cell.startswith("rnn") else {}
    m = cls(case.I, case.H, num_layers=case.layers, bidirectional=case.bidirectional,
            dtype=case.dtype, seed=0, backend=backend, **kw)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((case.T, case.B, case.I)).astype(case.dtype)
    D = 2 if case.bidirectional else 1
    dy = rng.standard_normal((case.T, case.B, D * case.H)).astype(case.dtype)

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
            dtype=tdt, **kw)
    m.load_state_dict({k: torch.from_numpy(v) for k, v in fused.state_dict().items()})
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.standard_normal((case.T, case.B, case.I)).astype(case.dtype))
    D = 2 if case.bidirectional else 1
    dy = torch.from_numpy(rng.standard_normal((case.T, case.B, D * case.H)).astype(case.dtype))

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
    times = {name: [] for name in impls}
    order = list(impls)
    for r in range(runs):
        for name in (order if r % 2 == 0 else order[::-1]):
            times[name].append(_time(impls[name]))
    medians = {name: statistics.median(t) for name, t in times.items()}
    result = dict(case=asdict(case), threads=threads, runs=runs,
                  median_ms={k: v * 1e3 for k, v in medians.items()},
                  gflops_fusedrnn=case.flops() / medians["fusedrnn"] / 1e9)
    if "torch" in medians:
        result["ratio_torch_over_fusedrnn"] = medians["torch"] / medians["fusedrnn"]
    return result


def run_cases(cases, runs=7, with_numpy=False, progress=None):
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
