"""``pbc report RUN_DIR… --out NAME.pdf``: a comparison PDF drawn from run artefacts only.

Pages (A4 landscape, each a :class:`matplotlib.figure.Figure`: no pyplot, no backend), drawn
from the tables of :mod:`pbc.reporting.tables`:

1. title: data set, runs (directory, method, model, epochs, git commit, missing artefacts);
2. Table 1: pruned architecture and bit precision per layer, beside the paper's rows;
3. Table 2: errors, ``|w≠0|/|w|`` and the three compression rates, beside the paper's rows;
4. Figure 1: forward-pass time per variant (bench.json), energy where measured;
   then, where runs have a frontier.csv, packed test error against compression per error
   budget (a page per model), and what each budget cost on the validation split against
   the test set;
5. the analyse stage's figures (ArviZ forest plots, score histograms, …), per run;
6. training curves from metrics.jsonl (errors, ELBO terms);
7. calibration: a reliability diagram per run that has a predictive.json (none without);
8. MDL: the KL term in bits beside the packed size in bits.

For a sweep's directory (``pbc report SWEEP_DIR``) each row is a configuration: Tables 1–2
and Figure 1 show the mean ± sd over its seeds that the sweep's summary files hold, and the
per-run pages show its first seed.  A long table continues on further pages.
``NAME.table1.csv``, ``NAME.table2.csv``, ``NAME.mdl.csv`` (and ``NAME.budgets.csv``) hold
the same tables unrounded.  Nothing here trains or estimates: numbers are only formatted
(errors as %, rounded for display), and the budget page averages its costs over runs.
"""

from __future__ import annotations

import datetime as _dt
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from pbc.io import atomic_path
from pbc.reporting import figures, layout, paper, spread, tables
from pbc.reporting.layout import (
    COLOURS,
    DASH,
    PAGE,
    TABLE_RECT,
    as_printed,
    missing,
    num,
    pct,
    sd,
    whole,
)
from pbc.rundir import RunRecord, read_runs


@dataclass
class Report:
    """What :func:`build_report` wrote: the PDF, its CSV tables, and the page titles."""

    pdf: Path
    csv: dict[str, Path]
    pages: list[str] = field(default_factory=list)
    runs: list[RunRecord] = field(default_factory=list)


def build_report(run_dirs, out, sweep=None) -> Report:
    """Read the run directories, write ``out`` (a PDF) and the CSV tables beside it.

    ``sweep`` (a :class:`pbc.sweep.SweepSummary`) adds a sweep: its selected configurations
    come first, in Tables 1–2 and Figure 1 as mean ± sd over seeds, the per-run pages from
    each configuration's first seed; ``run_dirs`` follow as single runs."""
    out = Path(out)
    if sweep is not None:
        first = sweep.representatives()
        run_dirs = list(first.values()) + list(run_dirs)
    runs = read_runs(run_dirs)
    if sweep is not None:
        for run, conf in zip(runs, first, strict=False):   # single runs follow
            run.label = conf
    t1, t2 = tables.table1(runs), tables.table2(runs)
    if sweep is not None:
        t1, t2 = tables.with_spread(t1, t2, sweep.configurations, sweep.layers)
    mdl, budgets = tables.mdl_table(runs), tables.budget_costs(runs)
    result = Report(out, {}, runs=runs)
    with atomic_path(out) as tmp:
        with PdfPages(tmp, metadata={"Title": f"pbc comparison report: {out.stem}",
                                     "Creator": "pbc report"}) as pdf:
            for title, fig in _pages(runs, t1, t2, mdl, budgets, sweep):   # one page at a time
                pdf.savefig(fig)
                result.pages.append(title)
    result.csv = tables.write_tables(out, t1, t2, mdl, budgets)
    return result


def _paper_source(model: str) -> str:
    return "paper (CIFAR-10)" if model == "vgg16" else "paper (MNIST)"


def _run_desc(run: RunRecord, sep: str = " ") -> str:
    """The run's name, then ``sep`` and its method and network (``sep="\\n"`` in the titles
    of panels three to a row, where a long name on one line runs into its neighbours')."""
    return f"{run.label}{sep}({paper.method_name(run.prior)}, {paper.model_name(run.model)})"


# ---------------------------------------------------------------------------------- pages

