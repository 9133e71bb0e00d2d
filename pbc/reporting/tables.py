"""Run directories' artefacts → the comparison report's tables (pandas); nothing is drawn here.

Every number in a table is a value read from an artefact of a run directory (or from
:mod:`pbc.reporting.paper`); nothing is trained, sampled or re-estimated.  The only arithmetic is
bookkeeping on those values, named where it happens: the kept units of a layer are
``out_kept`` for a convolution and ``in_kept`` for a linear layer (the paper's Table 1
convention); ``nonzero_pct`` is ``100·Σ weights_nonzero / Σ weights_total`` over the layers
of ``compression.json`` (``weights_kept`` in artefacts older than that field);
``packed_bits`` is ``8 ×`` a byte count.  A missing artefact leaves its cells empty
(``NaN``/``<NA>``) and the row's ``note`` names the file.

Tables (long form, one CSV each, see :func:`write_tables`):

* :func:`table1` — one row per (run or paper row) × weighted layer: units kept, bits;
* :func:`table2` — one row per run or paper row: errors, ``|w≠0|/|w|``, the three rates;
* :func:`mdl_table` — one row per run × layer (and one per run, ``layer="(run)"``): the KL
  term in bits beside the packed size in bits;
* :func:`budget_costs` — one row per run × error budget of its ``frontier.csv``: what the
  budget cost on the validation split, where it was chosen, and on the test set, where it
  was not (:func:`budget_summary` averages them per budget).

A sweep's report (:func:`with_spread`) puts in each run row the mean over the configuration's
seeds that the sweep's summary files hold, with the standard deviation beside it.
"""

from __future__ import annotations

from pathlib import Path, PurePath

import pandas as pd

from pbc import methods
from pbc.io import atomic_write
from pbc.reporting import paper
from pbc.rundir import ANALYSIS, COMPRESSION, LAYERS, METRICS, RunRecord

RUN_LAYER = "(run)"               # the layer name of a run-level row in the MDL table
KL_NOT_RECORDED = "per-layer KL not recorded (no kl_bits in layers.csv or analysis.json)"


def _missing_note(run: RunRecord, *names: str) -> str:
    gone = [n for n in names if n in run.missing]
    return f"no {' or '.join(gone)}" if gone else ""


def _compression_layers(run: RunRecord) -> tuple[list[dict], str]:
    """Per-layer records (name, kind, in_kept, out_kept, weights…, bits) and their artefact."""
    if run.compression is not None:
        return run.compression.get("layers", []), COMPRESSION
    if run.layers is not None:
        frame = run.layers.rename(columns={"layer": "name"})
        return frame.to_dict("records"), LAYERS
    return [], ""


def _units_total(spec: dict | None) -> int | None:
    if spec is None:
        return None
    return spec["out_size"] if spec["kind"] == "conv" else spec["in_size"]


def table1(runs: list[RunRecord]) -> pd.DataFrame:
    """Pruned architecture and bit precision per weighted layer (the paper's Table 1).

    Columns: ``source`` (``run``/``paper``), ``model``, ``method``, ``run``, ``layer_index``,
    ``layer``, ``kind``, ``units_total`` (config.json arch: conv out_size, linear in_size),
    ``units_kept`` (compression.json — or layers.csv — conv ``out_kept``, linear ``in_kept``),
    ``kept_from``, ``bits``, ``artefact``, ``note``.  Paper rows follow each model's runs'
    layer names when the lengths match.
    """
    rows: list[dict] = []
    for model, members in _by_model(runs).items():
        specs = members[0].weighted_layers()
        for prow in paper.rows_for(model):
            n = len(prow.architecture or prow.bits or specs)
            names = ([s["name"] for s in specs] if len(specs) == n
                     else [f"layer{i + 1}" for i in range(n)])
            for i, name in enumerate(names):
                arch, bits = prow.architecture, prow.bits
                rows.append({
                    "source": "paper", "model": model, "method": prow.method, "run": None,
                    "layer_index": i, "layer": name,
                    "kind": specs[i]["kind"] if len(specs) == n else None,
                    "units_total": None, "units_kept": arch[i] if arch else None,
                    "kept_from": None, "bits": bits[i] if bits else None,
                    "artefact": "pbc.reporting.paper",
                    "note": "" if (arch or bits) else "not in this table of the paper"})
        for run in members:
            records, artefact = _compression_layers(run)
            by_name = {rec["name"]: rec for rec in records}
            note = _missing_note(run, COMPRESSION) if artefact != COMPRESSION else ""
            if artefact == LAYERS:
                note += "; kept units and bits from layers.csv (analyse stage)"
            elif not artefact:
                note = _missing_note(run, COMPRESSION, LAYERS)
            specs_run = run.weighted_layers() or [{"name": r["name"], "kind": r["kind"]}
                                                  for r in records]
            for i, spec in enumerate(specs_run):
                rec = by_name.get(spec["name"])
                kept_from = "out_kept" if spec["kind"] == "conv" else "in_kept"
                rows.append({
                    "source": "run", "model": model, "method": paper.method_name(run.prior),
                    "run": run.label,
                    "layer_index": i, "layer": spec["name"], "kind": spec["kind"],
                    "units_total": _units_total(spec) if "in_size" in spec else None,
                    "units_kept": rec.get(kept_from) if rec else None,
                    "kept_from": kept_from if rec else None,
                    "bits": rec.get("bits") if rec else None,
                    "artefact": artefact if rec else "", "note": note.strip("; ")})
    return _typed(pd.DataFrame(rows, columns=_T1_COLUMNS), _T1_INTS)


