"""Every example in quick mode, with the quality it promises asserted. Each run takes seconds
(marked `examples`; deselect with -m "not examples"); the ones that need scikit-learn skip
without it, and a missing matplotlib only skips the plots."""

import importlib
import pathlib
import sys

import numpy as np
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


@pytest.mark.examples
def test_digits():
    pytest.importorskip("sklearn", reason="the bundled digits come with scikit-learn")
    digits = example("digits")
    r = digits.main(["--quick"])
    assert r["BiLSTM"]["accuracy"] >= digits.TARGET_BILSTM_ACCURACY
    assert r["LSTM"]["accuracy"] >= 0.9


def test_digits_without_scikit_learn_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import fails as if absent
    with pytest.raises(SystemExit, match=r"need scikit-learn \(pip install 'fusedrnn\[examples\]'"):
        example("digits").main(["--quick"])


def test_plots_are_skipped_without_matplotlib(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    sine = example("sine")
    assert sine.save_plot(tmp_path / "sine.png", np.zeros(3), np.zeros(3)) is None
    assert example("gru_variants").save_plot(tmp_path / "gru.png", {"a": [[1.0] * 30]}) is None
    assert not list(tmp_path.iterdir())


def test_digits_reads_mnist_as_npz_and_idx(tmp_path):
    digits = example("digits")
    rng = np.random.default_rng(0)
    parts = {"x_train": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
             "y_train": rng.integers(0, 10, 5, dtype=np.uint8),
             "x_test": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
             "y_test": rng.integers(0, 10, 3, dtype=np.uint8)}
    np.savez(tmp_path / "mnist.npz", **parts)
    idx_dir = tmp_path / "idx"
    idx_dir.mkdir()
    names = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
             "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}
    for key, name in names.items():
        a = parts[key]
        header = bytes([0, 0, 8, a.ndim]) + b"".join(d.to_bytes(4, "big") for d in a.shape)
        (idx_dir / name).write_bytes(header + a.tobytes())
    for source in (tmp_path / "mnist.npz", idx_dir):
        x_train, y_train, x_test, y_test = digits.mnist(source)
        np.testing.assert_allclose(x_train, parts["x_train"] / 255.0, rtol=1e-6)
        np.testing.assert_array_equal(y_test, parts["y_test"])
        assert x_test.dtype == np.float32 and y_train.dtype == np.int64
    # The MNIST path end to end, on these few random images: it runs and reports accuracies.
    r = digits.main(["--quick", "--mnist", str(idx_dir), "--hidden", "8"])
    assert all(0 <= r[k]["accuracy"] <= 1 for k in ("LSTM", "BiLSTM"))
    (idx_dir / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x09\x01")
    with pytest.raises(ValueError, match="header says shape"):
        digits.mnist(idx_dir)


@pytest.mark.examples
def test_char_lm():
    char_lm = example("char_lm")
    r = char_lm.main(["--quick", "--length", "100"])
    # From about ln(vocabulary) untrained to well below it: the model has learnt the text's
    # character statistics, not just its alphabet.
    assert r["held_out_before"] > 0.9 * r["uniform_loss"]
    assert r["held_out"] < 0.6 * r["uniform_loss"]
    assert r["last_loss"] < r["first_loss"] - 1.0
    assert r["sample"].startswith("def ") and len(r["sample"]) == 104


def test_char_lm_streams_and_chunks():
    char_lm = example("char_lm")
    vocab = char_lm.Vocabulary("abcab")
    assert vocab.chars == ["a", "b", "c"] and vocab.decode(vocab.encode("cab")) == "cab"
    np.testing.assert_array_equal(char_lm.streams(np.arange(10), 3),
                                  [[0, 1, 2], [3, 4, 5], [6, 7, 8]])
    # Each chunk needs steps + 1 ids: its inputs and, shifted by one, its targets.
    assert list(char_lm.chunk_starts(10, 3)) == [0, 3, 6]


@pytest.mark.examples
def test_vanilla_rnn():
    vanilla = example("vanilla_rnn")
    r = vanilla.main(["--quick"])
    assert all(err < vanilla.GRAD_RTOL for err in r["grad_errors"].values()), r["grad_errors"]
    assert r["curve"][-1] < 0.5 * r["uniform_loss"] < r["curve"][0]


@pytest.mark.examples
def test_gru_variants(tmp_path):
    gru = example("gru_variants")
    r = gru.main(["--quick", "--plot", str(tmp_path / "gru.png")])
    assert set(r["results"]) == set(gru.VARIANTS)
    for label, res in r["results"].items():
        assert res["held_out"] < 0.6 * r["uniform_loss"], label
    check_plot(r, tmp_path / "gru.png")
