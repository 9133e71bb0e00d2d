"""A sweep's finished runs → per-run and per-configuration tables (pandas; nothing drawn).

Files written in the sweep's directory (CSV, floats in their shortest round-trip form, rows
in the spec's order, so the same runs always give the same bytes):

* ``runs.csv`` — one row per finished run: the numbers of :data:`METRICS`, read from its
  ``compression.json`` and ``metrics.jsonl``;
* ``summary.csv`` — one row per configuration: ``n_seeds`` (finished runs), ``n_planned``,
  ``seeds``, ``<metric>_mean`` and ``<metric>_sd`` of every metric, ``selected``,
  ``starts_from`` (the plain net's configuration) and ``run_dirs`` (``;``-separated, relative
  to the sweep's directory);
* ``summary_layers.csv`` — per configuration and weighted layer: units kept (convolution
  ``out_kept``, linear ``in_kept``) and bits, mean and sd;
* ``summary_bench.csv`` — per configuration and bench variant: the forward pass's median time
  (ms), speed-up and ideal speed-up, mean and sd.

The mean is the arithmetic mean over the finished seeds and the sd the sample standard
deviation (``ddof = 1``), empty for a single seed.  ``nonzero_pct`` is
``100 · rates.nonzero_fraction``; ``train_seconds`` is the sum of the epochs' ``seconds`` and
``eval_seconds`` (the training's and every round of fine-tuning's).  A run that fine-tunes is
read from its last fine-tuned run (``run_dir``: ``…/seed<k>-finetuned``, or
``…-finetuned<r>`` after ``r`` rounds).

Selection (``[select]`` in the spec): among the configurations of one ``[[grid]]`` block, the
one with the highest mean of ``maximise`` (default ``max_compression``) among those whose mean
*validation* error of the packed network is within ``budget`` points of the block's lowest; a
plain net, which has no rates, by its validation error alone.  Test errors take no part.
Without ``[select]`` every configuration is selected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pbc.io import ArtefactError, atomic_write, read_json
from pbc.reporting.paper import method_name
from pbc.rundir import RunDir, read_run
from pbc.sweep.spec import PlannedRun

SWEEP_FILE = "sweep.json"
RUNS_CSV, SUMMARY_CSV = "runs.csv", "summary.csv"
LAYERS_CSV, BENCH_CSV = "summary_layers.csv", "summary_bench.csv"
ERRORS = ("full", "pruned", "quantised", "kmeans", "packed")
#: every number summarised over seeds
METRICS = (*(f"error_{k}" for k in ERRORS), *(f"val_error_{k}" for k in ERRORS),
           "test_error_last_epoch", "val_error_last_epoch", "nonzero_pct", "pruning",
           "fast_prediction", "max_compression", "packed_bytes", "weights_kept",
           "train_seconds")


def is_sweep_dir(path) -> bool:
    """Whether ``path`` is a sweep's directory (it holds ``sweep.json``)."""
    return (Path(path) / SWEEP_FILE).is_file()


