"""Reliability of what the user gives: data directories (missing, a file, a symlink loop, a
gzip bomb) and flag values that cannot be meant (NaN thresholds, unknown devices, absurd
sizes).  No silent fallback, no blow-up: one line, exit 1 (data) or 2 (arguments)."""

from __future__ import annotations

import gzip
import json
import struct
import time

import pytest
from conftest import make_idx_dataset, one_line_error, peak_memory, tiny_train_args

from pbc.cli import main
from pbc.data import MAX_IDX_BYTES, load_dataset


def _code(argv) -> int:
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def _usage_error(err: str, *needles: str) -> None:
    """argparse's refusal: usage, then one ``pbc …: error: …`` line holding the needles."""
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("pbc") and "error:" in last, last
    for needle in needles:
        assert needle in last, f"{needle!r} not in {last!r}"


# ------------------------------------------------------------------------- --data-dir
def _data_dir(tmp_path, kind):
    if kind == "missing":
        return tmp_path / "nonexistent"
    if kind == "file":
        (tmp_path / "a-file").write_text("x")
        return tmp_path / "a-file"
    if kind == "symlink-loop":
        (tmp_path / "loop").symlink_to(tmp_path / "loop")
        return tmp_path / "loop"
    d = tmp_path / "empty"
    d.mkdir()
    return d


@pytest.mark.parametrize("kind", ["missing", "file", "symlink-loop", "empty"])
@pytest.mark.parametrize("command", ["evaluate", "train"])
def test_an_unusable_data_dir_is_an_error_not_a_fallback(trained_runs, tiny_data, tmp_path,
                                                         capsys, monkeypatch, kind, command):
    """The system's Fashion-MNIST (or $PBC_DATA's) is there to be found; an explicit
    --data-dir that does not hold the data must not fall back to it."""
    monkeypatch.setenv("PBC_DATA", str(tiny_data))
    assert load_dataset("fashion-mnist").source == str(tiny_data)     # the fallback exists
    data_dir = _data_dir(tmp_path, kind)
    if command == "evaluate":
        model = trained_runs.path(stage="compressed") / "model.pbcz"
        argv = ["evaluate", str(model), "--data-dir", str(data_dir)]
    else:
        argv = tiny_train_args(data_dir, tmp_path / "run")
    assert _code(argv) == 1
    one_line_error(capsys.readouterr().err, str(data_dir), "train-images-idx3-ubyte")
    assert not (tmp_path / "run").exists()


def _bomb(path, n_images: int, real: int = 1000) -> None:
    """A gzip IDX file whose header declares ``n_images`` 28x28 images, with ``real`` of
    them actually present (zeros compress about a thousand to one)."""
    header = bytes([0, 0, 8, 3]) + struct.pack(">III", n_images, 28, 28)
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(header)
        f.write(bytes(real * 784))


@pytest.mark.parametrize("declared", [MAX_IDX_BYTES // 784 + 1, 10_000_000],
                         ids=["just-over-the-limit", "ten-million"])
def test_a_gzip_bomb_is_refused_from_its_header(tmp_path, capsys, declared):
    d = make_idx_dataset(tmp_path / "data")
    bomb = d / "train-images-idx3-ubyte.gz"
    _bomb(bomb, declared)
    t0 = time.perf_counter()
    with peak_memory() as peak:
        assert _code(tiny_train_args(d, tmp_path / "run")) == 1
    one_line_error(capsys.readouterr().err, str(bomb), "over the limit")
    assert peak.bytes < 64 << 20 and time.perf_counter() - t0 < 10


def test_a_gzip_stream_is_never_decompressed_past_its_header(tmp_path, capsys):
    """A header declaring 1000 images over a stream of 20000: refused after reading the
    declared size and one byte more, not the whole stream."""
    d = make_idx_dataset(tmp_path / "data")
    bomb = d / "train-images-idx3-ubyte.gz"
    _bomb(bomb, 1000, real=20000)
    with peak_memory() as peak:
        assert _code(tiny_train_args(d, tmp_path / "run")) == 1
    one_line_error(capsys.readouterr().err, str(bomb), "trailing bytes")
    assert peak.bytes < 8 * 1000 * 784 + (32 << 20)     # never the 20000 images' 16 MB as floats


def test_evaluate_reads_only_the_test_split(trained_runs, tiny_data, tmp_path, capsys):
    """evaluate needs the test images alone: a broken (or huge) training file is not read."""
    d = make_idx_dataset(tmp_path / "data")
    (d / "train-images-idx3-ubyte.gz").write_bytes(b"not read")
    model = trained_runs.path(stage="compressed") / "model.pbcz"
    assert main(["evaluate", str(model), "--data-dir", str(d)]) == 0
    assert "(100 images)" in capsys.readouterr().out


# ------------------------------------------------------------------------------- flags
@pytest.mark.parametrize("thresholds", ["fc1=nan", "fc1=inf", "fc1=-inf,fc2=1", "fc2=NaN"])
def test_non_finite_thresholds_are_refused(trained_runs, tmp_path, capsys, thresholds):
    run = trained_runs.copy(tmp_path / "run")
    assert _code(["analyse", str(run), "--thresholds", thresholds, "--no-figures"]) == 2
    one_line_error(capsys.readouterr().err, "--thresholds", "finite")
    assert not (run / "analysis.json").exists()


@pytest.mark.parametrize("bad", [
    ["--device", "gpu"], ["--device", "cuda:x"], ["--device", ""], ["--seed", "-1"],
    ["--seed", str(2**64)], ["--epochs", "1000000000"], ["--batch-size", str(10**12)],
    ["--threads", "100000"], ["--subset", str(10**15)], ["--val", str(10**15)],
    ["--kl-warmup", str(10**9)], ["--lr", "nan"], ["--tau0", "inf"],
])
def test_absurd_train_flags_exit_2(tiny_data, tmp_path, capsys, bad):
    assert _code(tiny_train_args(tiny_data, tmp_path / "run", *bad)) == 2
    _usage_error(capsys.readouterr().err, bad[0])
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("bad", [
    ["bench", "--batch", str(10**9)], ["bench", "--device", "tpu"],
    ["bench", "--repeats", str(10**9)], ["analyse", "--draws", str(10**9)],
    ["analyse", "--error-budget", "nan"],
])
def test_absurd_stage_flags_exit_2(trained_runs, capsys, bad):
    command, *flags = bad
    assert _code([command, str(trained_runs.path()), *flags]) == 2
    _usage_error(capsys.readouterr().err, flags[0])


def test_flags_at_their_bounds_still_run(tiny_data, tmp_path):
    """The bounds are far from real settings: the largest seed trains."""
    assert main(tiny_train_args(tiny_data, tmp_path / "run", "--seed", str(2**32 - 1),
                                "--device", "cpu")) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert saved["seed"] == 2**32 - 1
