"""The benchmark tools still run against the package: benchmarks/ab.py (two builds in one
process) on a tiny case, with two copies of the installed package, benchmarks/core_pingpong.cc
and benchmarks/read_bandwidth.cc. It checks that the tools run and report, not any timing."""

import json
import os
import re
import shutil
import subprocess
import sys

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


def test_ab_refuses_one_directory_twice(tmp_path):
    shutil.copytree(os.path.dirname(fusedrnn.__file__), tmp_path / "A" / "fusedrnn")
    proc = run_ab(str(tmp_path / "A"), str(tmp_path / "A"), "gru", "infer", "--rounds", "1")
    assert proc.returncode != 0 and "same directory" in proc.stderr


def build_tool(tmp_path, name, *flags):
    """benchmarks/<name>.cc compiled into tmp_path (a skip where no C++ compiler is found)."""
    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        pytest.skip("no C++ compiler")
    tool = tmp_path / name
    subprocess.run([compiler, "-O2", *flags, "-pthread", "-o", str(tool),
                    os.path.join(BENCHMARKS, name + ".cc")], check=True, timeout=120)
    return tool


def test_core_pingpong_reports_a_round_trip(tmp_path):
    if not {0, 1} <= os.sched_getaffinity(0):
        pytest.skip("the tool bounces a cache line between CPUs 0 and 1")
    tool = build_tool(tmp_path, "core_pingpong")
    proc = subprocess.run([str(tool)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert re.fullmatch(r"round trip \d+\.\d ns\n", proc.stdout), proc.stdout


def test_read_bandwidth_reports_a_rate(tmp_path):
    try:
        with open("/proc/cpuinfo") as f:
            has_avx2 = " avx2" in f.read()
    except OSError:
        has_avx2 = False
    if not has_avx2:
        pytest.skip("the tool reads with AVX2 loads")
    tool = build_tool(tmp_path, "read_bandwidth", "-mavx2")
    proc = subprocess.run([str(tool), "1", "2"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert re.fullmatch(r"1 MB, 2 threads: median \d+\.\d GB/s, best \d+\.\d \(checksum \S+\)\n",
                        proc.stdout), proc.stdout
    proc = subprocess.run([str(tool), "0", "2"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "expected positive integers" in proc.stderr


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


def test_bench_json_and_report_carry_the_ceiling_measured_beside_each_case(tmp_path):
    """`fusedrnn bench --json` then benchmarks/report.py on a tiny case: each result carries the
    ceiling measured in its rounds and its distance from the floor at it, and the table shows
    them. Checks the plumbing, not any timing."""
    out = tmp_path / "tiny.json"
    cli = [sys.executable, "-m", "fusedrnn.cli", "bench", "--cell", "gru", "--mode", "infer",
           "--T", "3", "--B", "2", "--H", "8", "--runs", "3", "--threads", "1",
           "--json", str(out)]
    proc = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ceil now" in proc.stdout and "at the ceiling measured beside" not in proc.stdout
    report = json.loads(out.read_text())
    (result,) = report["results"]
    assert result["ceiling_now_gflops"] > 0
    assert result["x_floor_now"] == pytest.approx(
        result["x_floor"] * result["ceiling_now_gflops"] / report["ceiling_gflops"])
    proc = subprocess.run([sys.executable, os.path.join(BENCHMARKS, "report.py"), str(out),
                           "--command", "tiny"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (tmp_path / "tiny.md").read_text()
    assert "| ceil now | x now |" in table
    assert f"| {result['x_floor_now']:.2f} |" in table
