"""Benchmarks: the same work through fusedrnn and its peers (torch.nn when installed, the NumPy
reference on request), interleaved in one process after a warm-up, median of the timed runs.
A short run is timed right after untimed runs of its own implementation (PRIME_BELOW_S).

On the GPU (device "cuda") the peer is torch.nn on CUDA (cuDNN), both get torch CUDA tensors,
and each run is timed with CUDA events on the default stream, where both libraries work.

On the CPU each case is also measured against this machine's GEMM ceiling (what the kernels'
own GEMM reaches on a large square product, measured at start): its *floor* is the time its
GEMM flops would take at that ceiling, so ``x floor`` says how far a case is from the best a
GEMM-based RNN could do. A shared machine's speed drifts (the ceiling of a 2-core cloud VM read
200-450 GFLOP/s within one sweep), so the ceiling is measured again beside each case, once in
each of its rounds: ``ceil now`` is the median of those, and ``x now`` the case's distance from
the floor at it. A step of a small batch waits on memory, not on FMAs: it reads all of W_hh for
a few flops a byte. So each round also measures the bandwidth at which the threads read a buffer
of W_hh's size (``GB/s now``: from L2, L3 or DRAM, by the size), and ``x roof`` is the case's
distance from its roofline, the floor with each step taking at least the time to read W_hh.
Each round also times a cache line's round trip between two of the process's CPUs (``RT ns``):
a 2-CPU cloud VM's two vCPUs sometimes share an L3 (60-130 ns) and sometimes do not (280-400),
and where they do not, every step whose threads read what the other wrote runs slower (small
training cases 40-80% slower on a 2-core Zen 4), while the ceiling stays the same.
Peak memory of a training step is measured in a fresh child process per
implementation (``--memory``), so that neither library's caches or the other's allocations
count.
"""

import ctypes
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from . import layers, ops
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


def sweep_cases():
    """The CPU performance sweep of issue 3: cells × T × B × H (I = H), train and infer, plus
    stacked and bidirectional LSTMs at H = 128 and 512."""
    cases = [dict(cell=cell, T=T, B=B, I=H, H=H, layers=1, bidirectional=False, mode=mode)
             for cell, T, B, H, mode in itertools.product(
                 ("lstm", "gru", "rnn_tanh"), (20, 200), (1, 16, 128), (32, 128, 512, 1024),
                 ("train", "infer"))]
    cases += [dict(cell="lstm", T=200, B=B, I=H, H=H, layers=L, bidirectional=bi, mode=mode)
              for H, B, (L, bi), mode in itertools.product(
                  (128, 512), (16, 128), ((2, False), (1, True)), ("train", "infer"))]
    return cases


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

    @property
    def gates(self):
        return ops.GATES[self.cell]

    @property
    def directions(self):
        return 2 if self.bidirectional else 1

    def flops(self):
        """GEMM flops: forward 2·T·B·G·H·(I+H) per layer and direction; backward twice that
        (dx and dW_ih, dh and dW_hh)."""
        D = self.directions
        total = 0
        for layer in range(self.layers):
            width = self.I if layer == 0 else D * self.H
            total += D * 2 * self.T * self.B * self.gates * self.H * (width + self.H)
        return total * (3 if self.mode == "train" else 1)

    def recurrent_steps(self):
        """Products of a step's h (or gate gradients) by all of one W_hh: T per layer and
        direction, forward and (training) backward."""
        return self.T * self.layers * self.directions * (2 if self.mode == "train" else 1)

    def step_flops(self):
        """Flops of one of those products: 2·B·G·H·H."""
        return 2 * self.B * self.gates * self.H * self.H

    def weight_bytes(self):
        """Bytes of one W_hh (G·H × H), all of which each of those products reads."""
        return self.gates * self.H * self.H * np.dtype(self.dtype).itemsize


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


def _runners(case, with_numpy):
    fused, fused_fn = _fusedrnn_runner(case, "auto")
    impls = {"fusedrnn": fused_fn}
    torch_fn = _torch_runner(case, fused)
    if torch_fn is not None:
        impls["torch"] = torch_fn
    if with_numpy:
        impls["numpy"] = _fusedrnn_runner(case, "numpy")[1]
    return impls


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


CEILING_N = 2048  # the ceiling's product: n×n times n×n


def gemm_ceiling(dtype="float32", threads=None):
    """GFLOP/s of a CEILING_N² product through the kernels' GEMM (median of 5), or None without
    it."""
    if _core is None:
        return None
    _set_threads(threads)
    return _core.gemm_gflops(dtype, CEILING_N, 5)