def _pages(runs, t1, t2, mdl, budgets, sweep=None):
    """``(title, figure)`` for each page, in order, each drawn only when asked for."""
    yield from _title_page(runs, sweep)
    yield from _table1_pages(t1, runs)
    yield from _table2_pages(t2)
    if sweep is None:
        yield from _bench_pages(runs, runs)
    else:
        yield _sweep_bench_page(sweep, runs)
        singles = runs[len(sweep.representatives()):]
        if singles:
            yield from _bench_pages(singles, runs, "single runs")
    yield from _frontier_pages(runs)
    yield from _budget_pages(budgets)
    yield from _diagnostic_pages(runs)
    yield _curves_page(runs)
    yield from _calibration_pages(runs)
    yield from _mdl_pages(mdl)


def _dataset(run: RunRecord) -> str:
    d = run.saved.get("dataset", {})
    if "train" in d and "test" in d:
        return f"{run.data} ({d['train']} train / {d['test']} test images)"
    return run.data


def _title_page(runs, sweep=None):
    datasets = sorted({_dataset(r) for r in runs})
    built = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    count = f"{len(runs)} runs" if sweep is None else \
        f"sweep {sweep.root}: {len(runs)} configurations"
    fig = layout.page("pbc comparison report",
                f"Data set: {', '.join(datasets)}    ·    {count}    ·    built {built}")
    fig.text(0.04, 0.86, textwrap.fill(
        "Bayesian Compression for Deep Learning (Louizos, Ullrich & Welling 2017), reproduced "
        "with pbc. Every number in this report is read from the run directories' artefacts "
        "(nothing is trained or recomputed); the paper's numbers come from "
        "pbc/reporting/paper.py." + ("" if sweep is None else
                                     " Tables 1-2 and Figure 1 give each configuration's mean "
                                     "± sample sd over its seeds (the sweep's summary.csv, "
                                     "summary_layers.csv, summary_bench.csv); the run listed "
                                     "below, its first seed, gives the diagnostics, training "
                                     "curves and MDL pages."), 150),
        fontsize=10, va="top")
    header = ["#", "run directory", "method", "model", "data", "epochs (config / trained)",
              "git commit", "missing artefacts"]
    rows = []
    for i, r in enumerate(runs, 1):
        commit = r.git_commit[:12] if r.git_commit else DASH
        rows.append([str(i), str(r.path), paper.method_name(r.prior), paper.model_name(r.model),
                     r.data, f"{r.config.get('epochs', DASH)} / {len(r.metrics)}", commit,
                     ", ".join(r.missing) or "none"])
    widths = [2, 25, 7, 10, 9, 7, 9, 22]
    rect = (0.04, 0.2, 0.92, 0.6)
    head, body, heights = layout.wrap_table(header, rows, widths, rect[2] * PAGE[0])
    for k, (i, j) in enumerate(layout.split_pages(heights, rect[3] * PAGE[1])):
        f = fig if k == 0 else layout.page("pbc comparison report (runs, continued)")
        layout.table(f, rect, head, body[i:j], [heights[0], *heights[i + 1:j + 1]], widths)
        layout.notes(f, ["'—' marks a value that no artefact records (or that the paper does not "
                   "print; see pbc/reporting/paper.py). Tables 1, 2 and MDL are also written as "
                   "CSV next to this PDF, unrounded.",
                   "Paper values: " + "; ".join(f"[{key}] {text}" for key, text in
                                                paper.SOURCES.items()) + "."])
        yield ("title" if k == 0 else "title (continued)", f)


def _group_rows(frame: pd.DataFrame, keys: list[str]):
    """Groups of a long table in their order of appearance."""
    order = pd.Series(["|".join(str(v) for v in row) for row in frame[keys].itertuples(
        index=False)], index=frame.index)
    for key in dict.fromkeys(order):
        yield frame[order == key]


def _joined(values, sds=None) -> str:
    """Per-layer values joined by '-'; a sweep's means rounded, each with '±sd', joined
    by ' / '."""
    vals = list(values)
    if all(missing(v) for v in vals):
        return DASH
    sds = [None] * len(vals) if sds is None else list(sds)
    spread = any(not missing(s) for s in sds)
    return (" / " if spread else "-").join(
        "?" if missing(v) else f"{float(v):.0f}" if missing(s) else
        f"{float(v):.0f}±{float(s):.0f}" for v, s in zip(vals, sds, strict=True))


