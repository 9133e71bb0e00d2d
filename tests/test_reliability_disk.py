"""Reliability against the file system: full and read-only disks, paths that cannot be
directories, kills in the middle of a multi-file stage, and the debris such kills leave.

Disks are simulated: an ``OSError`` with the real ``errno`` is raised where the write or the
directory creation happens, and the free-space query is answered with a small number.  A
kill is simulated by a ``BaseException`` raised at the n-th rename of a stage, for every n,
which stops the stage where a kill would (cleanup handlers aside, which a kill would not
run: they only remove temporaries, which the next command sweeps anyway).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time

import pandas as pd
import pytest
from conftest import one_line_error, tiny_train_args

from pbc.cli import main
from pbc.io import JOURNAL, TEMPORARY
from pbc.rundir import read_run

COMPRESS_SET = ("pruned.pt", "quantised.pt", "model.pbcz", "compression.json")
ANALYSE_SET = ("posterior.nc", "groups.csv", "layers.csv", "analysis.json")


def _code(argv) -> int:
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def _debris(directory) -> list[str]:
    """Temporaries and journals left anywhere under ``directory``."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*")
                  if TEMPORARY.match(p.name) or p.name in (JOURNAL, ".pbc.lock"))


def _digests(run, names) -> dict:
    return {n: hashlib.sha256((run / n).read_bytes()).hexdigest() if (run / n).exists()
            else None for n in names}


def _fail_with(code: int):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))
    return fail


# ------------------------------------------------------------------------------ full disk
@pytest.mark.parametrize("command", ["train", "analyse", "compress"])
def test_enospc_at_the_write_is_one_line_and_leaves_no_half_file(trained_runs, tiny_data,
                                                                 tmp_path, capsys, cpu_threads,
                                                                 monkeypatch, command):
    if command == "train":
        run, names = tmp_path / "run", ("checkpoint.pt", "metrics.jsonl", "config.json")
        argv = tiny_train_args(tiny_data, run)
    else:
        stage = "trained" if command == "analyse" else "analysed"
        run = trained_runs.copy(tmp_path / "run", stage=stage)
        names = ANALYSE_SET if command == "analyse" else COMPRESS_SET
        argv = ([command, str(run), "--no-figures", "--draws", "8", "--threshold-rule", "gap"]
                if command == "analyse"
                else [command, str(run)])
    before = _digests(run, names) if run.exists() else dict.fromkeys(names)
    monkeypatch.setattr(os, "fsync", _fail_with(errno.ENOSPC))   # the data reaches the disk
    assert _code(argv) == 1
    one_line_error(capsys.readouterr().err, "No space left on device")
    monkeypatch.undo()
    assert (_digests(run, names) if run.exists() else dict.fromkeys(names)) == before
    if run.exists():
        assert _debris(run) == []


def test_analyse_checks_free_space_before_the_netcdf_library_writes(trained_runs, tmp_path,
                                                                    capsys, monkeypatch):
    """The crash of the issue: h5py hit ENOSPC halfway through posterior.nc, then crashed.
    Now too little free space is found first, and nothing is written."""
    run = trained_runs.copy(tmp_path / "run")
    written = []
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(
        10**9, 10**9 - 4096, 4096))
    monkeypatch.setattr("pbc.analysis.stage.write_netcdf",
                        lambda *a: written.append(a))      # must not be reached
    assert _code(["analyse", str(run), "--no-figures", "--draws", "8", "--threshold-rule",
                  "gap"]) == 1
    one_line_error(capsys.readouterr().err, str(run), "no space left for posterior.nc")
    assert written == [] and not (run / "posterior.nc").exists() and _debris(run) == []


# -------------------------------------------------------------------------- read-only disk
def test_read_only_disk_is_one_line_exit_1(trained_runs, tiny_data, tmp_path, capsys,
                                           monkeypatch):
    monkeypatch.setattr(os, "mkdir", _fail_with(errno.EROFS))
    assert _code(tiny_train_args(tiny_data, tmp_path / "new")) == 1
    one_line_error(capsys.readouterr().err, "Read-only file system")
    monkeypatch.undo()
    run = trained_runs.copy(tmp_path / "run", stage="analysed")
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    assert _code(["compress", str(run)]) == 1
    one_line_error(capsys.readouterr().err, str(run), "Read-only file system")


# ---------------------------------------------------------------------- paths as arguments
@pytest.mark.parametrize("out", ["", "  ", "file", "file/run", "link/run"],
                         ids=["empty", "blank", "a-file", "under-a-file", "under-a-dangling-link"])