def _floor_ms(case, ceiling_gflops):
    """Milliseconds the case's GEMM flops take at `ceiling_gflops`."""
    return case.flops() / (ceiling_gflops * 1e9) * 1e3


def _step_read_s(case, read_gbps):
    """Seconds a step's recurrent product takes to read all of W_hh at `read_gbps`."""
    return case.weight_bytes() / (read_gbps * 1e9)


def _roof_ms(case, ceiling_gflops, read_gbps):
    """The floor, but with each step's recurrent product no faster than reading all of W_hh at
    `read_gbps` (the roofline of the product: a batch of one does two flops for every four
    bytes of W_hh, and where W_hh outgrows the cores' L2 its steps wait on L3 or DRAM)."""
    step_s = max(case.step_flops() / (ceiling_gflops * 1e9), _step_read_s(case, read_gbps))
    recurrent_flops = case.recurrent_steps() * case.step_flops()
    other_s = (case.flops() - recurrent_flops) / (ceiling_gflops * 1e9)
    return (other_s + case.recurrent_steps() * step_s) * 1e3


# Runs shorter than this are each preceded by untimed runs of the same implementation, at least
# one and PRIME_FOR_S in all. A library's idle threads keep their cores for a while after its
# call (torch's libgomp workers spin for milliseconds, fusedrnn's for a fraction of one); a short
# run timed right after the peer's pays for that spinning, which a program using one library
# never sees.
PRIME_BELOW_S = 0.5
PRIME_FOR_S = 0.02


def _prime(fn):
    start = time.perf_counter()
    fn()
    while time.perf_counter() - start < PRIME_FOR_S:
        fn()


# The ratio of a case: each round times both libraries back to back, so that the machine's drift
# between rounds cancels in the round's own ratio; the ratio reported is the median of those
# (the ratio of the two medians, kept as ratio_of_medians, leaves the drift in: repeating five
# cases 12 times, its spread over the repeats was 0.8-1.2 times the paired median's, the two
# means within 1.6%). Its interval ("ratio CI") is distribution-free: from the (j+1)-th smallest
# to the (j+1)-th largest of the n rounds' ratios, which holds the median of a round's ratio (of
# the distribution the rounds are drawn from) with probability 1 - 2·P(Binomial(n, 1/2) <= j)
# where rounds are independent (their order alternates, so that neither library always runs
# first). j is the largest that keeps RATIO_COVERAGE: 7 rounds, the 2nd and 6th, 87.5%; 4 to 6,
# the extremes, 87.5-97%; 3 rounds (the least a case's time budget leaves) reach only 75%. A ratio
# whose interval reaches across 1, either way, is a tie that this run cannot split.
RATIO_COVERAGE = 0.8


def _interval_coverage(n, j):
    return 1 - 2 * sum(math.comb(n, i) for i in range(j + 1)) / 2 ** n


def paired_ratio(peer_s, fusedrnn_s):
    """(median, low, high, coverage) of the rounds' ratios peer/fusedrnn (see RATIO_COVERAGE)."""
    if len(peer_s) != len(fusedrnn_s) or len(peer_s) == 0:
        raise ValueError(f"paired_ratio: expected as many timed rounds of each, at least one; "
                         f"got {len(peer_s)} and {len(fusedrnn_s)}")
    ratios = sorted(p / f for p, f in zip(peer_s, fusedrnn_s))
    n = len(ratios)
    j = 0
    while j + 1 <= (n - 1) // 2 and _interval_coverage(n, j + 1) >= RATIO_COVERAGE:
        j += 1
    return statistics.median(ratios), ratios[j], ratios[n - 1 - j], _interval_coverage(n, j)


