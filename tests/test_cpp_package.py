"""The C++ package: `cmake --install` of the library into a temporary prefix, then
examples/cpp configured with find_package(fusedrnn), built and run; its printed final state must
equal fusedrnn.ops on the same inputs, and its own finite-difference check must pass."""

import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from fusedrnn import ops

ROOT = pathlib.Path(__file__).resolve().parent.parent
CMAKE = shutil.which("cmake")
COMPILER = os.environ.get("CXX") or next(
    (c for c in ("c++", "g++", "clang++") if shutil.which(c)), None)

pytestmark = [
    pytest.mark.skipif(CMAKE is None, reason="the C++ package test needs cmake on PATH"),
    pytest.mark.skipif(COMPILER is None, reason="the C++ package test needs a C++ compiler"),
    pytest.mark.skipif(not (ROOT / "CMakeLists.txt").is_file(),
                       reason="the C++ package test needs the source tree"),
]


def cmake(*args, cwd):
    result = subprocess.run([CMAKE, *map(str, args)], cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, f"cmake {' '.join(map(str, args))}\n{result.stdout}\n" \
                                   f"{result.stderr}"


def wave(n, phase, scale):
    """The example's deterministic inputs: v[k] = scale * sin(0.7 * k + phase)."""
    return scale * np.sin(0.7 * np.arange(n) + phase)


def test_installed_package_builds_and_runs_the_example(tmp_path):
    pytest.importorskip("scipy_openblas32", reason="building fusedrnn needs scipy-openblas32")
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    build, prefix, app = tmp_path / "build", tmp_path / "prefix", tmp_path / "app"
    cmake("-S", ROOT, "-B", build, *generator, "-DFUSEDRNN_PYTHON=OFF",
          f"-DPython_EXECUTABLE={sys.executable}", f"-DCMAKE_CXX_COMPILER={COMPILER}",
          cwd=tmp_path)
    cmake("--build", build, "--parallel", "2", cwd=tmp_path)
    cmake("--install", build, "--prefix", prefix, "--component", "cpp", cwd=tmp_path)
    installed = sorted(p.relative_to(prefix).as_posix() for p in prefix.rglob("*") if p.is_file())
    assert "include/fusedrnn/rnn.h" in installed
    assert any(p.endswith("libfusedrnn.a") for p in installed), installed
    assert any(p.endswith("cmake/fusedrnn/fusedrnnConfig.cmake") for p in installed), installed

    cmake("-S", ROOT / "examples" / "cpp", "-B", app, *generator, f"-DCMAKE_PREFIX_PATH={prefix}",
          f"-DCMAKE_CXX_COMPILER={COMPILER}", cwd=tmp_path)
    cmake("--build", app, cwd=tmp_path)
    run = subprocess.run([str(app / "lstm_example")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr  # its gradient check failed otherwise
    h_n = np.array([float(v) for v in run.stdout.splitlines()[0].split()[1:]])

    T, B, I, H, G = 4, 2, 3, 5, 4
    expected = ops.forward("lstm", wave(T * B * I, 0.0, 1.0).reshape(T, B, I),
                           wave(G * H * I, 1.0, 0.4).reshape(G * H, I),
                           wave(G * H * H, 2.0, 0.4).reshape(G * H, H), wave(G * H, 3.0, 0.4),
                           wave(G * H, 4.0, 0.4), backend="numpy").h_n
    # The reference in float64, against the kernels' printed 17 digits: summation order only.
    np.testing.assert_allclose(h_n.reshape(B, H), expected, rtol=1e-12, atol=1e-15)