def _table1_pages(t1: pd.DataFrame, runs):
    header = ["Model", "Method", "Source", "Pruned architecture (units kept)",
              "Bit precision per layer", "Note"]
    rows, shade = [], []
    for g in _group_rows(t1, ["model", "source", "method", "run"]):
        first = g.iloc[0]
        is_paper = first["source"] == "paper"
        src = _paper_source(first["model"]) if is_paper else first["run"]
        if is_paper and first["method"] == "original":
            src = "original network"
        notes = "; ".join(dict.fromkeys(n for n in g["note"] if isinstance(n, str) and n))
        rows.append([paper.model_name(first["model"]), first["method"], src,
                     _joined(g["units_kept"], g.get("units_kept_sd")),
                     _joined(g["bits"], g.get("bits_sd")), notes])
        shade.append(is_paper)
    layers = {m: "-".join(f"{n}" for n in t1[(t1.model == m) & (t1.source == "run")]
                          .drop_duplicates("layer")["layer"]) for m in t1["model"].unique()}
    order = "; ".join(f"{paper.model_name(m)}: {v}" for m, v in layers.items() if v)
    return _table_pages(
        "Table 1 — pruned architectures and bit precision", header, rows, shade,
        [10, 8, 16, 24, 18, 30],
        [f"Layer order: {order}. Units kept: output channels of a convolution, input units "
         "of a linear layer (compression.json out_kept / in_kept), as in the paper's Table 1.",
         "Shaded rows: the paper (MNIST; VGG on CIFAR-10); our runs are on the data set named "
         "on the title page. Bits: compression.json 'bits' per weight (the narrower of sign + "
         "exponent + significand and a fixed-point integer; codebook index bits for DC, SWS)."],
        "table1")


def _table_pages(title, header, rows, shade, widths, notes, key, subtitle=None):
    """One table over as many pages as it needs, the header repeated on each."""
    head, body, heights = layout.wrap_table(header, rows, widths, TABLE_RECT[2] * PAGE[0])
    spans = layout.split_pages(heights, TABLE_RECT[3] * PAGE[1])
    for k, (i, j) in enumerate(spans):
        suffix = f" ({k + 1}/{len(spans)})" if len(spans) > 1 else ""
        fig = layout.page(title + suffix, subtitle)
        layout.table(fig, TABLE_RECT, head, body[i:j], [heights[0], *heights[i + 1:j + 1]], widths,
               shade=shade[i:j])
        layout.notes(fig, notes)
        yield (f"{key}{suffix}", fig)


def _table2_pages(t2: pd.DataFrame):
    header = ["Model", "Method", "Source", "Error full %", "Error compr. %", "|w≠0|/|w| %",
              "Pruning", "Fast pred.", "Max compr.", "Note"]
    rows, shade = [], []
    for _, r in t2.iterrows():
        is_paper = r["source"] == "paper"
        note = r["note"] if isinstance(r["note"], str) else ""
        if is_paper:
            full = DASH
            compressed = DASH if missing(r["paper_error_pct"]) else f"{r['paper_error_pct']:.1f}"
            src = _paper_source(r["model"])
        else:
            src = r["run"] if missing(r.get("n_seeds")) else f"{r['run']} ({r['n_seeds']} seeds)"
            note = "; ".join(filter(None, [r["protocol"], note]))
            full, compressed = sd(r, "error_full", pct), sd(r, "error_packed", pct)
            if missing(r["error_full"]) and not missing(r["test_error_last_epoch"]):
                full = sd(r, "test_error_last_epoch", pct)
                note = "; ".join(filter(None, [note, "error: last epoch of metrics.jsonl"]))
        fmt = as_printed if is_paper else num
        rows.append([paper.model_name(r["model"]), r["method"], src, full, compressed,
                     *(fmt(r[k]) if is_paper else sd(r, k, num) for k in
                       ("nonzero_pct", "pruning", "fast_prediction", "max_compression")),
                     note])
        shade.append(is_paper)
    return _table_pages(
        "Table 2 — errors and compression rates", header, rows, shade,
        [10, 8, 15, 7, 8, 8, 7, 8, 8, 22],
        ["Errors in % of the test set: 'full' is the posterior-mean network, 'compr.' the "
         "packed, quantised network (compression.json error.full / error.packed). "
         "|w≠0|/|w| = Σ weights_kept / Σ weights_total over the weighted layers.",
         "Rates (compression.json 'rates'; original 32-bit weights as numerator, biases "
         "excluded): Pruning = |w| / |w kept|; Fast prediction = 32·|w| / Σ |w kept|·bits; "
         "Max compression = 32·|w| / bits of the Huffman-coded CSR values, indices and "
         "codebooks. Shaded rows: the paper (MNIST), '—' where it prints none."],
        "table2")