def run_row(root, run: PlannedRun) -> tuple[dict, list[dict], list[dict]]:
    """One finished run's row of ``runs.csv``, its layer rows and its bench rows."""
    rec = read_run(Path(root) / run.result_path)
    metrics = rec.metrics
    last = metrics[-1] if metrics else {}
    earlier = [run.path, *run.tuned_paths][:-1]   # the runs before the one read above
    epochs = metrics + [m for path in earlier for m in RunDir(Path(root) / path).metrics()]
    row = {"configuration": run.configuration, "seed": run.seed, "run_dir": run.result_path,
           "model": rec.model, "prior": rec.prior,
           "test_error_last_epoch": last.get("test_error"),
           "val_error_last_epoch": last.get("val_error"),
           "train_seconds": sum(m.get("seconds", 0.0) + m.get("eval_seconds", 0.0)
                                for m in epochs)}
    layers, bench = [], []
    comp = rec.compression
    if comp is not None:
        for key in ERRORS:
            row[f"error_{key}"] = comp.get("error", {}).get(key)
            row[f"val_error_{key}"] = comp.get("val_error", {}).get(key)
        rates = comp.get("rates", {})
        row.update(pruning=rates.get("pruning"), fast_prediction=rates.get("fast_prediction"),
                   max_compression=rates.get("max_compression"),
                   nonzero_pct=100 * rates["nonzero_fraction"]
                   if "nonzero_fraction" in rates else None,
                   packed_bytes=comp.get("packed_bytes"),
                   weights_kept=sum(r.get("weights_nonzero", r["weights_kept"])
                                    for r in comp.get("layers", [])))
        by_name = {r["name"]: r for r in comp.get("layers", [])}
        for i, spec in enumerate(rec.weighted_layers()):
            r = by_name.get(spec["name"], {})
            conv = spec["kind"] == "conv"
            layers.append({"configuration": run.configuration, "seed": run.seed,
                           "layer_index": i, "layer": spec["name"], "kind": spec["kind"],
                           "units_total": spec["out_size"] if conv else spec["in_size"],
                           "units_kept": r.get("out_kept" if conv else "in_kept"),
                           "bits": r.get("bits")})
    if rec.bench is not None:
        for v in rec.bench.get("variants", []):
            bench.append({"configuration": run.configuration, "seed": run.seed,
                          "variant": v["name"], "median_ms": 1e3 * v["median_s"],
                          "speedup": v.get("speedup"), "ideal_speedup": v.get("ideal_speedup"),
                          "device": rec.bench.get("device"), "threads": rec.bench.get("threads"),
                          "batch": rec.bench.get("batch")})
    return row, layers, bench


def _spread(frame: pd.DataFrame, keys: list[str], values: list[str],
            first: list[str] = ()) -> pd.DataFrame:
    """Per group of ``keys`` (in order of appearance): ``n_seeds``, the ``first`` columns'
    first value, and ``<value>_mean`` / ``<value>_sd`` of each value column."""
    rows = []
    for key, g in frame.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(keys, key, strict=True))
        row["n_seeds"] = len(g)
        for col in first:
            row[col] = g[col].iloc[0]
        for col in values:
            x = pd.to_numeric(g[col], errors="coerce").to_numpy(float) if col in g else \
                np.array([math.nan])
            x = x[~np.isnan(x)]
            row[f"{col}_mean"] = float(x.mean()) if len(x) else None
            row[f"{col}_sd"] = float(x.std(ddof=1)) if len(x) > 1 else None
        rows.append(row)
    return pd.DataFrame(rows)


def select(summary: pd.DataFrame, rule: dict | None) -> list[bool]:
    """The ``selected`` column (see the module docstring): one configuration per block."""
    chosen = [True] * len(summary)
    if rule is None or summary.empty:
        return chosen
    for block, g in summary.groupby("block", sort=False, dropna=True):
        del block
        g = g[g["n_seeds"] > 0]
        val = g["val_error_packed_mean"].fillna(g["val_error_last_epoch_mean"])
        if val.isna().all():
            continue
        within = g[val <= val.min() + rule["budget"] / 100 + 1e-12]
        score = within[f"{rule['maximise']}_mean"]
        best = score.idxmax() if score.notna().any() else val[within.index].idxmin()
        for i in g.index:
            chosen[summary.index.get_loc(i)] = i == best
    return chosen


