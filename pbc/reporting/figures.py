"""The analyse and bench stages' figures and the report's reliability diagrams, from saved
numbers.

Functions here draw what they are given; they never train, sample or compute statistics.
They build :class:`matplotlib.figure.Figure` objects directly, not through pyplot, so no
backend is chosen or switched (``Figure.savefig`` renders PNG and PDF itself) and nothing is
left open in pyplot's list of figures.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from pbc.io import atomic_path


def save_figure(fig, path: Path, dpi: int = 130) -> Path:
    """Save ``fig`` as PNG (atomic write)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    return path


def save_titled(fig, path: Path, title: str | None = None) -> Path:
    """Save ``fig`` with ``title`` above its panels' own titles."""
    if title:
        fig.suptitle(title, fontsize=10, y=1.03)
    return save_figure(fig, path)


def save_axes(axes, path: Path, title: str | None = None) -> Path:
    """Save the figure that ``axes`` (an Axes or an array of them, e.g. from ArviZ) belong to."""
    return save_titled(np.asarray(axes).ravel()[0].figure, path, title)


@contextmanager
def pyplot_figures_closed() -> Iterator[None]:
    """Close, on leaving the block, every pyplot figure opened inside it.

    For libraries that draw through pyplot (ArviZ): pyplot chooses its backend when it first
    draws (Agg where there is no display) and keeps each figure until it is closed.
    """
    import matplotlib.pyplot as plt

    before = set(plt.get_fignums())
    try:
        yield
    finally:
        for num in sorted(set(plt.get_fignums()) - before):
            plt.close(num)


def _grid(n: int, width: float = 3.4, height: float = 2.6):
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, height * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    return fig, axes.ravel()


def score_histograms(layers: dict[str, tuple[np.ndarray, float, int, int]], label: str,
                     path: Path):
    """Per layer: histogram of the prune scores the threshold decides on, with the threshold
    as a red line; ``(scores, threshold, kept, total)``: the groups kept once the masks are
    propagated, of ``total``; the groups the layer lost before (fine-tuning) are counted in
    the title, not drawn."""
    fig, axes = _grid(len(layers))
    for ax, (name, (scores, threshold, kept, total)) in zip(axes, layers.items(),
                                                            strict=False):
        ax.hist(scores, bins=50, color="#4c72b0")
        if math.isfinite(threshold) and threshold <= np.max(scores) + 1:
            ax.axvline(threshold, color="#c44e52", lw=1.5, label=f"t = {threshold:.2f}")
            ax.legend(fontsize=7, frameon=False)
        removed = total - len(scores)
        gone = f", {removed} removed before" if removed else ""
        ax.set_title(f"{name}: {kept}/{total} groups kept{gone}", fontsize=9)
        ax.set_xlabel(label, fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def weight_scatter(layers: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], path: Path,
                   max_points: int = 20000):
    """Per layer: log10|E[w]| against log10 Var[w], kept weights dark, pruned light."""
    fig, axes = _grid(len(layers))
    rng = np.random.default_rng(0)
    for ax, (name, (mean, var, kept)) in zip(axes, layers.items(), strict=False):
        m, v, k = (np.asarray(a).ravel() for a in (mean, var, kept))
        idx = rng.choice(m.size, size=min(max_points, m.size), replace=False)
        m, v, k = np.abs(m[idx]) + 1e-12, v[idx] + 1e-30, k[idx]
        ax.scatter(np.log10(m[~k]), np.log10(v[~k]), s=1, alpha=0.3, color="#bbbbbb",
                   label="pruned", rasterized=True)
        ax.scatter(np.log10(m[k]), np.log10(v[k]), s=1, alpha=0.5, color="#4c72b0",
                   label="kept", rasterized=True)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("log10 |E[w]|", fontsize=8)
        ax.set_ylabel("log10 Var[w]", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, frameon=False, markerscale=6)
    fig.tight_layout()
    return save_figure(fig, path)