def run_case(case, runs=7, with_numpy=False, ceiling=None, memory=False, budget_s=20.0):
    """Median seconds of each implementation, the runs interleaved so that drift in the
    machine's speed hits every implementation alike. Cases whose warm-up shows that `runs`
    runs would take longer than `budget_s` get fewer runs (never fewer than 3). With a
    `ceiling` (the CPU's, measured at start), each round also measures the ceiling anew, and
    the bandwidth at which the threads read a buffer of the case's W_hh size, and the round trip
    of a cache line between two CPUs (None where the process has one, or cannot pin threads)."""
    threads = _set_threads(case.threads)
    impls = _runners(case, with_numpy)
    timer = _time_cuda if case.device == "cuda" else _time
    warm = {name: timer(fn) for name, fn in impls.items()}  # allocations, pools, lazy init
    primed = {name: w < PRIME_BELOW_S for name, w in warm.items()}
    cost = sum(max(2 * w, w + PRIME_FOR_S) if primed[name] else w for name, w in warm.items())
    runs = max(3, min(runs, int(budget_s / max(cost, 1e-9))))
    times = {name: [] for name in impls}
    ceilings_beside, bandwidths_beside, round_trips_beside = [], [], []
    order = list(impls)
    for r in range(runs):
        for name in (order if r % 2 == 0 else order[::-1]):
            if primed[name]:
                _prime(impls[name])
            times[name].append(timer(impls[name]))
        if ceiling:
            ceilings_beside.append(_core.gemm_gflops(case.dtype, CEILING_N, 1))
            bandwidths_beside.append(_core.read_gbps(max(case.weight_bytes(), 4096), 1))
            # Three timings of 1000 trips (0.1-0.4 ms each): their median drops one preempted.
            round_trips_beside.append(_core.core_round_trip_ns(3))
    medians = {name: statistics.median(t) for name, t in times.items()}
    result = dict(case=asdict(case), threads=threads, runs=runs, device=_device_name(case),
                  median_ms={k: v * 1e3 for k, v in medians.items()},
                  rounds_ms={k: [s * 1e3 for s in t] for k, t in times.items()},
                  gflops_fusedrnn=case.flops() / medians["fusedrnn"] / 1e9)
    if "torch" in medians:
        ratio, low, high, coverage = paired_ratio(times["torch"], times["fusedrnn"])
        result.update(ratio_torch_over_fusedrnn=ratio, ratio_interval=[low, high],
                      ratio_interval_coverage=coverage,
                      ratio_of_medians=medians["torch"] / medians["fusedrnn"])
    if ceiling:
        result["floor_ms"] = _floor_ms(case, ceiling)
        result["x_floor"] = result["median_ms"]["fusedrnn"] / result["floor_ms"]
        result["ceiling_now_gflops"] = statistics.median(ceilings_beside)
        result["x_floor_now"] = (result["median_ms"]["fusedrnn"]
                                 / _floor_ms(case, result["ceiling_now_gflops"]))
        result["read_gbps_now"] = statistics.median(bandwidths_beside)
        result["roof_ms_now"] = _roof_ms(case, result["ceiling_now_gflops"],
                                         result["read_gbps_now"])
        result["x_roof_now"] = result["median_ms"]["fusedrnn"] / result["roof_ms_now"]
        # Each round's too: a case whose rounds span both kinds of spell has a median of neither.
        result["round_trips_ns"] = round_trips_beside
        trips = [ns for ns in round_trips_beside if ns is not None]
        result["round_trip_ns_now"] = statistics.median(trips) if trips else None
    if memory and case.mode == "train":
        result["peak_mb"] = {name: peak_step_memory(case, name) for name in impls
                             if name != "numpy"}
    return result


# --- peak memory of one training step, each implementation in a fresh child process ---------

def _rss_peak_reset():
    """Resets the kernel's record of this process's peak RSS (Linux); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _give_back_free_heap():
    """Returns the memory malloc holds free to the system (glibc's malloc_trim; elsewhere
    nothing). Without it a step could reuse memory freed while its case was set up, which adds
    nothing to the resident set: repeats of GRU training T=20 B=16 H=1024 read 19.5 or 0.5 MB for
    fusedrnn and 26.6 or 14.6 for torch, against 51.6-52.6 and 71.6-72.0 after it."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def _child_peak_mb(case_dict, impl):
    """In a fresh process: warm the implementation up on a tiny case (libraries, thread pools,
    BLAS buffers), set the real case up and give the heap's free memory back, then the peak RSS
    above the resting RSS during one training step."""
    case = Case(**case_dict)
    tiny = Case(**{**case_dict, "T": 2, "B": 1, "I": 2, "H": 2, "layers": 1})
    _set_threads(case.threads)
    _runners(tiny, False)[impl]()
    step = _runners(case, False)[impl]
    _give_back_free_heap()
    resting = _status_kb("VmRSS")
    if not _rss_peak_reset():
        raise OSError("cannot reset the peak RSS (/proc/self/clear_refs)")
    step()
    return (_status_kb("VmHWM") - resting) / 1024


def peak_step_memory(case, impl):
    """MB one training step of `impl` ("fusedrnn" or "torch") needs above its resting memory,
    or None where this platform cannot tell (no /proc)."""
    code = ("import json, sys; from fusedrnn import bench; "
            "print(bench._child_peak_mb(json.loads(sys.argv[1]), sys.argv[2]))")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(asdict(case)), impl],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    return float(proc.stdout.strip().splitlines()[-1])


# --- the table ----------------------------------------------------------------------------

