"""Reliability of artefacts read back: damaged checkpoints, malformed JSON and JSON lines,
files out of step with the record that describes them, hostile figure paths and images.

Each case goes through the ``pbc`` command line in-process and must end in one line with
exit 1 (exit 2 for bad arguments), never a traceback, never a result computed from the bad
file.
"""

from __future__ import annotations

import json
import struct
import zipfile
import zlib

import pytest
import torch
from conftest import one_line_error, peak_memory, tiny_train_args

from pbc.cli import main


def _code(argv) -> int:
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def _rewrite_checkpoint(path, change) -> None:
    ckpt = torch.load(path, weights_only=True)
    torch.save(change(ckpt), path)


def _flip_tensor_bytes(path) -> None:
    """Alter 1000 bytes of the largest tensor inside the zip, leaving its CRC as it was."""
    with zipfile.ZipFile(path) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    blob = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack_from("<HH", blob, info.header_offset + 26)
    start = info.header_offset + 30 + name_len + extra_len
    for i in range(start + 100, start + 1100):
        blob[i] ^= 0x01
    path.write_bytes(bytes(blob))


def _set(key, value):
    def change(ckpt):
        ckpt[key] = value
        return ckpt
    return change


def _drop(key):
    def change(ckpt):
        del ckpt[key]
        return ckpt
    return change


def _model(edit):
    def change(ckpt):
        name = next(k for k, v in ckpt["model"].items() if v.is_floating_point() and v.dim() == 2)
        ckpt["model"][name] = edit(ckpt["model"][name])
        return ckpt
    return change


def _nan(t):
    t = t.clone()
    t.view(-1)[3] = float("nan")
    return t


def _huge(t):
    t = t.clone()
    t.view(-1)[3] = 3e38
    return t


CHECKPOINT_CASES = {
    "no-model": _drop("model"), "no-epoch": _drop("epoch"),
    "string": lambda ckpt: "not a checkpoint", "model-is-a-string": _set("model", "weights"),
    "epoch-is-a-string": _set("epoch", "3"), "wrong-shape": _model(lambda t: t[:, :-1]),
    "nan-weights": _model(_nan), "overflowing-weights": _model(_huge),
}


@pytest.mark.parametrize("command", ["resume", "analyse", "compress"])
@pytest.mark.parametrize("case", [*CHECKPOINT_CASES, "altered-bytes"])
def test_damaged_checkpoint_is_one_line_exit_1(trained_runs, tiny_data, tmp_path, capsys,
                                               cpu_threads, command, case):
    stage = "analysed" if command == "compress" else "trained"
    run = trained_runs.copy(tmp_path / "run", stage=stage)
    ckpt = run / "checkpoint.pt"
    if case == "altered-bytes":
        _flip_tensor_bytes(ckpt)
    else:
        _rewrite_checkpoint(ckpt, CHECKPOINT_CASES[case])
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    argv = {"resume": tiny_train_args(tiny_data, run, "--resume"),
            "analyse": ["analyse", str(run), "--no-figures", "--draws", "8"],
            "compress": ["compress", str(run)]}[command]
    assert _code(argv) == 1
    line = one_line_error(capsys.readouterr().err, str(run), "checkpoint.pt")
    if case == "altered-bytes":
        assert "CRC" in line
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert after == before, "a stage wrote something from a damaged checkpoint"


# --------------------------------------------------------------------------- metrics.jsonl
@pytest.mark.parametrize("content", [b"[1, 2, 3]\n", b'{"epoch": 1}\n\xff\xfe\n', b'"text"\n',
                                     b'{"loss": 1.0}\n', b'{"epoch": "one"}\n',
                                     b"[" * 5000 + b"]" * 5000 + b"\n"],
                         ids=["list", "not-utf8", "string", "no-epoch", "epoch-string",
                              "deep"])