def bench_chart(record: dict, path: Path):
    """Bar chart of forward-pass time per variant (median, IQR whiskers), a tick at the time
    the FLOP ratio would give (dense time / ideal speed-up), the measured and ideal
    speed-ups written above each bar; energy per batch where measured."""
    rows = record["variants"]
    names = [r["name"] for r in rows]
    med = np.array([r["median_s"] for r in rows]) * 1e3
    lo = med - np.array([r["spread"]["q25"] for r in rows]) * 1e3
    hi = np.array([r["spread"]["q75"] for r in rows]) * 1e3 - med
    ideal = med[0] / np.array([r["ideal_speedup"] for r in rows])
    energy = [r.get("energy_j") for r in rows]
    panels = 2 if any(e is not None for e in energy) else 1
    fig = Figure(figsize=(max(4.2, 0.75 * len(rows)) * panels, 3.2))
    axes = fig.subplots(1, panels, squeeze=False)
    ax = axes[0, 0]
    x = np.arange(len(rows))
    ax.bar(x, med, yerr=[np.maximum(lo, 0), np.maximum(hi, 0)], color="#4c72b0", capsize=3)
    ax.scatter(x, ideal, marker="_", s=300, color="#c44e52", zorder=3, label="FLOP-ratio ideal")
    for i, r in enumerate(rows):
        ax.text(i, max(med[i] + max(hi[i], 0), ideal[i]),
                f"{r['speedup']:.2f}x\n(ideal {r['ideal_speedup']:.2f}x)",
                ha="center", va="bottom", fontsize=6.5)
    ax.set_xticks(x, names, fontsize=7, rotation=30, ha="right")
    ax.set_ylabel("ms per batch", fontsize=8)
    ax.set_ylim(0, max(med.max(), ideal.max()) * 1.4)
    ax.legend(fontsize=7, frameon=False, loc="upper right")
    ax.set_title(f"{record['model']} {record['prior']}: batch {record['batch']}, "
                 f"{record['device']} ({record['threads']} threads)", fontsize=8)
    ax.tick_params(labelsize=7)
    if panels == 2:
        ax2 = axes[0, 1]
        ax2.bar(x, [e or 0.0 for e in energy], color="#55a868")
        ax2.set_xticks(x, names, fontsize=7, rotation=30, ha="right")
        ax2.set_ylabel("J per batch (NVML)", fontsize=8)
        ax2.tick_params(labelsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def reliability_diagram(ax, curves: list[tuple[str, dict]], colours: list[str]) -> list:
    """Accuracy against confidence, per confidence bin, on ``ax``.

    ``curves``: ``(label, record)`` with ``record`` a calibration record of
    ``predictive.json`` (its ``bins``: ``edges`` ``(M + 1,)``, ``accuracy`` and
    ``confidence`` ``(M,)``, ``None`` for an empty bin).  The first curve is drawn as bars,
    the others as steps; a dot marks each bin's mean confidence and accuracy; the dashed
    diagonal is perfect calibration.  Returns the legend's handles, the curves' in order.
    """
    handles = ax.plot([0, 1], [0, 1], ls="--", lw=1, color="#888888", label="calibrated")
    for i, (label, record) in enumerate(curves):
        bins, colour = record["bins"], colours[i % len(colours)]
        edges = np.asarray(bins["edges"], float)
        acc = np.array([math.nan if a is None else a for a in bins["accuracy"]], float)
        conf = np.array([math.nan if c is None else c for c in bins["confidence"]], float)
        if i == 0:
            handles.append(ax.bar(edges[:-1], np.nan_to_num(acc), width=np.diff(edges),
                                  align="edge", color=colour, alpha=0.35, edgecolor=colour,
                                  lw=0.6, label=label))
        else:
            handles.append(ax.stairs(acc, edges, color=colour, lw=1.6, label=label))
        ax.plot(conf, acc, "o", ms=3, color=colour)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("confidence (max. class probability)", fontsize=8)
    ax.set_ylabel("accuracy", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    return handles