def _columns(with_numpy, memory, ceiling):
    cols = [("case", 58), ("fusedrnn ms", 11), ("torch ms", 9), ("torch/fused", 11),
            ("ratio CI", 11), ("GFLOP/s", 8)]
    if ceiling:
        cols += [("% ceiling", 9), ("x floor", 7), ("ceil now", 8), ("x now", 6),
                 ("GB/s now", 8), ("x roof", 6), ("RT ns", 6)]
    if memory:
        cols += [("MB fused", 8), ("MB torch", 8)]
    if with_numpy:
        cols += [("numpy ms", 9)]
    return cols


def _row(r, label, cols):
    ms, peak = r["median_ms"], r.get("peak_mb", {})
    ratio = r.get("ratio_torch_over_fusedrnn")
    interval = r.get("ratio_interval")
    cells = {
        "case": label,
        "fusedrnn ms": f"{ms['fusedrnn']:.2f}",
        "torch ms": f"{ms['torch']:.2f}" if "torch" in ms else "-",
        "torch/fused": f"{ratio:.2f}x" if ratio else "-",
        "ratio CI": f"{interval[0]:.2f}-{interval[1]:.2f}" if interval else "-",
        "GFLOP/s": f"{r['gflops_fusedrnn']:.1f}",
        "% ceiling": f"{100 / r['x_floor']:.0f}%" if "x_floor" in r else "-",
        "x floor": f"{r['x_floor']:.2f}" if "x_floor" in r else "-",
        "ceil now": f"{r['ceiling_now_gflops']:.0f}" if "ceiling_now_gflops" in r else "-",
        "x now": f"{r['x_floor_now']:.2f}" if "x_floor_now" in r else "-",
        "GB/s now": f"{r['read_gbps_now']:.0f}" if "read_gbps_now" in r else "-",
        "x roof": f"{r['x_roof_now']:.2f}" if "x_roof_now" in r else "-",
        "RT ns": (f"{r['round_trip_ns_now']:.0f}" if r.get("round_trip_ns_now") is not None
                  else "-"),
        "MB fused": f"{peak['fusedrnn']:.1f}" if peak.get("fusedrnn") is not None else "-",
        "MB torch": f"{peak['torch']:.1f}" if peak.get("torch") is not None else "-",
        "numpy ms": f"{ms['numpy']:.1f}" if "numpy" in ms else "-",
    }
    return " ".join(f"{cells[name]:<{w}}" if name == "case" else f"{cells[name]:>{w}}"
                    for name, w in cols)


# The CPU sweep's target: where a case's floor is at least HEAVY_FLOOR_MS, within FLOOR_TARGET of
# it (at about 75% of the ceiling).
HEAVY_FLOOR_MS, FLOOR_TARGET = 5.0, 1.3


def _reads_alone_over_target(result):
    """Whether the case's steps, each reading all of W_hh at the bandwidth measured beside it
    and doing nothing else, would take longer than FLOOR_TARGET of the floor at the ceiling
    beside it: there no schedule, the other products overlapped with the reads or not, meets
    the target on this machine."""
    case = Case(**result["case"])
    reads_ms = case.recurrent_steps() * _step_read_s(case, result["read_gbps_now"]) * 1e3
    return reads_ms > FLOOR_TARGET * _floor_ms(case, result["ceiling_now_gflops"])


def summarize(results):
    """Minimum and geometric-mean torch/fusedrnn ratios, and the worst distance from the GEMM
    floor among cases whose floor is at least HEAVY_FLOOR_MS (where the floor is a fair
    yardstick), at the ceiling measured at start and at the one measured beside each case, and
    from the roofline beside each case; how many of those cases run over FLOOR_TARGET of the
    floor beside them, in how many of those the roofline itself is (a batch of one's steps,
    each reading all of W_hh), and in how many the steps' reads of W_hh alone take longer than
    FLOOR_TARGET of the floor."""
    out = {}
    ratios = [r["ratio_torch_over_fusedrnn"] for r in results if "ratio_torch_over_fusedrnn" in r]
    if ratios:
        out.update(ratio_min=min(ratios), ratio_geomean=float(np.exp(np.mean(np.log(ratios)))),
                   cases_compared=len(ratios),
                   cases_slower=sum(ratio < 1 for ratio in ratios),
                   cases_slower_beyond_interval=sum(
                       r["ratio_interval"][1] < 1 for r in results if "ratio_interval" in r))
    heavy = [r for r in results if r.get("floor_ms", 0) >= HEAVY_FLOOR_MS]
    if heavy:
        for key in ("x_floor", "x_floor_now", "x_roof_now"):
            worst = max(heavy, key=lambda r: r[key])
            out.update({"worst_" + key: worst[key],
                        f"worst_{key}_case": Case(**worst["case"]).label})
        # x_floor_now / x_roof_now is the roofline's own distance from the floor: where it is
        # over the target, no schedule that reads W_hh at each step apart from the other
        # products reaches the target at the bandwidth measured beside it.
        over = [r for r in heavy if r["x_floor_now"] > FLOOR_TARGET]
        out.update(cases_heavy=len(heavy), cases_over_floor_target=len(over),
                   cases_over_floor_target_read_bound=sum(
                       r["x_floor_now"] / r["x_roof_now"] > FLOOR_TARGET for r in over),
                   cases_over_floor_target_reads_alone=sum(
                       _reads_alone_over_target(r) for r in over))
    memory = [r["peak_mb"] for r in results
              if r.get("peak_mb", {}).get("fusedrnn") and r["peak_mb"].get("torch")]
    if memory:
        out["memory_ratio_max"] = max(m["fusedrnn"] / m["torch"] for m in memory)
    return out


