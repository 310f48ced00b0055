"""The benchmark tools still run against the package: benchmarks/ab.py (two builds in one
process) on a tiny case, with two copies of the installed package, and `fusedrnn bench`'s
yardsticks (GEMM ceiling, read bandwidth, roofline, the cores' round trip). It checks that the
tools run and report, and the yardsticks' arithmetic, not any timing."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import fusedrnn
from fusedrnn._backend import _core

pytestmark = pytest.mark.skipif(_core is None, reason="the compiled extension is not built")

BENCHMARKS = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks")
AB = os.path.join(BENCHMARKS, "ab.py")


def run_ab(*args):
    return subprocess.run([sys.executable, AB, *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("cell, mode", [("lstm", "train"), ("rnn_relu", "infer")])
def test_ab_compares_two_copies_of_a_build(tmp_path, cell, mode):
    package = os.path.dirname(fusedrnn.__file__)
    for label in "AB":
        shutil.copytree(package, tmp_path / label / "fusedrnn")
    proc = run_ab(str(tmp_path / "A"), str(tmp_path / "B"), cell, mode, "--T", "3", "--B", "2",
                  "--H", "8", "--rounds", "2", "--secs", "0.01", "--threads", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{cell} {mode} T=3 B=2 I=8 H=8 L=1: A " in proc.stdout and "B/A" in proc.stdout
    assert "by round" in proc.stdout


def test_ab_refuses_one_directory_twice(tmp_path):
    shutil.copytree(os.path.dirname(fusedrnn.__file__), tmp_path / "A" / "fusedrnn")
    proc = run_ab(str(tmp_path / "A"), str(tmp_path / "A"), "gru", "infer", "--rounds", "1")
    assert proc.returncode != 0 and "same directory" in proc.stderr


def test_core_round_trip_is_measured_and_checks_its_arguments():
    ns = _core.core_round_trip_ns(3)
    if len(os.sched_getaffinity(0)) < 2:
        assert ns is None  # one CPU: no second to bounce the line to
    else:
        assert 0 < ns < 1e6  # a round trip between cores, not a time slice
    with pytest.raises(ValueError, match="repeats: expected 1..1000, got 0"):
        _core.core_round_trip_ns(0)
    # A process held to one CPU has no round trip to time (and must not hang trying).
    code = ("import os, sys; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from fusedrnn._backend import _core; print(_core.core_round_trip_ns(3))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stdout.split()[-1] == "None", proc.stderr[-2000:]


def test_read_bandwidth_is_measured_and_checks_its_arguments():
    assert _core.read_gbps(1 << 16, 3) > 0
    with pytest.raises(ValueError, match="bytes: expected 4096..2\\^34, got 100"):
        _core.read_gbps(100, 1)
    with pytest.raises(ValueError, match="repeats: expected 1..1000, got 0"):
        _core.read_gbps(1 << 16, 0)


def test_roofline_is_the_floor_until_reading_w_hh_takes_longer_than_its_product():
    """A step's product of B rows by W_hh does 2·B·G·H·H flops on G·H·H·4 bytes: at 400 GFLOP/s
    and 100 GB/s the read takes longer below B=8 (4 flops a byte)."""
    from fusedrnn import bench

    ceiling, bandwidth = 400.0, 100.0
    for B in (1, 4, 16, 128):
        case = bench.Case(cell="lstm", mode="train", T=20, B=B, I=256, H=512)
        floor, roof = bench._floor_ms(case, ceiling), bench._roof_ms(case, ceiling, bandwidth)
        steps = case.recurrent_steps()
        assert steps == 2 * 20
        step_read_ms = 4 * 512 * 512 * 4 / (bandwidth * 1e9) * 1e3
        step_product_ms = 2 * B * 4 * 512 * 512 / (ceiling * 1e9) * 1e3
        assert roof == pytest.approx(
            floor + steps * max(0.0, step_read_ms - step_product_ms), rel=1e-12)
        assert (roof > floor * (1 + 1e-9)) == (B < 8)


def test_summary_counts_the_cases_over_the_floor_target_and_those_held_there_by_their_roof():
    """Of the cases with a floor of at least 5 ms, those over 1.3x of it at the ceiling beside
    them, and of those the ones whose roofline (x_floor_now / x_roof_now of the floor) is itself
    over 1.3x: no schedule that reads W_hh at each step apart from the other products brings
    those within the target at the bandwidth measured."""
    from fusedrnn import bench

    def result(floor_ms, x_floor_now, x_roof_now, H):
        case = bench.Case(cell="lstm", T=20, B=1, I=H, H=H)
        return dict(case=vars(case), floor_ms=floor_ms, x_floor=x_floor_now,
                    x_floor_now=x_floor_now, x_roof_now=x_roof_now, ceiling_now_gflops=400.0,
                    read_gbps_now=200.0)

    summary = bench.summarize([
        result(10.0, 1.2, 1.1, 8),    # within the target
        result(10.0, 1.6, 1.5, 16),   # over it, its roofline 1.07x of the floor
        result(10.0, 2.0, 1.2, 32),   # over it, its roofline 1.67x of the floor
        result(2.0, 3.0, 1.0, 64),    # a floor under 5 ms: not counted
    ])
    assert (summary["cases_heavy"], summary["cases_over_floor_target"],
            summary["cases_over_floor_target_read_bound"]) == (3, 2, 1)
    assert summary["worst_x_floor_now"] == 2.0 and "H=32" in summary["worst_x_floor_now_case"]


def test_summary_counts_the_cases_whose_reads_of_w_hh_alone_take_longer_than_the_target():
    """Where the steps' reads of W_hh alone, at the bandwidth measured beside a case, take longer
    than 1.3x of its floor at the ceiling beside it (not the one measured at start), no schedule
    meets the target: LSTM inference T=200 B=1 H=1024 reads 200 times 16 MB; its floor is its
    2·2·T·4H·H flops."""
    from fusedrnn import bench

    case = bench.Case(cell="lstm", mode="infer", T=200, B=1, I=1024, H=1024)
    ceiling_at_start, ceiling_beside = 500.0, 400.0
    flops = 2 * 2 * 200 * 4 * 1024 * 1024
    floor_beside_ms = flops / (ceiling_beside * 1e9) * 1e3
    reads_at_1_gbps_ms = 200 * 4 * 1024 * 1024 * 4 / 1e9 * 1e3

    def result(reads_over_floor):
        gbps = reads_at_1_gbps_ms / (reads_over_floor * floor_beside_ms)
        return dict(case=vars(case), floor_ms=flops / (ceiling_at_start * 1e9) * 1e3,
                    x_floor=3.0, x_floor_now=3.0, x_roof_now=1.1,
                    ceiling_now_gflops=ceiling_beside, read_gbps_now=gbps)

    for reads_over_floor, counted in ((1.2, 0), (1.4, 1)):
        summary = bench.summarize([result(reads_over_floor)])
        assert (summary["cases_over_floor_target"],
                summary["cases_over_floor_target_reads_alone"]) == (1, counted)


def test_paired_ratio_is_the_rounds_median_and_its_interval_holds_it_as_often_as_it_says():
    """The rounds' own ratios: their median, and the 2nd smallest to the 2nd largest of 7
    (87.5%), the extremes of 3 (75%); drawn from a known distribution, the interval holds the
    distribution's median at that rate."""
    from fusedrnn import bench

    assert bench.paired_ratio([3, 9, 6, 4, 8, 5, 7], [1] * 7) == (6, 4, 8, 0.875)
    assert bench.paired_ratio([2, 6, 3], [2, 2, 1]) == (3, 1, 3, 0.75)
    # Which order statistics: the innermost pair that keeps RATIO_COVERAGE (3 rounds cannot).
    picked = {n: bench.paired_ratio(range(1, n + 1), [1] * n)[1:] for n in range(3, 16)}
    assert picked[9] == (3, 7, pytest.approx(0.8203125))
    assert picked[12] == (4, 9, pytest.approx(0.85400390625))
    for n in range(4, 16):
        low, high, coverage = picked[n]
        assert coverage >= bench.RATIO_COVERAGE
        if low <= (n - 1) // 2:  # the next pair in was tried, and falls short
            assert bench._interval_coverage(n, int(low)) < bench.RATIO_COVERAGE
    with pytest.raises(ValueError, match="as many timed rounds of each.*got 2 and 3"):
        bench.paired_ratio([1, 2], [1, 2, 3])
    rng = np.random.default_rng(0)
    for rounds in (3, 7, 12):
        trials, held, coverage = 4000, 0, None
        for _ in range(trials):
            peer = rng.lognormal(0.0, 0.1, rounds)  # the ratios' median is exactly 1
            _, low, high, coverage = bench.paired_ratio(peer, np.ones(rounds))
            held += low <= 1 <= high
        assert abs(held / trials - coverage) < 0.025, (rounds, held / trials, coverage)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS is read from /proc")