_T1_COLUMNS = ["source", "model", "method", "run", "layer_index", "layer", "kind", "units_total",
               "units_kept", "kept_from", "bits", "artefact", "note"]
_T1_INTS = ["layer_index", "units_total", "units_kept", "bits"]


def table2(runs: list[RunRecord]) -> pd.DataFrame:
    """Errors, ``|w≠0|/|w|`` and compression rates (the paper's Table 2).

    RunRecord rows: ``error_full``/``error_pruned``/``error_quantised``/``error_kmeans``/
    ``error_packed`` (fractions, compression.json ``error``), ``test_error_last_epoch``
    (metrics.jsonl), ``weights_total``/``weights_kept`` (sums over compression.json layers),
    ``nonzero_pct``, ``pruning``/``fast_prediction``/``max_compression`` (compression.json
    ``rates``), ``packed_bytes``.  Paper rows: ``paper_error_pct`` (a percentage, as printed),
    ``nonzero_pct`` and the rates.
    """
    rows: list[dict] = []
    for model, members in _by_model(runs).items():
        for prow in paper.rows_for(model):
            if prow.method == "original":
                continue
            known = any(v is not None for v in (prow.error_pct, prow.nonzero_pct, prow.pruning,
                                                 prow.fast_prediction, prow.max_compression))
            rows.append({"source": "paper", "model": model, "method": prow.method,
                         "paper_error_pct": prow.error_pct, "nonzero_pct": prow.nonzero_pct,
                         "pruning": prow.pruning, "fast_prediction": prow.fast_prediction,
                         "max_compression": prow.max_compression, "artefact": "pbc.reporting.paper",
                         "note": "" if known else "not in this table of the paper"})
        for run in members:
            row = {"source": "run", "model": model, "method": paper.method_name(run.prior),
                   "run": run.label, "protocol": protocol(run),
                   "test_error_last_epoch": run.metrics[-1].get("test_error")
                   if run.metrics else None}
            comp = run.compression
            if comp is not None:
                err, rates, layers = comp.get("error", {}), comp.get("rates", {}), \
                    comp.get("layers", [])
                for key in ("full", "pruned", "quantised", "kmeans", "packed"):
                    row[f"error_{key}"] = err.get(key)
                for key in ("pruning", "fast_prediction", "max_compression"):
                    row[key] = rates.get(key)
                total = sum(r["weights_total"] for r in layers)
                # nonzero weights of the pruned export (single pruned weights of the
                # unstructured methods count as gone); older artefacts lack the field
                kept = sum(r.get("weights_nonzero", r["weights_kept"]) for r in layers)
                row.update(weights_total=total, weights_kept=kept,
                           nonzero_pct=100 * kept / total if total else None,
                           packed_bytes=comp.get("packed_bytes"), artefact=COMPRESSION)
            notes = [_missing_note(run, COMPRESSION)]
            if not run.metrics:
                notes.append(_missing_note(run, METRICS) or "metrics.jsonl empty")
            row["note"] = "; ".join(n for n in notes if n)
            rows.append(row)
    return _typed(pd.DataFrame(rows, columns=_T2_COLUMNS), ["weights_total", "weights_kept",
                                                           "packed_bytes"])


