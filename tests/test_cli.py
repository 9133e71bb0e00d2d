"""The ``pbc`` command line: smoke runs on generated data and argument errors (bad data and
resume through the command line: test_reliability.py and test_train.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pbc.cli import main


def _train_args(idx_dir, out, *extra):
    return ["train", "--data", "fashion-mnist", "--data-dir", str(idx_dir), "--subset", "60",
            "--batch-size", "30", "--epochs", "1", "--threads", "1", "--no-progress",
            "--out", str(out), *extra]


def test_progress_bars_only_on_a_terminal(idx_dir, tmp_path, capsys):
    """With progress on, a log that is not a terminal gets each epoch's summary line and no
    progress bar (no carriage returns, no steps per second)."""
    args = [a for a in _train_args(idx_dir, tmp_path / "r") if a != "--no-progress"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "epoch 1 |" in out and "train err" in out
    assert "\r" not in out + err and "step/s" not in out + err


@pytest.mark.parametrize("model,prior", [("lenet300", "gnj"), ("lenet5", "ghs")])
def test_train_smoke(idx_dir, tmp_path, capsys, model, prior):
    out = tmp_path / f"{model}-{prior}"
    assert main(_train_args(idx_dir, out, "--model", model, "--prior", prior)) == 0
    assert "test error" in capsys.readouterr().out
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1]
    assert json.loads((out / "config.json").read_text())["config"]["model"] == model


def test_pretrain_then_init_from(idx_dir, tmp_path):
    assert main(["pretrain", *_train_args(idx_dir, tmp_path / "pre")[1:]]) == 0
    assert main(_train_args(idx_dir, tmp_path / "bc", "--init-from", str(tmp_path / "pre"))) == 0
    cfg = json.loads((tmp_path / "pre" / "config.json").read_text())["config"]
    assert cfg["prior"] == "none"


@pytest.mark.parametrize("bad", [
    ["--model", "resnet"], ["--prior", "laplace"], ["--data", "svhn"], ["--epochs", "-1"],
    ["--epochs", "zero"], ["--lr", "0"], ["--batch-size", "0"], ["--kl-warmup", "-2"],
    ["--max-weight-var", "-1"], ["--max-weight-var", "fc1=x"], ["--max-weight-var", "fc9=0.04"],
])
def test_bad_arguments_exit_2(idx_dir, tmp_path, capsys, bad):
    with pytest.raises(SystemExit) as e:
        main(_train_args(idx_dir, tmp_path / "x", *bad))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("pbc") and "error" in err[-1]


def test_cuda_requested_without_cuda_exits_2(idx_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(SystemExit) as e:
        main(_train_args(idx_dir, tmp_path / "x", "--device", "cuda"))
    assert e.value.code == 2 and "CUDA" in capsys.readouterr().err


def test_console_script_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pbc.cli", "train", "--model", "nope",
                           "--out", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_demo_runs_every_stage_on_generated_data(idx_dir, tmp_path, capsys):
    assert main(["demo", "--data-dir", str(idx_dir), "--epochs", "1", "--pretrain-epochs", "1",
                 "--threads", "1", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "[7/7]" in out and "max compression" in out and "speed-up" in out
    for run in ("lenet300-gnj", "lenet300-gnj-finetuned"):
        for name in ("metrics.jsonl", "posterior.nc", "layers.csv", "compression.json",
                     "model.pbcz", "bench.json"):
            assert (tmp_path / "demo" / run / name).is_file(), (run, name)
    tuned = json.loads((tmp_path / "demo" / "lenet300-gnj-finetuned" / "config.json")
                       .read_text())["config"]
    assert tuned["finetune_from"] == str(tmp_path / "demo" / "lenet300-gnj")
    report = tmp_path / "demo" / "report.pdf"
    assert report.read_bytes().startswith(b"%PDF")
    assert (tmp_path / "demo" / "report.table2.csv").is_file()


def test_help_imports_no_torch():
    """``pbc --help`` and every ``pbc CMD --help`` answer without importing torch, Pyro,
    ArviZ, pandas, matplotlib or Ray (a fresh interpreter, which has imported none of them)."""
    code = """
import contextlib, io, sys
from pbc.cli import build_parser
parser = build_parser()
commands = parser._subparsers._group_actions[0].choices
for argv in [["--help"], *([name, "--help"] for name in commands)]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        parser.parse_args(argv)
    assert out.getvalue().startswith("usage: pbc"), argv
heavy = ("torch", "pyro", "arviz", "pandas", "matplotlib", "ray")
print(len(commands), [m for m in heavy if m in sys.modules])
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "12 []"


def test_parser_choices_are_the_libraries_names():
    """The torch-free lists the parser offers name what the library registers."""
    from pbc import export, methods
    from pbc.defaults import EXPORT_FORMATS, MODELS, PRIORS
    from pbc.nets import ARCHITECTURES

    assert methods.names() == PRIORS
    assert tuple(ARCHITECTURES) == MODELS
    assert tuple(export.FORMATS) == EXPORT_FORMATS