def test_bench_peak_memory_counts_what_a_step_allocates():
    """`fusedrnn bench --memory`'s fresh-process measurement sees at least the weight gradients a
    GRU training step returns (6 MB). Before the heap's free memory was given back first, a step
    could reuse what setting the case up had freed: this case read 0.0 MB."""
    from fusedrnn import bench

    case = bench.Case(cell="gru", mode="train", T=20, B=1, I=512, H=512)
    gradients_mb = 2 * 3 * 512 * 512 * 4 / 2**20
    for _ in range(2):
        assert bench.peak_step_memory(case, "fusedrnn") >= gradients_mb


def test_bench_json_and_report_carry_the_yardsticks_measured_beside_each_case(tmp_path):
    """`fusedrnn bench --json` then benchmarks/report.py on a tiny case: each result carries the
    ceiling and the read bandwidth measured in its rounds and its distances from the floor and
    the roofline at them, and the table shows them. Checks the plumbing, not any timing."""
    out = tmp_path / "tiny.json"
    cli = [sys.executable, "-m", "fusedrnn.cli", "bench", "--cell", "gru", "--mode", "infer",
           "--T", "3", "--B", "2", "--H", "8", "--runs", "3", "--threads", "1",
           "--json", str(out)]
    proc = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ceil now" in proc.stdout and "at the ceiling measured beside" not in proc.stdout
    assert "ratio CI" in proc.stdout
    report = json.loads(out.read_text())
    (result,) = report["results"]
    assert result["ceiling_now_gflops"] > 0
    assert result["x_floor_now"] == pytest.approx(
        result["x_floor"] * result["ceiling_now_gflops"] / report["ceiling_gflops"])
    assert result["read_gbps_now"] > 0
    assert result["x_roof_now"] <= result["x_floor_now"] * (1 + 1e-12)  # the roof is no lower
    trip = result["round_trip_ns_now"]
    assert trip is None if len(os.sched_getaffinity(0)) < 2 else trip > 0
    assert len(result["round_trips_ns"]) == result["runs"]  # one a round, the median of them
    proc = subprocess.run([sys.executable, os.path.join(BENCHMARKS, "report.py"), str(out),
                           "--command", "tiny"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (tmp_path / "tiny.md").read_text()
    assert "| ceil now | x now | GB/s now | x roof |" in table
    if "ratio_torch_over_fusedrnn" in result:  # torch is installed: the rounds' own ratios
        low, high = result["ratio_interval"]
        assert 0 < low <= result["ratio_torch_over_fusedrnn"] <= high
        assert result["ratio_interval_coverage"] == 0.75  # 3 rounds: the extremes
        rounds = result["rounds_ms"]
        assert sorted(t / f for t, f in zip(rounds["torch"], rounds["fusedrnn"]))[1] == \
            pytest.approx(result["ratio_torch_over_fusedrnn"])
        assert f"| {low:.2f}-{high:.2f} |" in table
    assert f"| {result['x_floor_now']:.2f} | {result['read_gbps_now']:.0f} | " in table


def test_report_of_a_committed_sweep_counts_the_cases_held_by_their_reads_alone(tmp_path):
    """benchmarks/report.py on the committed Zen 5 sweep (which has cases with a floor over 5 ms):
    its summary line gives the counts summarize() takes from the results."""
    from fusedrnn import bench

    sweep = tmp_path / "sweep.json"
    shutil.copyfile(os.path.join(BENCHMARKS, "cpu_sweep.json"), sweep)
    summary = bench.summarize(json.loads(sweep.read_text())["results"])
    proc = subprocess.run([sys.executable, os.path.join(BENCHMARKS, "report.py"), str(sweep),
                           "--command", "sweep"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (tmp_path / "sweep.md").read_text()
    assert (f"{summary['cases_over_floor_target']} of the {summary['cases_heavy']} cases with a "
            f"floor of at least 5 ms; in {summary['cases_over_floor_target_read_bound']} of them "
            f"the roofline itself") in table
    assert (f"in {summary['cases_over_floor_target_reads_alone']} the steps' reads of W_hh alone "
            "take longer than 1.3x of the floor") in table