@pytest.mark.parametrize("command", ["resume", "report"])
def test_malformed_metrics_is_one_line_exit_1(trained_runs, tiny_data, tmp_path, capsys,
                                              cpu_threads, command, content):
    run = trained_runs.copy(tmp_path / "run")
    (run / "metrics.jsonl").write_bytes(content)
    argv = (tiny_train_args(tiny_data, run, "--resume") if command == "resume"
            else ["report", str(run), "--out", str(tmp_path / "r.pdf")])
    assert _code(argv) == 1
    one_line_error(capsys.readouterr().err, str(run / "metrics.jsonl"))
    assert not (tmp_path / "r.pdf").exists()


# --------------------------------------------------------------------------- analysis.json
def _deep(n=100_000):
    return "[" * n + "]" * n


ANALYSIS_CASES = {
    "empty-object": "{}", "list": "[1, 2]", "string": '"thresholds"',
    "string-threshold": {"fc1": "3", "fc2": 0.0, "fc3": 0.0},
    "missing-layer": {"fc1": 0.0, "fc2": 0.0},
    "nan-threshold": {"fc1": float("nan"), "fc2": 0.0, "fc3": 0.0},
    "deeply-nested": _deep(), "not-json": "{thresholds: 1}",
}


@pytest.mark.parametrize("case", ANALYSIS_CASES)
def test_malformed_analysis_json_is_one_line_exit_1(trained_runs, tmp_path, capsys, case):
    run = trained_runs.copy(tmp_path / "run", stage="analysed")
    path = run / "analysis.json"
    value = ANALYSIS_CASES[case]
    if isinstance(value, dict):
        record = json.loads(path.read_text())
        record["thresholds"] = value
        value = json.dumps(record)
    path.write_text(value)
    assert _code(["compress", str(run)]) == 1
    one_line_error(capsys.readouterr().err, str(path))
    assert not (run / "model.pbcz").exists() and not (run / "compression.json").exists()
    if case in ("list", "deeply-nested", "string"):
        assert _code(["report", str(run), "--out", str(tmp_path / "r.pdf")]) == 1
        one_line_error(capsys.readouterr().err, str(path))


# ---------------------------------------------------------------------- files out of step
def test_pbcz_out_of_step_with_compression_json_is_refused(trained_runs, tiny_data, tmp_path,
                                                           capsys):
    run = trained_runs.copy(tmp_path / "run", stage="compressed")
    assert main(["evaluate", str(run / "model.pbcz"), "--data-dir", str(tiny_data)]) == 0
    capsys.readouterr()
    blob = bytearray((run / "model.pbcz").read_bytes())
    # a valid file of another network: same layout, one codebook entry moved, resealed
    from pbc.compression import codec

    meta, layers = codec.read_pbcz(run / "model.pbcz")
    layers[0].codebook = layers[0].codebook.copy()
    layers[0].codebook[-1] *= 2
    codec.write_pbcz(run / "model.pbcz", layers, meta)
    assert (run / "model.pbcz").read_bytes() != bytes(blob)
    for argv in (["evaluate", str(run / "model.pbcz"), "--data-dir", str(tiny_data)],
                 ["report", str(run), "--out", str(tmp_path / "r.pdf")]):
        assert _code(argv) == 1
        one_line_error(capsys.readouterr().err, str(run / "model.pbcz"), "compression.json")


def test_posterior_out_of_step_with_analysis_json_is_refused(trained_runs, tmp_path, capsys):
    run = trained_runs.copy(tmp_path / "run", stage="analysed")
    record = json.loads((run / "analysis.json").read_text())
    assert set(record["sha256"]) == {"posterior.nc", "groups.csv", "layers.csv"}
    with open(run / "posterior.nc", "ab") as f:
        f.write(b"\0")
    assert _code(["compress", str(run)]) == 1
    one_line_error(capsys.readouterr().err, str(run / "posterior.nc"), "analysis.json")
    assert not (run / "compression.json").exists()