BENCH_RUNS_PER_PAGE = 6


def _bench_pages(shown, runs, what: str = ""):
    """Figure 1 for the runs ``shown`` (of all the report's ``runs``, which fix each run's
    colour): one panel per benched run, :data:`BENCH_RUNS_PER_PAGE` a page; ``what`` names
    them in the title."""
    benched = [r for r in shown if r.bench is not None]
    missing = [r.label for r in shown if r.bench is None]
    chunks = [benched[i:i + BENCH_RUNS_PER_PAGE]
              for i in range(0, len(benched), BENCH_RUNS_PER_PAGE)] or [[]]
    for k, chunk in enumerate(chunks):
        part = f" ({k + 1}/{len(chunks)})" if len(chunks) > 1 else ""
        yield (" ".join(filter(None, ["figure1", what])) + part,
               _bench_page(chunk, runs, f"{what}{part}".strip(), missing if k == 0 else []))


def _bench_page(benched, runs, what: str, missing: list[str]):
    title = "Figure 1 — forward-pass time per variant (bench.json)"
    fig = layout.page(f"{title}: {what}" if what else title,
                "Median over the timed repeats; whiskers: inter-quartile range; above each "
                "bar: measured speed-up over 'dense' (in brackets: ideal = FLOP ratio).")
    notes = [f"no bench.json: {', '.join(missing)}" if missing else ""]
    if not benched:
        fig.text(0.5, 0.5, "No run has a bench.json (run `pbc bench RUN`).", ha="center",
                 fontsize=12)
        layout.notes(fig, notes)
        return fig
    older = [r.label for r in benched if "flush_to_zero" not in r.bench]
    faulting = [r.label for r in benched
                if "flush_to_zero" in r.bench and "allocator" not in r.bench]
    variants = [tables.bench_rows(r) for r in benched]     # per run, its timed variants
    measured = [any(v["energy_j"] is not None for v in rows) for rows in variants]
    unmeasured = {r.bench.get("energy_note", "no note")
                  for r, m in zip(benched, measured, strict=True) if not m}
    if older:
        notes.append(f"bench.json from before the fair benchmark (subnormal weights kept, "
                     f"variants timed one after another): {', '.join(older)}")
    if faulting:
        notes.append(f"bench.json from before freed memory was reused and 2×2 pools ran as "
                     f"pair maxima (each batch paid page faults on its activations, which "
                     f"dilute speed-ups on large activations): {', '.join(faulting)}")
    if unmeasured:
        notes.append(f"Energy not measured: {'; '.join(sorted(unmeasured))}.")
    notes.append("Times are for one batch through the network held by each variant: "
                 "dense (posterior means, nothing removed), pruned (structured export), "
                 "quantised (fixed-point values, float32 arithmetic), fast (the layers "
                 "whose weights fit in 8 bits on int8 kernels, CPU, with uint8 "
                 "activations between them), csr (linear layers as sparse CSR). Red "
                 "tick: the time the FLOP ratio predicts (dense time / ideal speed-up); "
                 "for fast it counts float32 FLOPs, and an int8 multiply-add costs "
                 "less, so fast can beat it. Subnormal weights are flushed and the "
                 "variants are timed in turn (bench.json records load and threads). "
                 "Runs benched on different machines are not comparable in absolute "
                 "time.")
    cols = min(len(benched), 3)
    nrows = math.ceil(len(benched) / cols)
    energy_any = any(measured)
    # room below the lowest axes for two lines of tick labels, then the notes
    bottom = max(0.2, layout.notes_top(fig, notes) + 0.08)
    gs = fig.add_gridspec(nrows * (2 if energy_any else 1), cols, left=0.07, right=0.97,
                          top=0.83, bottom=bottom, hspace=0.95, wspace=0.3)
    for i, (run, rows) in enumerate(zip(benched, variants, strict=True)):
        b = run.bench
        row, col = divmod(i, cols)
        ax = fig.add_subplot(gs[row * (2 if energy_any else 1), col])
        names = [v["variant"] for v in rows]
        med = [v["median_s"] * 1e3 for v in rows]
        lo = [max(0.0, m - (v["q25"] or v["median_s"]) * 1e3) for m, v in zip(med, rows,
                                                                               strict=True)]
        hi = [max(0.0, (v["q75"] or v["median_s"]) * 1e3 - m) for m, v in zip(med, rows,
                                                                              strict=True)]
        colour = COLOURS[runs.index(run) % len(COLOURS)]   # the run's colour on every page
        many = len(names) > 4
        ax.bar(range(len(names)), med, yerr=[lo, hi], color=colour, capsize=3)
        ideal = [med[0] / v["ideal_speedup"] if v["ideal_speedup"] else math.nan for v in rows]
        ax.scatter(range(len(names)), ideal, marker="_", s=250, color="#c44e52", zorder=3)
        ax.set_xticks(range(len(names)),
                      [n.replace("-pad", "\n+pad") for n in names] if many else names,
                      fontsize=6.5 if many else 8)
        for x, (m, v) in enumerate(zip(med, rows, strict=True)):
            label = (f"{v['speedup']:.2f}×\n({v['ideal_speedup']:.2f}×)" if many else
                     f"{v['speedup']:.2f}×\n(ideal {v['ideal_speedup']:.2f}×)")
            ax.text(x, m + hi[x], label, ha="center", va="bottom",
                    fontsize=6 if many else 7.5)
        ax.set_ylim(0, max([m + h for m, h in zip(med, hi, strict=True)]
                           + [t for t in ideal if t == t]) * 1.45)
        ax.set_ylabel("ms per batch", fontsize=8.5)
        ax.tick_params(labelsize=8)
        ax.set_title(_run_desc(run, "\n") + f"\n{b.get('device_name', '?')} "
                     f"({b.get('device', '?')}, {b.get('threads', '?')} threads), batch "
                     f"{b.get('batch', '?')}", fontsize=8.5)
        if measured[i]:
            energy = [v["energy_j"] for v in rows]
            ax2 = fig.add_subplot(gs[row * 2 + 1, col])
            ax2.bar(names, [e if e is not None else 0.0 for e in energy], color="#55a868")
            for x, e in enumerate(energy):
                if e is None:
                    ax2.text(x, 0, "not\nmeasured", ha="center", va="bottom", fontsize=7)
            ax2.set_ylabel("J per batch (NVML)", fontsize=8.5)
            ax2.tick_params(labelsize=8)
    layout.notes(fig, notes)
    return fig


