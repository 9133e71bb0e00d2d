"""Reliability: bad input, bad arguments, atomic artefacts, source scans, safe loading.

Everything here goes through the ``pbc`` command line (in-process ``pbc.cli.main`` and a few
real ``python -m pbc.cli`` subprocesses) or through the artefact writers themselves.  This is
the one home of the command line's bad-data behaviour (the readers' own messages are tested
in test_data.py); determinism, kill-and-resume and divergence live with the training loop in
test_train.py, the codec's corruption checks in test_codec.py.
"""

from __future__ import annotations

import ast
import gzip
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import make_idx_dataset, tiny_train_args
from conftest import one_line_error as _one_line_error

import pbc
from pbc.cli import main
from pbc.compression import codec
from pbc.data import DataError, write_cifar_batches, write_idx
from pbc.io import ArtefactError, load_torch, save_torch, write_json, write_jsonl

PKG = pathlib.Path(pbc.__file__).parent
REPO = PKG.parent


# ----------------------------------------------------------------------------- helpers
def _exit_code(argv) -> int:
    """``main(argv)``'s status, whether it returns it or exits through argparse."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def _cli(*args, timeout=120, **kw):
    return subprocess.run([sys.executable, "-m", "pbc.cli", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture
def runs(trained_runs, tiny_data):
    """The session's tiny dataset, one-epoch BC-GNJ run and plain (``prior none``) run
    (shared: copy one before writing into it)."""
    return {"data": tiny_data, "gnj": trained_runs.path("lenet300", "gnj"),
            "plain": trained_runs.path("lenet300", "none")}


def _copy_run(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
    shutil.copytree(src, dst)
    return dst


# ----------------------------------------------------------------------------- bad data
def _idx(d, split, kind):
    stem = f"{split}-{'images-idx3' if kind == 'images' else 'labels-idx1'}-ubyte"
    return d / f"{stem}.gz"


def _bad_magic(d):
    p = _idx(d, "train", "images")
    blob = gzip.decompress(p.read_bytes())
    p.write_bytes(gzip.compress(b"\x12\x34" + blob[2:], mtime=0))
    return p, "magic"


def _truncated(d):
    p = _idx(d, "train", "images")
    raw = d / p.name.removesuffix(".gz")
    raw.write_bytes(gzip.decompress(p.read_bytes())[:-100])
    p.unlink()
    return raw, "truncated"


def _empty(d):
    p = _idx(d, "t10k", "labels")
    raw = d / p.name.removesuffix(".gz")
    raw.write_bytes(b"")
    p.unlink()
    return raw, "empty"


def _count_mismatch(d):
    p = _idx(d, "train", "labels")
    write_idx(p, np.zeros(150, np.uint8))      # 200 images
    return p, "150 labels for 200 images"


def _label_out_of_range(d):
    p = _idx(d, "t10k", "labels")
    labels = np.zeros(100, np.uint8)
    labels[7] = 10
    write_idx(p, labels)
    return p, "labels must lie in [0, 9]"


def _wrong_image_size(d):
    p = _idx(d, "train", "images")
    write_idx(p, np.zeros((200, 32, 32), np.uint8))
    return p, "28x28"


def _garbage_gzip(d):
    p = _idx(d, "train", "labels")
    p.write_bytes(b"this is not gzip data at all" * 4)
    return p, "cannot read"


def _cut_gzip(d):
    p = _idx(d, "train", "images")
    blob = p.read_bytes()
    p.write_bytes(blob[: len(blob) // 2])
    return p, "cannot read"


IDX_CASES = {"bad-magic": _bad_magic, "truncated": _truncated, "empty": _empty,
             "count-mismatch": _count_mismatch, "label-out-of-range": _label_out_of_range,
             "wrong-image-size": _wrong_image_size, "garbage-gzip": _garbage_gzip,
             "cut-gzip": _cut_gzip}


def _cifar_missing_batch(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    train_set = (rng.integers(0, 256, (20, 3072), dtype=np.uint8), rng.integers(0, 10, 20))
    test_set = (rng.integers(0, 256, (10, 3072), dtype=np.uint8), rng.integers(0, 10, 10))
    write_cifar_batches(folder, train_set, test_set)
    (folder / "data_batch_3").unlink()
    return tmp_path / "cifar", folder / "data_batch_3", "missing"


@pytest.mark.parametrize("case", [*IDX_CASES, "cifar-missing-batch", "no-files"])
def test_bad_data_is_one_line_exit_1_and_debug_raises(tmp_path, capsys, cpu_threads,
                                                      monkeypatch, case):
    if case == "cifar-missing-batch":
        data_dir, bad, what = _cifar_missing_batch(tmp_path)
        dataset = "cifar10"
    elif case == "no-files":      # nothing anywhere it looks: it names what it needs
        monkeypatch.setenv("PBC_DATA", str(tmp_path / "nowhere"))
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
        data_dir, dataset = tmp_path / "empty", "mnist"
        bad, what = data_dir, "train-images-idx3-ubyte"
    else:
        data_dir = make_idx_dataset(tmp_path / "data")
        bad, what = IDX_CASES[case](data_dir)
        dataset = "fashion-mnist"
    args = tiny_train_args(data_dir, tmp_path / "run")
    args[args.index("--data") + 1] = dataset
    assert main(args) == 1
    captured = capsys.readouterr()
    _one_line_error(captured.err, str(bad), what)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    with pytest.raises(DataError, match=re.escape(str(bad))):
        main(["--debug", *args])


def test_bad_data_subprocess_one_line_and_debug_traceback(tmp_path):
    data_dir = make_idx_dataset(tmp_path / "data")
    bad, _ = _bad_magic(data_dir)
    args = tiny_train_args(data_dir, tmp_path / "run")
    proc = _cli(*args)
    assert proc.returncode == 1, proc.stderr
    _one_line_error(proc.stderr, str(bad), "magic")
    debug = _cli("--debug", *args)
    assert debug.returncode not in (0, 2)
    assert "Traceback" in debug.stderr and "DataError" in debug.stderr


# ----------------------------------------------------------------------------- bad arguments
def test_compress_before_analyse_exits_2(runs, tmp_path, capsys):
    run = _copy_run(runs["gnj"], tmp_path / "gnj")
    assert _exit_code(["compress", str(run)]) == 2
    _one_line_error(capsys.readouterr().err, str(run), "pbc analyse")
    assert not (run / "model.pbcz").exists()


@pytest.mark.parametrize("state", ["missing-dir", "empty-dir", "config-only"])
@pytest.mark.parametrize("command", ["analyse", "compress"])
def test_stage_without_a_trained_run_exits_2(runs, tmp_path, capsys, command, state):
    run = tmp_path / "run"
    if state != "missing-dir":
        run.mkdir()
    if state == "config-only":   # a run killed before its first checkpoint
        shutil.copy(runs["gnj"] / "config.json", run / "config.json")
    assert _exit_code([command, str(run)]) == 2
    _one_line_error(capsys.readouterr().err, str(run))


def test_analyse_of_a_plain_run_exits_2(runs, tmp_path, capsys):
    run = _copy_run(runs["plain"], tmp_path / "plain")
    assert _exit_code(["analyse", str(run), "--no-figures"]) == 2
    _one_line_error(capsys.readouterr().err, str(run), "prior 'none'")
    assert not (run / "posterior.nc").exists()


@pytest.mark.parametrize("name", ["model.pbcz", "pruned.pt"])
def test_evaluate_missing_file_exits_2(runs, tmp_path, capsys, name):
    missing = tmp_path / name
    assert _exit_code(["evaluate", str(missing), "--data-dir", str(runs["data"])]) == 2
    _one_line_error(capsys.readouterr().err, str(missing))


def test_usage_error_with_debug_raises(runs, tmp_path):
    from pbc.rundir import MissingStage

    run = _copy_run(runs["gnj"], tmp_path / "gnj")
    with pytest.raises(MissingStage):
        main(["--debug", "compress", str(run)])


# ----------------------------------------------------------------------------- atomic artefacts
def _tiny_layer():
    return codec.PackedLayer(name="fc", shape=(2, 3), codes=np.array([[0, 1, 1], [1, 0, 0]]),
                             codebook=np.array([0.0, 0.5], np.float32),
                             bias=np.array([0.25, -1.0], np.float32), index_bits=5)


def _idata(value: float):
    from pbc.analysis.inference_data import to_inference_data

    return to_inference_data({"fc.z": np.full((2, 5, 3), value)},
                             {"fc.score": (["fc_group"], np.full(3, value))},
                             {"fc.z": ["fc_group"]}, {"prior": "gnj"})


def _figure(value: float):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1], [0, value])
    return fig


def _write_json(path, v):
    write_json(path, {"value": v})


def _write_jsonl(path, v):
    write_jsonl(path, [{"epoch": 1, "value": v}, {"epoch": 2, "value": v}])


def _save_torch(path, v):
    save_torch(path, {"epoch": 1, "model": {"w": torch.full((4,), float(v))}})


def _write_pbcz(path, v):
    codec.write_pbcz(path, [_tiny_layer()], {"value": v})


def _write_csv(path, v):
    import pandas as pd

    from pbc.analysis.stage import _write_csv as write_csv

    write_csv(pd.DataFrame({"value": [v, v]}), path)


def _save_export(path, v):
    from pbc.compression.export import save_export
    from pbc.nets import build_network, make_architecture

    arch = make_architecture("lenet300", (1, 28, 28), 10)
    torch.manual_seed(int(v))
    save_export(path, arch, build_network(arch).state_dict())


def _write_netcdf(path, v, fail=None):
    from pbc.analysis.inference_data import write_netcdf

    idata = _idata(v)
    if fail is not None:
        class HalfWay:                        # writes the temporary file, then dies
            def to_netcdf(self, target):
                idata.to_netcdf(target)
                raise fail

        write_netcdf(HalfWay(), path)
    else:
        write_netcdf(idata, path)


def _save_figure(path, v, fail=None):
    from pbc.reporting.figures import save_figure

    fig = _figure(v)
    if fail is not None:
        real = fig.savefig

        def half_way(target, *args, **kwargs):
            real(target, *args, **kwargs)
            raise fail

        fig.savefig = half_way
    save_figure(fig, path)


# writers that go through atomic_write (fsync is the last step before the rename) and those
# that go through atomic_path (fail injected into the underlying writer instead)
FILE_WRITERS = {"write_json": _write_json, "write_jsonl": _write_jsonl,
                "save_torch": _save_torch, "write_pbcz": _write_pbcz, "csv": _write_csv,
                "save_export": _save_export}
PATH_WRITERS = {"write_netcdf": _write_netcdf, "save_figure": _save_figure}
SUFFIX = {"write_json": ".json", "write_jsonl": ".jsonl", "save_torch": ".pt",
          "write_pbcz": ".pbcz", "csv": ".csv", "save_export": ".pt", "write_netcdf": ".nc",
          "save_figure": ".png"}


def _assert_only(directory: pathlib.Path, names: set[str]):
    assert {p.name for p in directory.iterdir()} == names, "stray temporary files"


@pytest.mark.parametrize("writer", [*FILE_WRITERS, *PATH_WRITERS])
def test_failed_rename_keeps_previous_file_and_leaves_no_temporaries(tmp_path, monkeypatch,
                                                                     writer):
    write = {**FILE_WRITERS, **PATH_WRITERS}[writer]
    path = tmp_path / f"artefact{SUFFIX[writer]}"
    write(path, 1)
    before = path.read_bytes()
    assert before

    def refuse(src, dst):
        raise OSError(28, "No space left on device (injected)")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="injected"):
        write(path, 2)
    assert path.read_bytes() == before
    _assert_only(tmp_path, {path.name})
    fresh = tmp_path / f"fresh{SUFFIX[writer]}"
    with pytest.raises(OSError, match="injected"):
        write(fresh, 2)
    _assert_only(tmp_path, {path.name})


@pytest.mark.parametrize("fail", [OSError("disk on fire (injected)"), KeyboardInterrupt()],
                         ids=["error", "interrupt"])
@pytest.mark.parametrize("writer", [*FILE_WRITERS, *PATH_WRITERS])
def test_crash_midway_keeps_previous_file_and_leaves_no_temporaries(tmp_path, monkeypatch,
                                                                    writer, fail):
    path = tmp_path / f"artefact{SUFFIX[writer]}"
    if writer in FILE_WRITERS:
        write = FILE_WRITERS[writer]
        write(path, 1)

        def crash(fd):
            raise fail

        def attempt():
            with monkeypatch.context() as m:
                m.setattr(os, "fsync", crash)     # the bytes are written, the rename is not
                write(path, 2)
    else:
        write = PATH_WRITERS[writer]
        write(path, 1)

        def attempt():
            write(path, 2, fail=fail)
    before = path.read_bytes()
    with pytest.raises(type(fail)):
        attempt()
    assert path.read_bytes() == before
    _assert_only(tmp_path, {path.name})


# ----------------------------------------------------------------------------- source scans
def _sources():
    """Every module of the package, subpackages included, as (path relative to pbc/, text,
    syntax tree)."""
    for path in sorted(PKG.rglob("*.py")):
        text = path.read_text()
        yield path.relative_to(PKG), text, ast.parse(text, filename=str(path))


def _parents(tree):
    parents = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
    return parents


_MODE = re.compile(r"[rwxabt+U]+(:\w*)?")


def _is_write_open(call: ast.Call) -> bool:
    f = call.func
    if not ((isinstance(f, ast.Name) and f.id == "open")
            or (isinstance(f, ast.Attribute) and f.attr == "open")):
        return False
    candidates = [*call.args[:2], *(k.value for k in call.keywords if k.arg == "mode")]
    for c in candidates:
        if isinstance(c, ast.Constant) and isinstance(c.value, str) and _MODE.fullmatch(c.value):
            return bool(set(c.value.split(":")[0]) & set("wax+"))
    return any(k.arg == "mode" for k in call.keywords)  # a computed mode: assume it writes


_WRITE_FUNCS = {"torch.save", "np.save", "np.savez", "np.savez_compressed", "numpy.save",
                "pickle.dump", "shutil.copy", "shutil.copyfile", "shutil.move"}
_WRITE_METHODS = {"to_netcdf", "savefig", "write_bytes", "write_text", "to_csv", "to_json",
                  "to_parquet", "tofile"}


def _is_write(call: ast.Call) -> bool:
    name = ast.unparse(call.func)
    if name in _WRITE_FUNCS or _is_write_open(call):
        return True
    f = call.func
    return (isinstance(f, ast.Attribute) and f.attr in _WRITE_METHODS
            and ast.unparse(f.value) not in ("io", "pbc.io"))


def _inside_atomic_block(node, parents) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                expr = item.context_expr
                if isinstance(expr, ast.Call):
                    callee = ast.unparse(expr.func).rsplit(".", 1)[-1]
                    if callee.startswith("atomic_"):
                        return True
    return False


def _enclosing_function(node, parents) -> str:
    while node in parents:
        node = parents[node]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return node.name
    return "<module>"


# (file name, enclosing function) pairs allowed to write without an atomic block
WRITE_ALLOW_LIST: set[tuple[str, str]] = set()


def test_source_scans_see_every_subpackage():
    """Guard against a scan that misses a subpackage (``_sources`` walks them with rglob)."""
    scanned = [path for path, _, _ in _sources()]
    for sub in ("bayes", "methods", "compression", "analysis", "reporting"):
        assert any(p.parts[0] == sub and p.suffix == ".py" and len(p.parts) == 2
                   and p.name != "__init__.py" for p in scanned), f"nothing scanned in pbc/{sub}"
    assert pathlib.Path("train.py") in scanned and pathlib.Path("io.py") in scanned


def test_every_artefact_write_is_atomic():
    offenders = []
    for path, _, tree in _sources():
        if path.as_posix() == "io.py":
            continue
        parents = _parents(tree)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and _is_write(node)):
                continue
            fn = _enclosing_function(node, parents)
            if _inside_atomic_block(node, parents) or (path.as_posix(), fn) in WRITE_ALLOW_LIST:
                continue
            offenders.append(f"pbc/{path.as_posix()}:{node.lineno} in {fn}(): {ast.unparse(node)}")
    assert not offenders, "writes outside an atomic_write/atomic_path block:\n" + "\n".join(
        offenders)


def test_scanner_sees_the_known_writers():
    """Guard against a scan that silently matches nothing."""
    seen = set()
    for path, _, tree in _sources():
        parents = _parents(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _is_write(node) \
                    and _inside_atomic_block(node, parents):
                seen.add((path.as_posix(), _enclosing_function(node, parents)))
    assert {("analysis/inference_data.py", "write_netcdf"),
            ("reporting/figures.py", "save_figure"), ("analysis/stage.py", "_write_csv")} <= seen


def test_every_torch_load_is_weights_only_and_nothing_unpickles_freely():
    loads, offenders = 0, []
    for path, _, tree in _sources():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            where = f"pbc/{path.as_posix()}:{node.lineno}: {ast.unparse(node)}"
            if name == "torch.load":
                loads += 1
                safe = [k for k in node.keywords if k.arg == "weights_only"
                        and isinstance(k.value, ast.Constant) and k.value.value is True]
                if not safe:
                    offenders.append(where)
            elif name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "dill.load",
                          "joblib.load"):
                offenders.append(where)
            elif name in ("np.load", "numpy.load") and any(
                    k.arg == "allow_pickle" and not (isinstance(k.value, ast.Constant)
                                                     and k.value.value is False)
                    for k in node.keywords):
                offenders.append(where)
    assert loads >= 1, "no torch.load found: the scan is broken"
    assert not offenders, "unsafe loads:\n" + "\n".join(offenders)


# ----------------------------------------------------------------------------- safe loading
class Payload:
    """Not a tensor: ``weights_only`` loading must refuse it."""

    def __init__(self):
        self.weights = [1.0, 2.0]


class SideEffect:
    """Unpickling this creates a directory: the proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _malicious_checkpoint(path, marker, kind="side-effect"):
    obj = SideEffect(marker) if kind == "side-effect" else Payload()
    torch.save({"epoch": 1, "prior": "none", "model": obj, "optim": {},
                "rng": torch.get_rng_state()}, path)
    return path