def protocol(run: RunRecord) -> str:
    """How a run was made, in a few words: epochs, start (or the run it fine-tunes), Adam's
    rate and its schedule, the bound on the weights' variance where there is one, whether a
    validation split was held out, the threshold rule of
    its analyse stage (``analysis.json`` ``selection``; runs analysed before it existed used
    the method's fixed threshold, else the gap rule; budget selections made before the rule
    bounded the error by one standard error say so by the absence of "upper bound"), and
    whether the budget chose the bits too."""
    config = run.config
    start = "from a plain net" if config.get("init_from") else "from scratch"
    if config.get("finetune_from"):
        start = f"fine-tuning {PurePath(config['finetune_from']).name} on its kept groups"
    words = [f"{config.get('epochs')} ep. {start}"]
    if config.get("lr") is not None:
        words.append(" ".join(filter(None, [f"lr {config['lr']:g}", config.get("lr_schedule")])))
    bound = config.get("max_weight_var")
    if bound:
        words.append("Var[w̃] ≤ " + (" ".join(f"{k} {v:g}" for k, v in bound.items())
                                    if isinstance(bound, dict) else f"{bound:g}"))
    if not config.get("val"):
        words.append("no validation split")
    if run.analysis is not None:
        fixed = methods.get(run.prior).fixed_threshold() if run.prior in methods.names() \
            else None
        sel = run.analysis.get("selection") or {"rule": fixed[1] if fixed else "gap"}
        if "error_budget_points" in sel:
            # a selection that counted the changed predictions accepted on the error's
            # upper bound (one standard error above it)
            bound = ", upper bound" if "val_changed_by_pruning" in sel else ""
            words.append(f"error budget {sel['error_budget_points']} pts (val.{bound})")
            if sel.get("precision") == "budget":
                words.append("bits by budget")
        elif sel.get("rule") == "budget":
            words.append("thresholds given")
        else:
            words.append(f"{sel.get('rule')} rule")
    return ", ".join(words)


_T2_COLUMNS = ["source", "model", "method", "run", "protocol", "error_full", "error_pruned",
               "error_quantised", "error_kmeans", "error_packed", "test_error_last_epoch",
               "paper_error_pct", "weights_total", "weights_kept", "nonzero_pct", "pruning",
               "fast_prediction", "max_compression", "packed_bytes", "artefact", "note"]


def _layer_kl_bits(run: RunRecord) -> tuple[dict[str, float], str]:
    """Per-layer KL in bits, where an artefact records it: layers.csv column ``kl_bits`` or
    analysis.json ``kl_bits`` (a dict by layer)."""
    if run.layers is not None and "kl_bits" in run.layers.columns:
        return dict(zip(run.layers["layer"], run.layers["kl_bits"], strict=True)), LAYERS
    if run.analysis and isinstance(run.analysis.get("kl_bits"), dict):
        return dict(run.analysis["kl_bits"]), ANALYSIS
    return {}, ""


