"""Every example in quick mode, with the quality it promises asserted. Each run takes seconds
(marked `examples`; deselect with -m "not examples"); the ones that need scikit-learn skip
without it, and a missing matplotlib only skips the plots."""

import importlib
import pathlib
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))  # the examples import their shared helpers as scripts do

try:
    import matplotlib  # noqa: F401
except ImportError:
    HAS_MATPLOTLIB = False
else:
    HAS_MATPLOTLIB = True


def example(name):
    return importlib.import_module(name)


def check_plot(result, path):
    if HAS_MATPLOTLIB:
        assert result["plot"] == str(path) and path.stat().st_size > 10_000
    else:
        assert result["plot"] is None and not path.exists()


@pytest.mark.examples
def test_sine(tmp_path):
    sine = example("sine")
    r = sine.main(["--quick", "--plot", str(tmp_path / "sine.png")])
    assert r["test_mse"] <= sine.TARGET_MSE
    check_plot(r, tmp_path / "sine.png")