def summarise(root, runs: list[PlannedRun], rule: dict | None, finished) -> pd.DataFrame:
    """Write ``runs.csv``, ``summary.csv``, ``summary_layers.csv`` and ``summary_bench.csv``
    over the runs for which ``finished(run)`` holds; return the summary."""
    root = Path(root)
    rows, layer_rows, bench_rows = [], [], []
    done = [r for r in runs if finished(r)]
    for run in done:
        row, layers, bench = run_row(root, run)
        rows.append(row)
        layer_rows += layers
        bench_rows += bench
    frame = pd.DataFrame(rows, columns=["configuration", "seed", "run_dir", "model", "prior",
                                        *METRICS])
    planned = list(dict.fromkeys(r.configuration for r in runs))
    info = {}
    for r in runs:
        c = info.setdefault(r.configuration, {"model": r.train["model"],
                                              "prior": r.train["prior"], "block": r.block,
                                              "n_planned": 0, "starts_from": None})
        c["n_planned"] += 1
        if r.pretrain:
            c["starts_from"] = r.pretrain.rsplit("/", 1)[0]
    spread = _spread(frame, ["configuration"], list(METRICS)) if len(frame) else \
        pd.DataFrame(columns=["configuration", "n_seeds"])
    by_conf = {c: g for c, g in frame.groupby("configuration", sort=False)}
    out = []
    for conf in planned:
        c = info[conf]
        g = by_conf.get(conf)
        stats = spread[spread["configuration"] == conf]
        row = {"configuration": conf, "model": c["model"], "method": method_name(c["prior"]),
               "prior": c["prior"], "block": c["block"], "selected": True,
               "n_seeds": 0 if g is None else len(g), "n_planned": c["n_planned"],
               "seeds": "" if g is None else ";".join(str(s) for s in g["seed"])}
        for m in METRICS:
            for stat in ("mean", "sd"):
                col = f"{m}_{stat}"
                row[col] = stats[col].iloc[0] if len(stats) and col in stats else None
        row["starts_from"] = c["starts_from"]
        row["run_dirs"] = "" if g is None else ";".join(g["run_dir"])
        out.append(row)
    summary = pd.DataFrame(out)
    summary["block"] = pd.array(summary["block"], dtype="Int64")
    summary["selected"] = select(summary, rule)
    layers = _spread(pd.DataFrame(layer_rows), ["configuration", "layer_index", "layer"],
                     ["units_kept", "bits"], ["kind", "units_total"]) if layer_rows else \
        pd.DataFrame(columns=["configuration", "layer_index", "layer", "n_seeds"])
    bench = _spread(pd.DataFrame(bench_rows), ["configuration", "variant"],
                    ["median_ms", "speedup", "ideal_speedup"],
                    ["device", "threads", "batch"]) if bench_rows else \
        pd.DataFrame(columns=["configuration", "variant", "n_seeds"])
    for name, table in ((RUNS_CSV, frame), (SUMMARY_CSV, summary), (LAYERS_CSV, layers),
                        (BENCH_CSV, bench)):
        with atomic_write(root / name, "w") as f:
            table.to_csv(f, index=False)
    return summary


# ------------------------------------------------------------------------- the report's view
@dataclass
class SweepSummary:
    """A sweep directory's summary tables, as read for the report."""

    root: Path
    configurations: pd.DataFrame     # summary.csv
    layers: pd.DataFrame             # summary_layers.csv
    bench: pd.DataFrame              # summary_bench.csv

    def reported(self) -> pd.DataFrame:
        """The selected configurations that have at least one finished run."""
        c = self.configurations
        return c[c["selected"].astype(bool) & (c["n_seeds"] > 0)]

    def representatives(self) -> dict[str, Path]:
        """Configuration → its first finished run's directory (for the report's per-run
        pages: diagnostics, curves, MDL)."""
        return {row.configuration: self.root / row.run_dirs.split(";")[0]
                for row in self.reported().itertuples()}


def read_summary(root) -> SweepSummary:
    """Read a sweep directory's summary files (written by :func:`summarise`)."""
    root = Path(root)
    read_json(root / SWEEP_FILE)   # a sweep directory, and readable
    frames = []
    for name in (SUMMARY_CSV, LAYERS_CSV, BENCH_CSV):
        path = root / name
        if not path.is_file():
            raise ArtefactError(f"{path}: not found; rerun `pbc sweep SPEC --out {root}` to "
                                f"write the summary")
        frames.append(pd.read_csv(path))
    return SweepSummary(root, *frames)


def planned_runs(root) -> list[PlannedRun]:
    """The runs recorded in a sweep directory's ``sweep.json``, in order."""
    return [PlannedRun.from_dict(d) for d in read_json(Path(root) / SWEEP_FILE)["runs"]]


def sweep_record(plan_runs: list[PlannedRun], name: str, select_rule: dict | None) -> dict:
    return {"name": name, "select": select_rule, "runs": [r.to_dict() for r in plan_runs]}