def _device_name(case):
    if case.device != "cuda":
        return "cpu"
    import torch
    return torch.cuda.get_device_name()


def run_cases(cases, runs=7, with_numpy=False, memory=False, progress=None, out=sys.stdout):
    """Runs and prints every case; returns {"ceiling_gflops", "results", "summary"}. The GEMM
    ceiling (and each case's floor) is the CPU's: GPU cases are reported without it."""
    dtype = cases[0].dtype if cases else "float32"
    on_gpu = bool(cases) and cases[0].device == "cuda"
    ceiling = None if on_gpu else gemm_ceiling(dtype, cases[0].threads if cases else None)
    if on_gpu:
        print(f"device: {_device_name(cases[0])}; peer: torch.nn on CUDA (cuDNN); CUDA events",
              file=out)
    if ceiling:
        print(f"GEMM ceiling ({dtype}, {CEILING_N}², the kernels' GEMM): {ceiling:.1f} GFLOP/s",
              file=out)
    cols = _columns(with_numpy, memory, ceiling)
    header = " ".join(f"{n:<{w}}" if n == "case" else f"{n:>{w}}" for n, w in cols)
    print(header, file=out)
    print("-" * len(header), file=out)
    results = []
    for i, case in enumerate(cases):
        if progress is not None:
            progress.write(f"\r[{i + 1}/{len(cases)}] {case.label} ...")
            progress.flush()
        r = run_case(case, runs, with_numpy, ceiling, memory)
        if progress is not None:
            progress.write("\r" + " " * 100 + "\r")
        print(_row(r, case.label, cols), file=out, flush=True)
        results.append(r)
    summary = summarize(results)
    if "ratio_min" in summary:
        print(f"torch/fusedrnn: min {summary['ratio_min']:.3f}x, geometric mean "
              f"{summary['ratio_geomean']:.2f}x over {summary['cases_compared']} cases "
              f"(each the median of its rounds' own ratios); slower than torch in "
              f"{summary['cases_slower']}, "
              f"{summary['cases_slower_beyond_interval']} of them with all of their ratio CI "
              f"below 1", file=out)
    else:
        print("torch is not installed: fusedrnn timings only (pip install torch to compare)",
              file=out)
    if "worst_x_floor" in summary:
        print(f"farthest from the GEMM floor (floor >= {HEAVY_FLOOR_MS:g} ms): "
              f"{summary['worst_x_floor']:.2f}x "
              f"({summary['worst_x_floor_case']}); at the ceiling measured beside each case: "
              f"{summary['worst_x_floor_now']:.2f}x ({summary['worst_x_floor_now_case']}); "
              f"from the roofline beside it (W_hh read at GB/s now): "
              f"{summary['worst_x_roof_now']:.2f}x ({summary['worst_x_roof_now_case']})",
              file=out)
        over = summary["cases_over_floor_target"]
        print(f"over {FLOOR_TARGET}x of the floor at the ceiling beside each: {over} of "
              f"{summary['cases_heavy']}"
              + (f"; in {summary['cases_over_floor_target_read_bound']} of them the roofline "
                 f"itself is over {FLOOR_TARGET}x (its steps read W_hh at GB/s now), in "
                 f"{summary['cases_over_floor_target_reads_alone']} the steps' reads of W_hh "
                 f"alone take longer than that (no schedule meets {FLOOR_TARGET}x there)"
                 if over else ""), file=out)
    if "memory_ratio_max" in summary:
        print(f"training peak memory fusedrnn/torch: at most {summary['memory_ratio_max']:.2f}",
              file=out)
    return dict(ceiling_gflops=ceiling, results=results, summary=summary)