def mdl_table(runs: list[RunRecord]) -> pd.DataFrame:
    """KL term (bits) beside the packed size (bits), per layer and per run.

    Per layer: ``kl_bits`` only where layers.csv/analysis.json record it; ``packed_bytes`` is
    compression.json ``size_parts[layer].total_bytes``.  Per run (``layer="(run)"``):
    ``kl_bits`` of the last metrics.jsonl record and the whole packed file's ``packed_bytes``.
    ``packed_bits = 8·packed_bytes``.
    """
    rows: list[dict] = []
    for run in runs:
        base = {"model": run.model, "method": paper.method_name(run.prior), "run": run.label}
        kl, kl_src = _layer_kl_bits(run)
        parts = (run.compression or {}).get("size_parts", {})
        names = ([s["name"] for s in run.weighted_layers()] or list(parts)
                 if parts or kl_src else [])     # no per-layer artefact: the run row only
        for name in names:
            part = parts.get(name)
            notes = []
            if not kl_src:
                notes.append(KL_NOT_RECORDED)
            if part is None:
                notes.append(_missing_note(run, COMPRESSION) or f"no size_parts[{name}]")
            rows.append({**base, "layer": name, "kl_bits": kl.get(name),
                         "kl_source": kl_src if name in kl else "",
                         "packed_bytes": part.get("total_bytes") if part else None,
                         "packed_source": f"{COMPRESSION} size_parts" if part else "",
                         "note": "; ".join(notes)})
        last = run.metrics[-1] if run.metrics else {}
        notes = []
        if "kl_bits" not in last:
            notes.append(_missing_note(run, METRICS)
                         or "no kl_bits in metrics.jsonl (a loss without a KL term)")
        if run.compression is None:
            notes.append(_missing_note(run, COMPRESSION))
        rows.append({**base, "layer": RUN_LAYER, "kl_bits": last.get("kl_bits"),
                     "kl_source": f"{METRICS} epoch {last.get('epoch')}"
                     if "kl_bits" in last else "",
                     "packed_bytes": (run.compression or {}).get("packed_bytes"),
                     "packed_source": f"{COMPRESSION} packed_bytes (whole file)"
                     if run.compression else "",
                     "note": "; ".join(n for n in notes if n)})
    frame = pd.DataFrame(rows, columns=["model", "method", "run", "layer", "kl_bits",
                                        "kl_source", "packed_bytes", "packed_bits",
                                        "packed_source", "note"])
    frame = _typed(frame, ["packed_bytes"])
    frame["packed_bits"] = frame["packed_bytes"] * 8
    return frame


#: frontier.csv's columns that :func:`budget_costs` reads
FRONTIER_ERRORS = ("val_error_unpruned", "val_error_packed", "test_error_full",
                   "test_error_packed")


def budget_costs(runs: list[RunRecord]) -> pd.DataFrame:
    """Per run and error budget of its ``frontier.csv``, the cost of the compression in
    points of error: ``val_cost = 100·(val_error_packed − val_error_unpruned)`` on the
    validation split that the rule searched, ``test_cost = 100·(test_error_packed −
    test_error_full)`` on the test set that it never saw.  A search over many settings keeps
    those that the validation examples flatter, so ``test_cost`` above ``val_cost`` measures
    the selection's optimism.  Runs without a frontier (or one without these columns) are
    left out."""
    rows = []
    for run in runs:
        f = run.frontier
        if f is None or f.empty or not set(FRONTIER_ERRORS) <= set(f.columns):
            continue
        for _, r in f.iterrows():
            rows.append({"run": run.label, "model": run.model, "prior": run.prior,
                         "budget_points": r["budget_points"],
                         "val_cost": _points(r["val_error_packed"] - r["val_error_unpruned"]),
                         "test_cost": _points(r["test_error_packed"] - r["test_error_full"])})
    return pd.DataFrame(rows, columns=["run", "model", "prior", "budget_points", "val_cost",
                                       "test_cost"])


def _points(fraction: float) -> float:
    """A difference of error fractions in points, rounded to 10⁻⁶ (errors count examples, so
    this only drops the float subtraction's noise)."""
    return round(100 * float(fraction), 6)


def budget_summary(costs: pd.DataFrame) -> pd.DataFrame:
    """:func:`budget_costs` per budget: ``runs``, mean ``val_cost`` and ``test_cost``, the
    largest ``test_cost`` and ``over_budget``, the runs whose test cost exceeds the budget."""
    over = costs.assign(over=costs["test_cost"] > costs["budget_points"])
    by = over.groupby("budget_points", sort=True)
    return pd.DataFrame({"runs": by.size(), "val_cost": by["val_cost"].mean(),
                         "test_cost": by["test_cost"].mean(),
                         "test_cost_max": by["test_cost"].max(),
                         "over_budget": by["over"].sum()}).reset_index()


def bench_rows(run: RunRecord) -> list[dict]:
    """bench.json's variants, flattened: name, median_s, q25, q75, speedup, ideal, energy_j."""
    if run.bench is None:
        return []
    return [{"variant": v["name"], "median_s": v["median_s"],
             "q25": v.get("spread", {}).get("q25"), "q75": v.get("spread", {}).get("q75"),
             "speedup": v.get("speedup"), "ideal_speedup": v.get("ideal_speedup"),
             "energy_j": v.get("energy_j")} for v in run.bench.get("variants", [])]


