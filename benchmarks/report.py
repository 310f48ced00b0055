"""Turns the JSON of `fusedrnn bench --json FILE` into a Markdown table and a PNG plot of the
torch/fusedrnn ratio against each case's GEMM work.

    fusedrnn bench --sweep --memory --json benchmarks/cpu_sweep.json
    python benchmarks/report.py benchmarks/cpu_sweep.json      # writes cpu_sweep.md and .png

The plot needs matplotlib (pip install matplotlib); without it only the table is written.
"""

import argparse
import json
import math
import pathlib
import sys

from fusedrnn.bench import FLOOR_TARGET, HEAVY_FLOOR_MS, Case, summarize


def label(case):
    return Case(**case).label


def gemm_flops(case):
    return Case(**case).flops()


def interval(result):
    """A result's ratio CI as "low-high", or "-" where it has none."""
    if "ratio_interval" not in result:
        return "-"
    low, high = result["ratio_interval"]
    return f"{low:.2f}-{high:.2f}"


def sweep_dtype(report):
    """The cases' dtype (one run of the tool times one dtype)."""
    return report["results"][0]["case"].get("dtype", "float32") if report["results"] else "?"


def table(report, command):
    m, s = report["machine"], dict(report["summary"])
    if ("cases_over_floor_target_reads_alone" not in s
            and all("x_roof_now" in r for r in report["results"])):
        s.update(summarize(report["results"]))  # a sweep from before the tool counted them
    build = m.get("build", {})
    memory = any(r.get("peak_mb") for r in report["results"])  # measured with --memory
    now = any("x_floor_now" in r for r in report["results"])  # ceiling measured beside cases
    roof = any("x_roof_now" in r for r in report["results"])  # and the bandwidth
    trip = any(r.get("round_trip_ns_now") is not None for r in report["results"])  # round trip
    ci = any("ratio_interval" in r for r in report["results"])  # the ratio's interval
    lines = [
        "# CPU sweep: fusedrnn against torch.nn",
        "",
        f"Made with `{command}` on {m['cpu']} ({m['cores']} cores), fusedrnn {m['fusedrnn']} "
        f"({build.get('recurrent_kernel', '?')} kernels; {build.get('blas', 'BLAS ?')}), "
        f"torch {m['torch']}, NumPy {m['numpy']}, Python {m['python']}. GEMM ceiling "
        f"{report['ceiling_gflops']:.1f} GFLOP/s ({sweep_dtype(report)}, measured by the tool at "
        "start).",
        "Times are medians of interleaved runs in one process (a run under 0.5 s timed after "
        "20 ms of untimed runs of its own library); "
        + ("ratio = the median of the rounds' own torch/fusedrnn ratios (each round times both "
           "back to back), ratio CI = an interval of those ratios between order statistics (of 7 "
           "rounds the 2nd smallest and the 2nd largest, of 4 to 6 the extremes) that holds the "
           "median of a round's ratio with the probability the JSON gives as "
           "ratio_interval_coverage (87.5% for 7 rounds) where rounds are independent; "
           if ci else "ratio = torch ms / fusedrnn ms; ")
        + "x floor = fusedrnn ms / (the case's GEMM flops at the ceiling)"
        + ("; ceil now = the ceiling measured again in each of the case's rounds (median), "
           "x now = x floor at it" if now else "")
        + ("; GB/s now = the bandwidth at which the threads read a buffer of W_hh's size, "
           "measured likewise, x roof = fusedrnn ms / (the floor at ceil now, each step taking "
           "at least the time to read W_hh at GB/s now)" if roof else "")
        + ("; RT ns = a cache line's round trip between two of the process's CPUs, measured "
           "likewise (where the cores share no L3 it reads several times as long, and steps that "
           "read what the other core wrote run slower)" if trip else "")
        + ("; MB = peak memory of one training step above resting, each in a fresh process."
           if memory else "."),
        "",
    ]
    if "ratio_min" in s:
        lines.append(f"**Minimum ratio {s['ratio_min']:.3f}x, geometric mean "
                     f"{s['ratio_geomean']:.2f}x over {s['cases_compared']} cases.**"
                     + (f" Slower than torch in {s['cases_slower']}"
                        + (f", {s['cases_slower_beyond_interval']} of them with all of their "
                           "ratio CI below 1." if ci else ".") if "cases_slower" in s else ""))
    if "worst_x_floor" in s:
        lines.append(f"Farthest from the floor among cases with a floor of at least "
                     f"{HEAVY_FLOOR_MS:g} ms: "
                     f"{s['worst_x_floor']:.2f}x ({s['worst_x_floor_case']})"
                     + (f"; at the ceiling measured beside each case, "
                        f"{s['worst_x_floor_now']:.2f}x ({s['worst_x_floor_now_case']})."
                        if "worst_x_floor_now" in s else ".")
                     + (f" From the roofline beside each case: {s['worst_x_roof_now']:.2f}x "
                        f"({s['worst_x_roof_now_case']})." if "worst_x_roof_now" in s else ""))
    if "cases_heavy" in s:
        lines.append(f"Over {FLOOR_TARGET}x of the floor at the ceiling beside each: "
                     f"{s['cases_over_floor_target']} of the {s['cases_heavy']} cases with a "
                     f"floor of at least {HEAVY_FLOOR_MS:g} ms; in "
                     f"{s['cases_over_floor_target_read_bound']} of "
                     f"them the roofline itself lies over {FLOOR_TARGET}x of the floor, their "
                     "steps reading W_hh at GB/s now"
                     + (f"; in {s['cases_over_floor_target_reads_alone']} the steps' reads of "
                        f"W_hh alone take longer than {FLOOR_TARGET}x of the floor, where no "
                        "schedule meets it." if "cases_over_floor_target_reads_alone" in s
                        else "."))
    if "memory_ratio_max" in s:
        lines.append(f"Training peak memory fusedrnn/torch: at most {s['memory_ratio_max']:.2f}.")
    lines += ["", "| case | fusedrnn ms | torch ms | ratio |" + (" ratio CI |" if ci else "")
              + " GFLOP/s | x floor |"
              + (" ceil now | x now |" if now else "")
              + (" GB/s now | x roof |" if roof else "")
              + (" RT ns |" if trip else "")
              + (" MB fused | MB torch |" if memory else ""),
              "|---|---:|---:|---:|" + ("---:|" if ci else "") + "---:|---:|"
              + ("---:|---:|" if now else "")
              + ("---:|---:|" if roof else "")
              + ("---:|" if trip else "")
              + ("---:|---:|" if memory else "")]
    for r in report["results"]:
        ms, peak = r["median_ms"], r.get("peak_mb") or {}

        def num(value, fmt):
            return "-" if value is None else format(value, fmt)

        lines.append(
            f"| {label(r['case'])} | {ms['fusedrnn']:.2f} | {num(ms.get('torch'), '.2f')} | "
            f"{num(r.get('ratio_torch_over_fusedrnn'), '.2f')} | "
            + (f"{interval(r)} | " if ci else "")
            + f"{r['gflops_fusedrnn']:.1f} | "
            f"{num(r.get('x_floor'), '.2f')} |"
            + (f" {num(r.get('ceiling_now_gflops'), '.0f')} | {num(r.get('x_floor_now'), '.2f')} |"
               if now else "")
            + (f" {num(r.get('read_gbps_now'), '.0f')} | {num(r.get('x_roof_now'), '.2f')} |"
               if roof else "")
            + (f" {num(r.get('round_trip_ns_now'), '.0f')} |" if trip else "")
            + (f" {num(peak.get('fusedrnn'), '.1f')} | {num(peak.get('torch'), '.1f')} |"
               if memory else ""))
    return "\n".join(lines) + "\n"