def test_out_that_cannot_be_a_directory_exits_2(tiny_data, tmp_path, capsys, monkeypatch, out):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("not a directory")
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert _code(tiny_train_args(tiny_data, out)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("pbc train: error")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("out", ["", "dir.pdf", "file/r.pdf", "report.txt"])
def test_report_out_that_cannot_be_a_pdf_exits_2(trained_runs, tmp_path, capsys, monkeypatch,
                                                 out):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dir.pdf").mkdir()
    (tmp_path / "file").write_text("x")
    assert _code(["report", str(trained_runs.path()), "--out", out]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("pbc report: error")


def test_a_failed_train_leaves_no_empty_run_directory(tmp_path, capsys):
    empty = tmp_path / "empty-data"
    empty.mkdir()
    assert _code(tiny_train_args(empty, tmp_path / "runs" / "new")) == 1
    one_line_error(capsys.readouterr().err, str(empty))
    assert not (tmp_path / "runs" / "new").exists()
    (tmp_path / "mine").mkdir()                       # a directory the user made stays
    assert _code(tiny_train_args(empty, tmp_path / "mine")) == 1
    assert (tmp_path / "mine").is_dir() and list((tmp_path / "mine").iterdir()) == []


# ------------------------------------------------------------------- kills between renames
class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so no handler of the stage swallows it."""


def _kill_at_rename(monkeypatch, n):
    """Make the ``n``-th ``os.replace`` from now (0-based) kill the stage."""
    real, calls = os.replace, [0]

    def replace(src, dst, *args, **kwargs):
        calls[0] += 1
        if calls[0] - 1 == n:
            raise Killed(f"killed at rename {n}")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    return calls


def _new_thresholds(run):
    """Thresholds at each layer's median score: another compression than the analysis'."""
    groups = pd.read_csv(run / "groups.csv")
    record = json.loads((run / "analysis.json").read_text())
    record["thresholds"] = {n: float(g["score"].median()) + 1e-9
                            for n, g in groups.groupby("layer")}
    (run / "analysis.json").write_text(json.dumps(record))


def test_a_kill_during_compress_leaves_the_old_set_or_the_new_set(trained_runs, tmp_path,
                                                                  monkeypatch):
    base = trained_runs.copy(tmp_path / "base", stage="compressed")
    old = _digests(base, COMPRESS_SET)
    _new_thresholds(base)
    ref = tmp_path / "ref"
    shutil.copytree(base, ref)
    calls = _kill_at_rename(monkeypatch, 10**6)
    assert main(["compress", str(ref)]) == 0
    monkeypatch.undo()
    renames = calls[0]
    shutil.rmtree(ref)
    seen = set()
    for n in range(renames):
        run = tmp_path / "ref"               # the same path: the records name their run
        shutil.copytree(base, run)
        _kill_at_rename(monkeypatch, n)
        with pytest.raises(Killed):
            main(["compress", str(run)])
        monkeypatch.undo()
        read_run(run)                         # a reader finishes an interrupted commit
        now = _digests(run, COMPRESS_SET)
        if now != old:
            assert main(["compress", str(run)]) == 0   # the new set, written without a kill
            assert _digests(run, COMPRESS_SET) == now, f"a mix after a kill at rename {n}"
            seen.add("new")
        else:
            seen.add("old")
        assert not (run / JOURNAL).exists()
        shutil.rmtree(run)
    assert seen == {"old", "new"} and renames >= 8


def test_a_kill_during_analyse_leaves_the_old_set_or_the_new_set(trained_runs, tmp_path,
                                                                 monkeypatch):
    """posterior.nc records its creation time, so the new set is recognised by its own
    digests in analysis.json (which the reader checks) rather than by a second run's."""
    base = trained_runs.copy(tmp_path / "base", stage="analysed")
    old = _digests(base, ANALYSE_SET)
    argv = ["--no-figures", "--draws", "8", "--threshold-rule", "gap"]
    dry = tmp_path / "dry"
    shutil.copytree(base, dry)
    calls = _kill_at_rename(monkeypatch, 10**6)
    assert main(["analyse", str(dry), *argv]) == 0
    monkeypatch.undo()
    seen = set()
    for n in range(calls[0]):
        run = tmp_path / f"run{n}"
        shutil.copytree(base, run)
        _kill_at_rename(monkeypatch, n)
        with pytest.raises(Killed):
            main(["analyse", str(run), *argv])
        monkeypatch.undo()
        record = read_run(run).analysis     # finishes the commit, checks the digests
        assert not (run / JOURNAL).exists()
        now = _digests(run, ANALYSE_SET)
        if now == old:
            seen.add("old")
        else:
            assert record["sha256"] == {k: v for k, v in now.items() if k != "analysis.json"}
            assert record["selection"]["rule"] == "gap"
            seen.add("new")
    assert seen == {"old", "new"}


# ---------------------------------------------------------------------------- debris
def test_stale_temporaries_are_swept_by_the_next_command(trained_runs, tmp_path):
    run = trained_runs.copy(tmp_path / "run", stage="analysed")
    (run / "figures").mkdir(exist_ok=True)
    stale = [run / ".posterior.nc.0123abcd.tmp.nc",
             run / "figures" / ".scores.png.a1b2c3d4.tmp.png"]
    fresh = run / ".model.pbcz.deadbeef.tmp.pbcz"
    for p in (*stale, fresh):
        p.write_bytes(b"half")
    hour_ago = time.time() - 3600
    for p in stale:
        os.utime(p, (hour_ago, hour_ago))
    assert main(["compress", str(run)]) == 0
    assert not any(p.exists() for p in stale)
    assert fresh.exists()          # young: it may belong to a writer that takes no lock


def test_a_journal_naming_files_outside_the_run_is_refused(trained_runs, tmp_path, capsys):
    run = trained_runs.copy(tmp_path / "run", stage="analysed")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (run / JOURNAL).write_text(json.dumps({"renames": [["../victim.txt", "analysis.json"]]}))
    assert _code(["compress", str(run)]) == 1
    one_line_error(capsys.readouterr().err, JOURNAL, "outside")
    assert victim.read_text() == "keep me"