def _sweep_bench_page(sweep, runs):
    fig = layout.page("Figure 1 — forward-pass time per variant, mean ± sd over seeds",
                "Bars: the mean over seeds of each run's median time (summary_bench.csv); "
                "whiskers: ± the seeds' sample standard deviation; above each bar: the measured "
                "speed-up over 'dense', mean ± sd (in brackets: ideal = FLOP ratio).")
    benched = set(sweep.bench["configuration"])
    order = [r.label for r in runs if r.label in benched]
    if not order:
        fig.text(0.5, 0.5, "No configuration has a bench.json.", ha="center", fontsize=12)
        return ("figure1", fig)
    spread.draw_bench_spread(fig, sweep.bench, order,
                             {r.label: COLOURS[i % len(COLOURS)] for i, r in enumerate(runs)},
                             {r.label: _run_desc(r) for r in runs})
    layout.notes(fig, ["Runs benched on different machines are not comparable in absolute time; "
                 "each run's own medians and quartiles are in its bench.json."])
    return ("figure1", fig)


def _is_wide(img) -> bool:
    return img.shape[1] > 2.0 * img.shape[0]


def _diagnostic_pages(runs):
    drawn = 0
    without = [r.label for r in runs if not r.figures]
    for run in runs:
        if not run.figures:
            continue
        imgs = [(p, mpimg.imread(p)) for p in run.figures]
        wide = [x for x in imgs if _is_wide(x[1])]
        tall = [x for x in imgs if not _is_wide(x[1])]
        groups = [(c, len(c), 1) for c in layout.paginate(wide, 3) if c] + \
                 [(c, 2, 2) for c in layout.paginate(tall, 4) if c]
        for k, (chunk, nr, nc) in enumerate(groups):
            suffix = f" ({k + 1}/{len(groups)})" if len(groups) > 1 else ""
            fig = layout.page(f"Posterior diagnostics — {_run_desc(run)}{suffix}",
                        "The analyse stage's figures (ArviZ forest plots of log|z|, prune-score "
                        "histograms with thresholds, weight mean vs variance), as saved in "
                        f"{run.path}/figures/.")
            gs = fig.add_gridspec(nr, nc, left=0.04, right=0.96, top=0.84, bottom=0.06,
                                  hspace=0.12, wspace=0.05)
            for j, (path, img) in enumerate(chunk):
                ax = fig.add_subplot(gs[j // nc, j % nc])
                ax.imshow(img, interpolation="antialiased")
                ax.set_axis_off()
                ax.set_title(path.name, fontsize=8, color="#555555", loc="left")
            if without and not drawn:
                layout.notes(fig, [f"no analyse-stage figures: {', '.join(without)}"], y=0.012)
            drawn += 1
            yield (f"diagnostics {run.label}{suffix}", fig)
    if not drawn:
        fig = layout.page("Posterior diagnostics")
        fig.text(0.5, 0.5, "No run has analyse-stage figures (figures/*.png); run "
                 "`pbc analyse RUN`.", ha="center", fontsize=12)
        yield ("diagnostics", fig)


LINES = (("o", "-"), ("s", "--"), ("^", ":"))   # marker and line style of a frontier line


def _frontier_pages(runs):
    """One frontier page per model, for the runs with a non-empty ``frontier.csv``."""
    shown = [r for r in runs if r.frontier is not None and not r.frontier.empty]
    for model in dict.fromkeys(r.model for r in shown):
        fig = layout.page(f"Error against compression over error budgets — "
                          f"{paper.model_name(model)} (frontier.csv)",
                          "One line per run: its posterior analysed and compressed at each "
                          "error budget of `pbc frontier` (the number beside each point, in "
                          "points of validation error).")
        axes = [fig.add_axes([0.07 + 0.33 * i, 0.16, 0.27, 0.66]) for i in range(2)]
        of_model = [r for r in shown if r.model == model]
        for k, run in enumerate(of_model):
            f, c = run.frontier, COLOURS[k % len(COLOURS)]
            line = LINES[k // len(COLOURS) % len(LINES)]   # past ten runs, colours repeat
            err = 100 * f["test_error_packed"]
            for ax, rate in zip(axes, ("pruning", "fast_prediction"), strict=True):
                ax.plot(f[rate], err, marker=line[0], ls=line[1], ms=3.5, lw=1.1, color=c,
                        label=run.label if rate == "pruning" else None)
                for x, y, b in zip(f[rate], err, f["budget_points"], strict=True):
                    ax.annotate(f"{b:g}", (x, y), xytext=(3, 2), textcoords="offset points",
                                fontsize=6, color=c)
        for ax, title in zip(axes, ("pruning |w| / |w kept|", "fast prediction (bits)"),
                             strict=True):
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 3.0, 5.0, 7.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(f"{title}, ×", fontsize=8.5)
            ax.set_ylabel("test error, packed (%)", fontsize=8.5)
            ax.tick_params(labelsize=7.5)
            ax.grid(alpha=0.3, which="both")
        fig.legend(*axes[0].get_legend_handles_labels(), loc="upper left",
                   bbox_to_anchor=(0.74, 0.82), fontsize=7.5, frameon=False)
        layout.notes(fig, ["The budgets are a grid given beforehand, not chosen on the test "
                           "set; a run's own analysis (Tables 1 and 2) is one of these points."])
        yield ("frontier", fig)


def _budget_pages(costs: pd.DataFrame):
    """What each frontier budget cost on the validation split against the test set."""
    if costs.empty:
        return
    fig = layout.page("The error budget on the test set (frontier.csv)",
                      "One point per run and budget: the packed network's error above the "
                      "unpruned one, on the validation split that the rule searched (x) and "
                      "on the test set (y).")
    ax = fig.add_axes([0.07, 0.14, 0.42, 0.68])
    budgets = sorted(costs["budget_points"].unique())
    for k, b in enumerate(budgets):
        at = costs[costs["budget_points"] == b]
        ax.scatter(at["val_cost"], at["test_cost"], s=16, color=COLOURS[k % len(COLOURS)],
                   label=f"budget {b:g}")
    lo = min(0.0, costs["val_cost"].min(), costs["test_cost"].min()) - 0.1
    hi = max(costs["val_cost"].max(), costs["test_cost"].max()) + 0.1
    ax.plot([lo, hi], [lo, hi], color="#777777", lw=0.8, ls="--", label="test = validation")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("validation error, packed − unpruned (points)", fontsize=8.5)
    ax.set_ylabel("test error, packed − full (points)", fontsize=8.5)
    ax.tick_params(labelsize=7.5)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, frameon=False)
    summary = tables.budget_summary(costs)
    header = ["budget", "runs", "mean validation cost", "mean test cost", "largest test cost",
              "runs over budget on test"]
    rows = [[f"{r.budget_points:g}", f"{r.runs}", f"{r.val_cost:.2f}", f"{r.test_cost:.2f}",
             f"{r.test_cost_max:.2f}", f"{r.over_budget}"] for r in summary.itertuples()]
    widths = [0.7, 0.6, 1.2, 1.0, 1.1, 1.3]
    header, rows, heights = layout.wrap_table(header, rows, widths, 0.41 * PAGE[0])
    layout.table(fig, [0.55, 0.14, 0.41, 0.68], header, rows, heights, widths)
    layout.notes(fig, ["The rule accepts a setting on its validation error plus one standard "
                       "error of the change; the test column shows what that bound bought. "
                       "Costs in points of error; the runs are those of this report that "
                       "have a frontier.csv (NAME.budgets.csv holds every point)."])
    yield ("budgets", fig)


def _curves_page(runs):
    fig = layout.page("Training curves (metrics.jsonl)",
                "Left: test (solid) and train (dashed) error per epoch. Middle and right: the "
                "ELBO's terms, −E[log p(y|x,w)] and KL(q‖p), in nats (log scale).")
    gs = fig.add_gridspec(1, 3, left=0.06, right=0.98, top=0.84, bottom=0.3, wspace=0.28)
    ax_err, ax_ll, ax_kl = (fig.add_subplot(gs[0, i]) for i in range(3))
    handles, no_elbo, no_metrics = [], [], []
    for i, run in enumerate(runs):
        m = run.metrics
        if not m:
            no_metrics.append(run.label)
            continue
        c = COLOURS[i % len(COLOURS)]
        ep = [r.get("epoch") for r in m]
        (h,) = ax_err.plot(ep, [100 * r["test_error"] if "test_error" in r else math.nan
                                for r in m], color=c, lw=1.4)
        ax_err.plot(ep, [100 * r["train_error"] if "train_error" in r else math.nan
                         for r in m], color=c, lw=1.0, ls="--")
        handles.append((h, _run_desc(run)))
        if any("kl" in r for r in m):
            ax_ll.plot(ep, [-r["expected_loglik"] if "expected_loglik" in r else math.nan
                            for r in m], color=c, lw=1.4)
            ax_kl.plot(ep, [r.get("kl", math.nan) for r in m], color=c, lw=1.4)
        else:
            no_elbo.append(run.label)
    for ax, title, ylabel in ((ax_err, "error", "error (%)"),
                              (ax_ll, "expected log-likelihood", "−E[log p(y|x,w)] (nats)"),
                              (ax_kl, "KL term", "KL(q‖p) (nats)")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch", fontsize=9)
        ax.set_ylabel(ylabel, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in (ax_ll, ax_kl):
        if ax.lines:
            values = np.concatenate([np.asarray(line.get_ydata(), float) for line in ax.lines])
            # "symlog": SWS's complexity term (−log prior of point estimates) is negative
            ax.set_yscale("log" if np.nanmin(values) > 0 else "symlog")
        else:
            ax.text(0.5, 0.5, "no ELBO terms recorded", transform=ax.transAxes, ha="center")
    if handles:
        fig.legend([h for h, _ in handles], [t for _, t in handles], loc="lower center",
                   ncol=min(3, len(handles)), fontsize=8.5, frameon=False,
                   bbox_to_anchor=(0.5, 0.13))
    layout.notes(fig, [f"no ELBO terms (prior 'none': cross-entropy only): {', '.join(no_elbo)}"
                 if no_elbo else "",
                 f"no metrics.jsonl records: {', '.join(no_metrics)}" if no_metrics else ""])
    return ("curves", fig)


ESTIMATE_NAMES = {"monte_carlo": "MC predictive", "posterior_mean": "posterior mean",
                  "point_estimate": "point estimate"}


def _estimate_label(name: str, record: dict, predictive: dict) -> str:
    label = ESTIMATE_NAMES.get(name, name)
    if name == "monte_carlo" and predictive.get("samples"):
        label += f" ({predictive['samples']} draws)"
    return (f"{label}\nerror {pct(record['error'])}%, NLL {record['nll']:.3f}, "
            f"ECE {pct(record['ece'])}%")


def _calibration_pages(runs, per_page: int = 3):
    """Reliability diagrams from predictive.json, ``per_page`` runs a page; no page when no
    run has one."""
    chunks = layout.paginate([r for r in runs if r.predictive is not None], per_page)
    if not chunks[0]:
        return
    for k, chunk in enumerate(chunks):
        suffix = f" ({k + 1}/{len(chunks)})" if len(chunks) > 1 else ""
        fig = layout.page(f"Calibration — reliability diagrams (predictive.json){suffix}",
                    "Accuracy against confidence in equal-width confidence bins; the dashed "
                    "diagonal is perfect calibration.")
        gs = fig.add_gridspec(1, per_page, left=0.06, right=0.97, top=0.8, bottom=0.3,
                              wspace=0.3)
        for i, run in enumerate(chunk):
            p = run.predictive
            ax = fig.add_subplot(gs[0, i])
            curves = [(_estimate_label(n, e, p), e) for n, e in p["estimates"].items()]
            colour = COLOURS[runs.index(run) % len(COLOURS)]   # the run's colour on every page
            handles = figures.reliability_diagram(ax, curves, [colour, "#222222"])
            ax.legend(handles=handles, fontsize=7.5, loc="upper center", frameon=False,
                      bbox_to_anchor=(0.5, -0.16))
            ax.set_title(_run_desc(run, "\n") + f"\n{p.get('split', '?')} split, "
                         f"{p.get('examples', '?')} examples, epoch {p.get('epoch', '?')}",
                         fontsize=8.5)
        layout.notes(fig, ["Bars: the predictive, the Monte Carlo average of the class "
                     "probabilities of networks drawn from the posterior (a method without a "
                     "posterior: its point estimate); line: the posterior-mean network; dots: "
                     "each bin's mean confidence and accuracy.",
                     "NLL: mean −log p(y|x) in nats; ECE: Σ_m |B_m|/N · |accuracy_m − "
                     "confidence_m| over the bins (Guo et al. 2017), in %. Errors in % of the "
                     "split."])
        yield (f"calibration{suffix}", fig)


def _mdl_pages(mdl: pd.DataFrame):
    header = ["Run", "Method", "Layer", "KL (bits)", "Packed (bits)", "KL / packed", "Note"]
    rows, shade = [], []
    for _, r in mdl.iterrows():
        ratio = (DASH if missing(r["kl_bits"]) or missing(r["packed_bits"])
                 else f"{float(r['kl_bits']) / float(r['packed_bits']):.2f}")
        is_run = r["layer"] == tables.RUN_LAYER
        note = r["note"] if isinstance(r["note"], str) else ""
        note = note.replace(tables.KL_NOT_RECORDED, "").strip("; ")  # said in the notes
        if is_run and not missing(r["kl_bits"]):
            note = "; ".join(filter(None, [f"KL: {r['kl_source']}; packed: whole file", note]))
        rows.append([r["run"], r["method"], "whole run" if is_run else r["layer"],
                     whole(r["kl_bits"]), whole(r["packed_bits"]), ratio, note])
        shade.append(is_run)
    per_layer = mdl[mdl.layer != tables.RUN_LAYER]
    kl_recorded = per_layer["kl_bits"].notna().any()
    notes = ["MDL view: the KL term of the ELBO, in bits, is the description length "
             "of the weights under q; beside it the size in bits of what pbc's packed file "
             "(model.pbcz) spends on each layer (compression.json size_parts[layer].total_bytes "
             "× 8: weights, indices, codebook, biases, Huffman tables) and on the whole file."]
    if not kl_recorded:
        notes.append("Per-layer KL is not recorded in any artefact (no 'kl_bits' column in "
                     "layers.csv, no 'kl_bits' in analysis.json): only the run-level KL (the "
                     "last metrics.jsonl record's kl_bits, shaded rows) is shown, beside the "
                     "total packed bits.")
    return _table_pages("MDL — KL term (bits) beside packed size (bits)", header, rows, shade,
                        [16, 7, 8, 10, 10, 7, 36], notes, "mdl")