def plot(report, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(9, 5.5))
    colors = {"lstm": "tab:blue", "gru": "tab:orange", "rnn_tanh": "tab:green",
              "rnn_relu": "tab:red"}
    for mode, marker in (("train", "o"), ("infer", "^")):
        for cell, color in colors.items():
            pts = [(gemm_flops(r["case"]), r["ratio_torch_over_fusedrnn"])
                   for r in report["results"]
                   if r["case"]["mode"] == mode and r["case"]["cell"] == cell
                   and "ratio_torch_over_fusedrnn" in r]
            if pts:
                ax.scatter(*zip(*pts), c=color, marker=marker, alpha=0.8,
                           label=f"{cell} {mode}")
    ax.axhline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    ax.set_yscale("log", base=2)
    ax.set_xlabel("GEMM work of the case (flops)")
    ax.set_ylabel("torch.nn time / fusedrnn time")
    ax.set_title(f"fusedrnn vs torch.nn on the CPU, {sweep_dtype(report)} "
                 "(above 1: fusedrnn faster)")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=pathlib.Path, help="output of fusedrnn bench --json")
    parser.add_argument("--command", default="fusedrnn bench --sweep --memory --json "
                        "benchmarks/cpu_sweep.json", help="the command that made the JSON")
    args = parser.parse_args(argv)
    report = json.loads(args.json.read_text())
    if not math.isfinite(report.get("ceiling_gflops") or float("nan")):
        raise SystemExit(f"{args.json}: no GEMM ceiling (was fusedrnn built?)")
    md = args.json.with_suffix(".md")
    md.write_text(table(report, args.command))
    print(f"wrote {md}")
    png = args.json.with_suffix(".png")
    if plot(report, png):
        print(f"wrote {png}")


if __name__ == "__main__":
    main()
