"""The error–compression frontier of one trained run: the analyse and compress stages at
several error budgets, one row of ``frontier.csv`` per budget.

The error-budget rule turns one posterior into one compressed network per budget ``P``
(points of validation error the pruned and quantised network may lose against the unpruned
posterior-mean network).  Comparing methods "at equal error", as the paper's tables do,
needs the whole curve: a run's row at budget ``P`` is what ``pbc analyse RUN
--error-budget P`` followed by ``pbc compress RUN`` would record, computed on a scratch copy
of the trained run (config, checkpoint, metrics) so that the run's own artefacts stay as
they are.  The budgets are the caller's grid; nothing is chosen on the test set, whose
errors are reported beside the validation errors the rule saw.

Columns: ``budget_points``; the validation errors the rule saw (``val_error_unpruned``,
``val_error_pruned_quantised``) and the packed network's (``val_error_packed``); test
errors of the full, pruned, quantised and packed networks; ``pruning``,
``fast_prediction`` and ``max_compression`` (as in ``compression.json``); the groups kept
and bits per layer (``"381-185-16"``, ``"9-7-5"``); how many bits finer than the
posterior's the pruning trials rounded (``trial_finer_bits``); the search's evaluations.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from pbc.analysis.stage import analyse
from pbc.compress import compress
from pbc.io import atomic_path
from pbc.rundir import CHECKPOINT, CONFIG, FRONTIER, METRICS, MissingStage, RunDir

SCRATCH_PREFIX = ".frontier-"
DRAWS = 100   # posterior draws of z for each scratch analysis (thresholds do not use them)


def frontier(run_dir, budgets: Sequence[float], precision: str = "budget",
             progress: Callable[[dict], None] | None = None) -> pd.DataFrame:
    """Analyse and compress ``run_dir`` at each of ``budgets`` (points), on scratch copies;
    write ``RUN/frontier.csv`` and return it.  ``progress`` is called with each row;
    ``precision`` goes to :func:`pbc.analysis.analyse`, which checks it."""
    run = Path(run_dir)
    if not budgets:
        raise ValueError("give at least one error budget")
    if not (run / CHECKPOINT).is_file():
        raise MissingStage(f"{run}: no trained network; run `pbc train` first")
    with RunDir(run).writing("pbc frontier"):
        for stale in run.glob(f"{SCRATCH_PREFIX}*"):    # left by a killed frontier
            shutil.rmtree(stale, ignore_errors=True)
        with tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX, dir=run) as scratch:
            table = _frontier(run, Path(scratch), sorted(set(budgets)), precision, progress)
            with atomic_path(run / FRONTIER) as tmp:
                table.to_csv(tmp, index=False)
    return table


def _frontier(run: Path, scratch: Path, budgets: list[float], precision: str,
              progress) -> pd.DataFrame:
    rows = []
    for budget in budgets:
        copy = scratch / f"budget-{budget:g}"
        copy.mkdir()
        for name in (CONFIG, CHECKPOINT, METRICS):    # read only: a link is a copy here
            try:
                os.link(run / name, copy / name)
            except OSError:
                shutil.copy2(run / name, copy / name)
        analyse(copy, draws=DRAWS, figures=False, error_budget=budget, precision=precision)
        rows.append(_row(budget, RunDir(copy).analysis()["selection"], compress(copy)))
        if progress:
            progress(rows[-1])
    return pd.DataFrame(rows)


def _row(budget: float, selection: dict, record: dict) -> dict:
    layers, error = record["layers"], record["error"]
    return {"budget_points": budget,
            "val_error_unpruned": selection.get("val_error_unpruned"),
            "val_error_pruned_quantised": selection.get("val_error_pruned_quantised"),
            "val_error_packed": (record["val_error"] or {}).get("packed"),
            **{f"test_error_{k}": error[k] for k in ("full", "pruned", "quantised", "packed")},
            **{k: record["rates"][k] for k in ("pruning", "fast_prediction",
                                               "max_compression")},
            "groups_kept": "-".join(str(r["groups_kept"]) for r in layers),
            "bits": "-".join(str(r["bits"]) for r in layers),
            "trial_finer_bits": selection.get("trial_finer_bits"),
            "evaluations": selection.get("evaluations")}