# --------------------------------------------------------------------------- figures
def _png(path, width=4, height=3) -> None:
    """A valid PNG header (signature and IHDR) of the given size; the pixel data is absent
    (enough to be recognised, not to be drawn)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(
        ">I", zlib.crc32(b"IHDR" + ihdr))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk + b"\0" * 64)


@pytest.mark.parametrize("where", ["absolute", "parent", "symlink"])
def test_figures_outside_the_run_are_refused(trained_runs, tmp_path, capsys, where):
    run = trained_runs.copy(tmp_path / "run", stage="analysed")
    outside = tmp_path / "secret.png"
    _png(outside)
    record = json.loads((run / "analysis.json").read_text())
    if where == "symlink":
        (run / "figures").mkdir(exist_ok=True)
        (run / "figures" / "scores.png").symlink_to(outside)
        record["figures"] = ["figures/scores.png"]
    else:
        record["figures"] = [str(outside) if where == "absolute" else "../secret.png"]
    (run / "analysis.json").write_text(json.dumps(record))
    assert _code(["report", str(run), "--out", str(tmp_path / "r.pdf")]) == 1
    one_line_error(capsys.readouterr().err, "outside the run directory")
    assert not (tmp_path / "r.pdf").exists()


def test_an_oversized_png_is_refused_without_decoding_it(trained_runs, tmp_path, capsys):
    run = trained_runs.copy(tmp_path / "run", stage="analysed")
    record = json.loads((run / "analysis.json").read_text())
    record.pop("figures", None)        # an analysis.json that lists none: figures/ is read
    (run / "analysis.json").write_text(json.dumps(record))
    _png(run / "figures" / "scores.png", 30000, 30000)
    with peak_memory() as peak:
        assert _code(["report", str(run), "--out", str(tmp_path / "r.pdf")]) == 1
    one_line_error(capsys.readouterr().err, str(run / "figures" / "scores.png"), "pixels")
    assert peak.bytes < 200 << 20


def test_report_ignores_hidden_temporaries(trained_runs, tmp_path):
    """A kill during analyse left 0-byte hidden temporaries in figures/: the report reads the
    listed (or visible) figures only."""
    run = trained_runs.copy(tmp_path / "run", stage="analysed")
    record = json.loads((run / "analysis.json").read_text())
    record.pop("figures", None)
    (run / "analysis.json").write_text(json.dumps(record))
    (run / "figures").mkdir(exist_ok=True)
    (run / "figures" / ".scores.png.0a1b2c3d.tmp.png").write_bytes(b"")
    (run / "figures" / ".forest_fc1.png.00ff00ff.tmp.png").write_bytes(b"\0" * 10)
    from pbc.rundir import read_run

    assert read_run(run).figures == []
    assert main(["report", str(run), "--out", str(tmp_path / "r.pdf")]) == 0
    assert (tmp_path / "r.pdf").stat().st_size > 0


REPORT_CASES = {
    "compression-rates": ("compression.json", {"rates": "fast"}),
    "compression-layers": ("compression.json", {"layers": 5}),
    "compression-error": ("compression.json", {"error": [0.1]}),
    "compression-list": ("compression.json", [1, 2]),
    "bench-variants": ("bench.json", {"variants": 3}),
    "metrics-field": ("metrics.jsonl", {"epoch": 1, "test_error": "low"}),
    "config-list": ("config.json", ["lenet300"]),
    "config-not-object": ("config.json", {"config": 5}),
    "analysis-histograms": ("analysis.json", {"histograms": [1]}),
}


@pytest.mark.parametrize("case", REPORT_CASES)
def test_report_of_a_malformed_artefact_is_one_line_exit_1(trained_runs, tmp_path, capsys,
                                                           case):
    run = trained_runs.copy(tmp_path / "run", stage="compressed")
    name, change = REPORT_CASES[case]
    path = run / name
    if name == "bench.json":
        path.write_text(json.dumps({"device": "cpu"}))
    if isinstance(change, dict) and name != "metrics.jsonl" and not case.startswith("config"):
        record = json.loads(path.read_text())
        record.update(change)
        change = record
    path.write_text(json.dumps(change) + "\n")
    assert _code(["report", str(run), "--out", str(tmp_path / "r.pdf")]) == 1
    one_line_error(capsys.readouterr().err, str(path))
    assert not (tmp_path / "r.pdf").exists()
