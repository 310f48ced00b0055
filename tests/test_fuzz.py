"""Randomised malformed calls of every public entry (tests/fuzz_calls.py), run in a child process
so that a crash is caught and reported with the case that caused it rather than killing the test
run. FUSEDRNN_FUZZ_CASES sets the number of cases (default 5000, about 10 s)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from fusedrnn._backend import _core

pytestmark = pytest.mark.skipif(_core is None, reason="the compiled extension is not built")

SCRIPT = pathlib.Path(__file__).with_name("fuzz_calls.py")
CASES = int(os.environ.get("FUSEDRNN_FUZZ_CASES", "5000"))


def test_malformed_calls_raise_clear_errors_or_compute_correctly():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cases", str(CASES), "--seed", "0"],
                          capture_output=True, text=True, env=env, timeout=60 + CASES / 10)
    lines = proc.stdout.splitlines()
    if proc.returncode < 0 or not lines or not lines[-1].startswith("{"):
        last = next((l for l in reversed(lines) if l.startswith("case ")), "before any case")
        pytest.fail(f"the fuzzing process died (return code {proc.returncode}) in {last}\n"
                    f"{proc.stderr[-3000:]}")
    summary = json.loads(lines[-1])
    assert summary["failures"] == [], "\n".join(summary["failures"][:20])
    counts = summary["counts"]
    assert sum(counts.values()) == CASES and proc.returncode == 0
    # Each kind of outcome occurs, so the generator is not stuck on one of them.
    assert counts["ValueError"] and counts["TypeError"] and counts["ok"] and counts["ok (equal)"]