@pytest.mark.parametrize("kind", ["side-effect", "plain-object"])
def test_load_torch_refuses_pickled_objects(tmp_path, kind):
    marker = tmp_path / "code-ran"
    path = _malicious_checkpoint(tmp_path / "evil.pt", marker, kind)
    with pytest.raises(ArtefactError, match=re.escape(str(path))) as e:
        load_torch(path)
    assert "refused" in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize("command", ["resume", "compress", "analyse", "init-from", "evaluate"])
def test_cli_refuses_malicious_checkpoints(runs, tmp_path, capsys, cpu_threads, command):
    marker = tmp_path / "code-ran"
    run = _copy_run(runs["gnj"], tmp_path / "gnj")
    if command in ("resume", "compress", "analyse"):
        evil = _malicious_checkpoint(run / "checkpoint.pt", marker)
        argv = {"resume": tiny_train_args(runs["data"], run, "--resume"),
                "compress": ["compress", str(run)],
                "analyse": ["analyse", str(run), "--no-figures"]}[command]
    elif command == "init-from":
        evil = _malicious_checkpoint(tmp_path / "pretrained.pt", marker)
        argv = tiny_train_args(runs["data"], tmp_path / "new", "--init-from", str(evil))
    else:
        evil = _malicious_checkpoint(tmp_path / "pruned.pt", marker)
        argv = ["evaluate", str(evil), "--data-dir", str(runs["data"])]
    assert main(argv) == 1
    _one_line_error(capsys.readouterr().err, str(evil), "refused")
    assert not marker.exists()
    with pytest.raises(ArtefactError, match="refused"):
        main(["--debug", *argv])
    assert not marker.exists()


def _corruptions(blob: bytes):
    return {"truncated": blob[: len(blob) // 2], "bad-magic": b"PBCY" + blob[4:],
            "huge-metadata": blob[:6] + (2**31).to_bytes(4, "little") + blob[10:],
            "garbage": bytes(range(256)) * 4, "empty": b""}


@pytest.mark.parametrize("corruption", ["truncated", "bad-magic", "huge-metadata", "garbage",
                                        "empty"])
def test_evaluate_corrupted_pbcz_is_one_line_exit_1(runs, tmp_path, capsys, corruption):
    from pbc.compression.export import packed_meta
    from pbc.nets import make_architecture

    arch = make_architecture("lenet300", (1, 28, 28), 10)
    blob = codec.encode([_tiny_layer()], packed_meta(arch, {}, {"run": "test"}))
    path = tmp_path / "model.pbcz"
    path.write_bytes(_corruptions(blob)[corruption])
    assert main(["evaluate", str(path), "--data-dir", str(runs["data"])]) == 1
    _one_line_error(capsys.readouterr().err, str(path))