def write_tables(out_pdf, t1: pd.DataFrame, t2: pd.DataFrame, mdl: pd.DataFrame,
                 budgets: pd.DataFrame) -> dict:
    """Write ``NAME.table1.csv``, ``NAME.table2.csv``, ``NAME.mdl.csv`` beside ``NAME.pdf``,
    and ``NAME.budgets.csv`` (:func:`budget_costs`) where a run has a frontier.

    Floats are written with Python's shortest round-trip repr, so reading them back
    (``pandas.read_csv``, or ``float`` of the text) gives the artefacts' values exactly.
    """
    out_pdf = Path(out_pdf)
    paths = {}
    frames = {"table1": t1, "table2": t2, "mdl": mdl}
    if not budgets.empty:
        frames["budgets"] = budgets
    for key, frame in frames.items():
        path = out_pdf.with_name(f"{out_pdf.stem}.{key}.csv")
        with atomic_write(path, "w") as f:
            frame.to_csv(f, index=False)
        paths[key] = path
    return paths


#: Table 2's columns that a sweep's report gives as mean ± sd over seeds
SPREAD_T2 = ("error_full", "error_pruned", "error_quantised", "error_kmeans", "error_packed",
             "test_error_last_epoch", "nonzero_pct", "pruning", "fast_prediction",
             "max_compression", "packed_bytes", "weights_kept")
#: Table 1's columns that a sweep's report gives as mean ± sd over seeds
SPREAD_T1 = ("units_kept", "bits")


def with_spread(t1: pd.DataFrame, t2: pd.DataFrame, summary: pd.DataFrame,
                layers: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A sweep's Tables 1 and 2 (see :mod:`pbc.sweep.summary`): each run row stands for a
    configuration (``run`` is its name) and takes the mean over its seeds from the sweep's
    ``summary.csv`` / ``summary_layers.csv``, the sample standard deviation in
    ``<column>_sd`` and the number of seeds in ``n_seeds``; the paper's rows, and runs that
    are not one of the sweep's configurations, are unchanged."""
    t1, t2 = t1.copy(), t2.copy()
    stats = summary.set_index("configuration")
    rows = (t2["source"] == "run") & t2["run"].isin(stats.index)   # single runs stay as read
    t2["n_seeds"] = pd.array([pd.NA] * len(t2), dtype="Int64")
    t2.loc[rows, "n_seeds"] = t2.loc[rows, "run"].map(stats["n_seeds"])
    for col in SPREAD_T2:
        t2[col] = t2[col].astype("Float64")
        t2.loc[rows, col] = t2.loc[rows, "run"].map(stats[f"{col}_mean"])
        t2[f"{col}_sd"] = t2["run"].map(stats[f"{col}_sd"]).where(rows).astype("Float64")
    per_layer = layers.set_index(["configuration", "layer"])
    rows = (t1["source"] == "run") & t1["run"].isin(stats.index)
    keys = pd.MultiIndex.from_arrays([t1["run"], t1["layer"]])
    for col in SPREAD_T1:
        mean = pd.Series(per_layer[f"{col}_mean"].reindex(keys).to_numpy(), index=t1.index)
        sd = pd.Series(per_layer[f"{col}_sd"].reindex(keys).to_numpy(), index=t1.index)
        t1[col] = t1[col].astype("Float64").where(~rows, mean)
        t1[f"{col}_sd"] = sd.where(rows).astype("Float64")
    return t1, t2


def _by_model(runs: list[RunRecord]) -> dict[str, list[RunRecord]]:
    """Runs grouped by model, models in order of first appearance."""
    groups: dict[str, list[RunRecord]] = {}
    for r in runs:
        groups.setdefault(r.model, []).append(r)
    return groups


def _typed(frame: pd.DataFrame, ints: list[str]) -> pd.DataFrame:
    """Integer columns as pandas' nullable ``Int64`` (so CSV shows 752, not 752.0)."""
    for col in ints:
        frame[col] = pd.to_numeric(frame[col]).astype("Int64")
    return frame
