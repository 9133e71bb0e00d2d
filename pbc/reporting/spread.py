"""A sweep's Figure 1: forward-pass time per bench variant, the mean over a configuration's
seeds with their standard deviation as error bars (drawn from ``summary_bench.csv``; nothing
is computed here)."""

from __future__ import annotations

import math

import pandas as pd


def _value(v) -> float:
    return 0.0 if v is None or pd.isna(v) else float(v)


def draw_bench_spread(fig, bench: pd.DataFrame, order: list[str], colours: dict[str, str],
                      titles: dict[str, str]) -> None:
    """One panel per configuration of ``order`` (rows of ``summary_bench.csv``): bars at
    ``median_ms_mean``, whiskers ``± median_ms_sd``, and above each bar the speed-up over
    ``dense`` as ``speedup_mean ± speedup_sd`` with the ideal (FLOP-ratio) speed-up."""
    cols = min(len(order), 3)
    nrows = math.ceil(len(order) / cols)
    gs = fig.add_gridspec(nrows, cols, left=0.07, right=0.97, top=0.83, bottom=0.2,
                          hspace=0.75, wspace=0.3)
    for i, conf in enumerate(order):
        rows = bench[bench["configuration"] == conf]
        ax = fig.add_subplot(gs[divmod(i, cols)])
        names = list(rows["variant"])
        mean = [_value(v) for v in rows["median_ms_mean"]]
        sd = [_value(v) for v in rows["median_ms_sd"]]
        many = len(names) > 4
        ax.bar(range(len(names)), mean, yerr=sd, color=colours.get(conf), capsize=3)
        ax.set_xticks(range(len(names)),
                      [n.replace("-pad", "\n+pad") for n in names] if many else names,
                      fontsize=6.5 if many else 8)
        for x, r in enumerate(rows.itertuples()):
            spread = "" if pd.isna(r.speedup_sd) else f"±{r.speedup_sd:.2f}"
            label = f"{_value(r.speedup_mean):.2f}{spread}×\n({_value(r.ideal_speedup_mean):.2f}×)"
            ax.text(x, mean[x] + sd[x], label, ha="center", va="bottom",
                    fontsize=5.5 if many else 7)
        ax.set_ylim(0, max([m + s for m, s in zip(mean, sd, strict=True)] or [1.0]) * 1.5)
        ax.set_ylabel("ms per batch", fontsize=8.5)
        ax.tick_params(labelsize=8)
        first = rows.iloc[0] if len(rows) else {}
        n = int(first["n_seeds"]) if len(rows) else 0
        ax.set_title(f"{titles.get(conf, conf)}, {n} seed{'s' if n != 1 else ''}\n"
                     f"{first.get('device', '?')}, {first.get('threads', '?')} threads, batch "
                     f"{first.get('batch', '?')}", fontsize=8.5)
