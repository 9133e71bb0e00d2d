"""One run of a sweep, end to end: the study pipeline's steps on the run's directory.

:func:`run_one` is what a Ray task (or the local engine) executes: train or resume
(:func:`pbc.study.train_or_resume`), then analyse → compress → bench
(:func:`pbc.study.later_stages`), and for a run that fine-tunes, the same steps again on its
fine-tuned run (:func:`pbc.finetune.finetune_config`), round after round, the runs a round
starts from analysed at the spec's ``finetune_budget``; each stage is skipped when its
artefact is there, all under the run directory's write lock.  A task that dies and is
started again therefore continues from the last checkpoint and the last finished stage.
Each attempt appends ``start`` and ``end`` events (host, pid, epochs the checkpoint held at
the start, seconds) to ``<sweep>/log/<configuration>/seed<k>.jsonl``.
"""

from __future__ import annotations

import datetime as _dt
import os
import socket
import time
from pathlib import Path

from pbc.finetune import finetune_config
from pbc.io import read_json, read_jsonl, write_jsonl
from pbc.rundir import BENCH, CHECKPOINT, COMPRESSION, METRICS, RunDir
from pbc.study import later_stages, train_or_resume
from pbc.sweep.spec import PlannedRun

LOG = "log"


def log_path(root, run_id: str) -> Path:
    return Path(root) / LOG / f"{run_id}.jsonl"


def attempts(root, run_id: str) -> list[dict]:
    """The ``start`` events of a run's attempts, oldest first."""
    return [e for e in read_jsonl(log_path(root, run_id)) if e.get("event") == "start"]


def logged_seconds(root, run_id: str) -> float | None:
    """The seconds of the run's last finished attempt, as logged (``None``: none logged)."""
    ends = [e for e in read_jsonl(log_path(root, run_id)) if e.get("event") == "end"]
    return ends[-1]["seconds"] if ends else None


def _log(root, run_id: str, event: dict) -> None:
    path = log_path(root, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(path, [*read_jsonl(path), event])   # one writer: the run's own task


def is_finished(root, run: PlannedRun) -> bool:
    """Whether every stage of the run has its artefact: a plain net's checkpoint holds all
    its epochs; a method run (its fine-tuned run, where it fine-tunes) has ``bench.json``,
    which the last stage writes."""
    if run.plain:
        d = RunDir(Path(root) / run.path)
        return d.has(CHECKPOINT) and d.has(METRICS) and \
            int(d.checkpoint()["epoch"]) >= run.train["epochs"]
    d = RunDir(Path(root) / run.result_path)
    return d.has(COMPRESSION) and d.has(BENCH)


def run_one(run: dict, root: str, *, data_dir: str | None = None, device: str = "cpu",
            threads: int | None = None) -> dict:
    """Run (or continue) every stage of one planned run (:meth:`PlannedRun.to_dict`) under
    the sweep directory ``root``; returns what the progress line shows (:func:`outcome`)."""
    planned = PlannedRun.from_dict(run)
    root = Path(root)
    out = root / planned.path
    out.mkdir(parents=True, exist_ok=True)
    d = RunDir(out)
    held = int(d.checkpoint()["epoch"]) if d.has(CHECKPOINT) else 0
    _log(root, planned.id, {"event": "start", "attempt": len(attempts(root, planned.id)) + 1,
                            "host": socket.gethostname(), "pid": os.getpid(),
                            "epochs_at_start": held, "time": _now()})
    t0 = time.perf_counter()
    init_from = str(root / "runs" / planned.pretrain) if planned.pretrain else None
    config = planned.train_config(str(out), init_from=init_from, data_dir=data_dir,
                                  device=device, threads=threads)
    with d.writing(f"pbc sweep (run {planned.id})"):
        train_or_resume(config, say=_quiet)
        if not planned.plain:
            def after_training(path: Path, analyse: dict) -> None:
                later_stages(path, planned.train["prior"], analyse_kw=analyse,
                             bench_kw={**planned.bench, "device": device, "threads": threads},
                             step=_quiet, say=_quiet)

            source = out
            for tuned in planned.tuned_paths:    # each round prunes its source, trains on
                after_training(source, planned.prune_analyse)
                train_or_resume(finetune_config(source, str(root / tuned), planned.finetune,
                                                device=device, threads=threads,
                                                progress=False), say=_quiet)
                source = root / tuned
            after_training(source, planned.analyse)
    seconds = time.perf_counter() - t0
    _log(root, planned.id, {"event": "end", "seconds": seconds, "time": _now()})
    return {**outcome(root / planned.result_path), "id": planned.id, "seconds": seconds,
            "epochs_at_start": held}


def outcome(run_dir) -> dict:
    """A finished run's headline numbers: test and validation errors (``compression.json``,
    else the last epoch of ``metrics.jsonl``) and the compression rates."""
    d = RunDir(run_dir)
    last = (d.metrics() or [{}])[-1]
    rec = {"error": last.get("test_error"), "val_error": last.get("val_error"),
           "error_full": None, "rates": {}}
    if d.has(COMPRESSION):
        comp = read_json(d / COMPRESSION)
        rec.update(error=comp["error"]["packed"], error_full=comp["error"]["full"],
                   val_error=comp.get("val_error", {}).get("packed"), rates=comp["rates"])
    return rec


def _quiet(_text: str) -> None:
    """The stages' own lines are not printed: the sweep prints one line per finished run."""


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")
