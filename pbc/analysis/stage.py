"""The ``analyse`` stage: posterior → ArviZ InferenceData, group and layer tables, figures.

The only module that imports ArviZ.  Numbers come from :mod:`pbc.bayes.summaries`; this module
adapts them (xarray/ArviZ, pandas) and writes, into the run directory:

* ``posterior.nc`` — group ``posterior``: draws of every ``<layer>.z`` (and ``<layer>.s`` for
  the horseshoe) from ``q``, as ``chains × draws`` with a named dimension ``<layer>_group``;
  group ``posterior_moments``: per-weight ``<layer>.w_mean`` / ``<layer>.w_var`` (E[w],
  Var[w]) and per-group ``<layer>.score`` / ``<layer>.kept``.  Opens in plain ArviZ.
* ``groups.csv`` — one row per group; ``layers.csv`` — one row per layer (kept counts, bit
  precision, threshold and how it was chosen, ``kl_bits``: the layer's KL term in bits);
* ``figures/`` — score histograms with thresholds, forest plots of ``z``, global scales
  (GHS), weight mean-vs-variance scatter.

They are written under the run directory's lock and committed together
(:class:`pbc.io.Commit`): a kill leaves the previous analysis or the new one.
``analysis.json`` lists the figures drawn and records the SHA-256 of ``posterior.nc``,
``groups.csv`` and ``layers.csv``; free space for ``posterior.nc`` is checked first.

Draws from ``q`` are independent, so they are split into chains only to let ``az.summary``
report R-hat and ESS, which for iid draws should read ≈1 and ≈ the number of draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pbc.analysis.budget import SEARCH, budget_thresholds
from pbc.analysis.inference_data import (
    arviz,
    arviz_major,
    to_inference_data,
    write_moments_netcdf,
    write_netcdf,
)
from pbc.analysis.thresholds import Threshold, find_threshold
from pbc.bayes.elbo import LN2, MeanFieldELBO
from pbc.bayes.summaries import LayerPosterior, layer_moments
from pbc.compression.masks import kept_weight_mask, structured_masks, weight_masks
from pbc.compression.quantise import bit_precision
from pbc.defaults import DEFAULT_ERROR_BUDGET, PRECISIONS, RULES
from pbc.io import Commit, StageError, atomic_write, check_free_space, sha256_file, write_json
from pbc.nets import parse_layer_values
from pbc.reporting import figures
from pbc.rundir import (
    ANALYSIS,
    FIGURES,
    GROUPS,
    LAYERS,
    POSTERIOR,
    RunDir,
    load_trained,
    run_splits,
)


class ThresholdError(ValueError):
    """``--thresholds`` names a layer the run does not have, or is malformed."""


@dataclass
class LayerAnalysis:
    post: LayerPosterior
    threshold: Threshold
    in_mask: np.ndarray
    out_mask: np.ndarray
    groups_kept_mask: np.ndarray
    weights_kept_mask: np.ndarray
    row: dict


def parse_thresholds(text: str | None) -> dict[str, float]:
    """``"fc1=3,fc2=2.5"`` → ``{"fc1": 3.0, "fc2": 2.5}``; ThresholdError with a reason."""
    try:
        return parse_layer_values(text, "--thresholds")
    except ValueError as e:
        raise ThresholdError(str(e)) from None


def analyse(run_dir, draws: int = 1000, chains: int = 4, thresholds: dict | None = None,
            figures: bool = True, seed: int = 0, rule: str = "budget",
            error_budget: float = DEFAULT_ERROR_BUDGET,
            precision: str = "budget") -> dict[str, LayerAnalysis]:
    """Run the analyse stage on a trained run directory; returns per-layer results.

    Thresholds: ``thresholds`` (layer → value) where given; else the method's own rule where
    it has one (Sparse VD's ``log α ≥ 3``); else ``rule``: ``"budget"`` — the most
    compression whose pruned and quantised net stays within ``error_budget`` points of the
    unpruned posterior-mean net's validation error (:mod:`pbc.analysis.budget`) — or
    ``"gap"`` — each layer split at the gap between the modes of its scores
    (:func:`pbc.analysis.thresholds.find_threshold`).

    Bit precision: under the ``"budget"`` rule with a validation split and
    ``precision="budget"``, the fewest significand bits per layer that stay within the same
    budget; else (``"posterior"``) the paper's rule, unit round-off below the mean posterior
    variance.  ``analysis.json`` records each layer's ``significand_bits``.
    """
    if precision not in PRECISIONS:
        raise ThresholdError(f"unknown precision rule {precision!r}; choose from "
                             f"{list(PRECISIONS)}")
    if rule not in RULES:
        raise ThresholdError(f"unknown threshold rule {rule!r}; choose from {list(RULES)}")
    if not (error_budget >= 0 and math.isfinite(error_budget)):
        raise ThresholdError(f"the error budget must be ≥ 0 points, got {error_budget}")
    bad = [f"{k}={v}" for k, v in (thresholds or {}).items() if not math.isfinite(v)]
    if bad:
        raise ThresholdError(f"--thresholds must be finite numbers, got {', '.join(bad)}")
    with RunDir(run_dir).writing("pbc analyse"):
        return _analyse(load_trained(run_dir), draws, chains, thresholds, figures, seed, rule,
                        error_budget, precision)


def _analyse(trained, draws, chains, thresholds, figures, seed, rule, error_budget,
             precision):
    run, config, arch, net, method = (trained.dir.path, trained.config, trained.arch,
                                      trained.net, trained.method)
    if not method.has_posterior:
        raise StageError(f"{run}: prior {config.prior!r} has no posterior to analyse")
    thresholds = dict(thresholds or {})
    layers = {layer.site: layer for layer in net.bayes_layers()}
    unknown = set(thresholds) - set(layers)
    if unknown:
        raise ThresholdError(f"--thresholds names unknown layers {sorted(unknown)}; "
                         f"layers are {list(layers)}")
    posts = {name: layer_moments(layer) for name, layer in layers.items()}
    fixed = method.fixed_threshold()
    chosen = {}
    for name, post in posts.items():
        if name in thresholds:
            chosen[name] = Threshold(thresholds[name], "given", math.nan)
        elif fixed is not None:
            chosen[name] = Threshold(*fixed, math.nan)
        elif rule == "gap":
            chosen[name] = find_threshold(post.open_scores)
    selection = {"rule": rule if fixed is None else fixed[1], "given": sorted(thresholds),
                 "precision": "posterior"}
    significand = {}
    search = len(chosen) < len(posts)   # the error-budget rule chooses the rest
    if rule == "budget" and (search or precision == "budget"):
        config, splits = run_splits(config)
        if search and not config.val:
            raise StageError(f"{run}: the error-budget rule needs a validation split, and this "
                             f"run was trained without one; retrain with --val N, or pass "
                             f"--threshold-rule gap or --thresholds")
        if config.val:   # without one, given thresholds keep the posterior's precision
            found = budget_thresholds(arch, method.plain_state(net), posts, splits.val_x,
                                      splits.val_y, error_budget / 100,
                                      fixed={n: t.value for n, t in chosen.items()},
                                      precision=precision)
            for name, value in found.thresholds.items():
                chosen.setdefault(name, Threshold(value, "error-budget", math.nan))
            significand = found.significand_bits
            selection.update(precision=precision, error_budget_points=error_budget,
                             search=SEARCH,
                             val_examples=int(splits.val_y.numel()),
                             val_error_unpruned=found.unpruned_error,
                             val_error_pruned_quantised=found.error,
                             val_changed_by_pruning=found.changed,
                             trial_finer_bits=found.finer_bits,
                             evaluations=found.evaluations)
    values = {n: t.value for n, t in chosen.items()}
    masks = structured_masks(arch, posts, values)
    w_masks = weight_masks(posts, values)
    result = {name: _layer_result(posts[name], chosen[name], *masks[name], method.score_name,
                                  w_masks.get(name), significand.get(name)) for name in posts}

    torch.manual_seed(seed)
    posterior, moments, dims = {}, {}, {}
    for name, layer in layers.items():
        post, res = posts[name], result[name]
        wdims = [f"{name}_out", f"{name}_in"] + ([f"{name}_kh", f"{name}_kw"]
                                                 if post.kind == "conv" else [])
        moments[f"{name}.w_mean"] = (wdims, post.w_mean)
        moments[f"{name}.w_var"] = (wdims, post.w_var)
        if post.per_weight:  # Sparse VD: scores and keep decisions per weight, no z to draw
            moments[f"{name}.score"] = (wdims, post.score)
            moments[f"{name}.kept"] = (wdims, res.weights_kept_mask.astype(np.int8))
            continue
        for var, value in layer.q_scale.draws(draws).items():
            arr = value.cpu().double().numpy()
            posterior[f"{name}.{var}"] = arr.reshape(chains, draws // chains, *arr.shape[1:])
            if var == "z":
                dims[f"{name}.z"] = [f"{name}_group"]
        moments[f"{name}.score"] = ([f"{name}_group"], post.score)
        moments[f"{name}.kept"] = ([f"{name}_group"], res.groups_kept_mask.astype(np.int8))
    attrs = {"prior": config.prior, "model": config.model, "data": config.data,
             "score": method.score_name}
    for name, bits in layer_kl_bits(net, arch).items():
        result[name].row["kl_bits"] = bits
    # a full disk is found here, not inside the netCDF library halfway through a file
    check_free_space(run, _netcdf_estimate(posterior, moments), POSTERIOR)
    with Commit(run) as commit:           # a kill leaves the old analysis or the new one
        staged = {name: commit.path(name) for name in (POSTERIOR, GROUPS, LAYERS)}
        if posterior:
            write_netcdf(to_inference_data(posterior, moments, dims, attrs), staged[POSTERIOR])
        else:  # nothing is drawn: the moments alone, as a plain netCDF dataset
            write_moments_netcdf(moments, attrs, staged[POSTERIOR])
        _write_csv(pd.DataFrame(_group_rows(result)), staged[GROUPS])
        _write_csv(pd.DataFrame([r.row for r in result.values()]), staged[LAYERS])
        drawn = (_figures(lambda name: commit.path(f"{FIGURES}/{name}"), result,
                          method.score_label, posterior) if figures else [])
        write_json(commit.path(ANALYSIS), {
            "draws": draws, "chains": chains, "prior": config.prior, "selection": selection,
            "thresholds": {n: r.row["threshold"] for n, r in result.items()},
            "significand_bits": {n: r.row["significand_bits"] for n, r in result.items()},
            "histograms": {n: _histogram(r.post.open_scores) for n, r in result.items()},
            "figures": [f"{FIGURES}/{name}" for name in drawn],
            "sha256": {name: sha256_file(p) for name, p in staged.items()}})
    return result


def _netcdf_estimate(posterior: dict, moments: dict) -> int:
    """Bytes to have free before writing ``posterior.nc`` (and the small files beside it):
    twice the arrays, plus 16 MB for the netCDF structure, tables and figures."""
    arrays = sum(np.asarray(v).nbytes for v in posterior.values())
    arrays += sum(np.asarray(v).nbytes for _, v in moments.values())
    return 2 * arrays + (16 << 20)


def layer_kl_bits(net, arch) -> dict[str, float]:
    """Per layer, the ELBO's KL term in bits (the sum over the layer's sites ``<layer>.*``):
    the description length of its weights beside which the MDL page puts the packed size."""
    x = torch.zeros(1, *arch.input_shape, device=next(net.parameters()).device)
    by_site = MeanFieldELBO().kl_by_site(net.model, net.guide, x)
    out = {}
    for site, nats in by_site.items():
        layer = site.rsplit(".", 1)[0]      # sites are <layer path>.<variable>
        out[layer] = out.get(layer, 0.0) + nats / LN2
    return out


def _layer_result(post, threshold, in_mask, out_mask, score_name,
                  w_mask=None, significand=None) -> LayerAnalysis:
    keep_w = kept_weight_mask(post.kind, post.w_mean.shape, in_mask, out_mask)
    if w_mask is not None:
        keep_w = keep_w & w_mask
    groups_mask = in_mask if post.kind == "linear" else out_mask
    bits = bit_precision(post.w_mean[keep_w], post.w_var[keep_w], significand)
    row = {"layer": post.name, "kind": post.kind, "groups_total": int(groups_mask.size),
           "groups_kept": int(groups_mask.sum()), "in_kept": int(in_mask.sum()),
           "out_kept": int(out_mask.sum()), "weights_total": int(post.w_mean.size),
           "weights_kept": int(keep_w.sum()), **bits, "threshold": threshold.value,
           "threshold_on": score_name,
           "threshold_method": threshold.method, "separation": threshold.separation}
    return LayerAnalysis(post, threshold, in_mask, out_mask, groups_mask, keep_w, row)


def _group_rows(result: dict[str, LayerAnalysis]) -> list[dict]:
    rows = []
    for name, r in result.items():
        p = r.post
        if p.per_weight:
            continue
        for i in range(p.z_mean.size):
            rows.append({"layer": name, "index": i, "z_mean": p.z_mean[i], "z_var": p.z_var[i],
                         "log_alpha": p.log_alpha[i],
                         "e_log_z": p.e_log_z[i], "log_mode": p.log_mode[i],
                         "score": p.score[i], "kept": bool(r.groups_kept_mask[i])})
    return rows


def _histogram(scores: np.ndarray, bins: int = 60) -> dict:
    counts, edges = np.histogram(scores, bins=bins)
    return {"counts": counts.tolist(), "edges": edges.tolist()}


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_write(path, "w") as f:
        frame.to_csv(f, index=False)


def _log_abs_data(arrays: dict[str, np.ndarray], dims: dict, coords: dict):
    """InferenceData/DataTree of ``log|x|`` draws (ArviZ 1.x plots have no ``transform``)."""
    logs = {f"log|{k}|": np.log(np.abs(v)) for k, v in arrays.items()}
    return to_inference_data(logs, {}, {f"log|{k}|": d for k, d in dims.items()}, {},
                             coords=coords)


def _save_arviz_plot(plot, path: Path, title: str) -> None:
    """Save what an ArviZ plot returned, with ``title`` above it: axes (0.x) or a
    PlotCollection (1.x), whose matplotlib figure is ``get_viz("figure")``."""
    if hasattr(plot, "get_viz"):
        fig = plot.get_viz("figure")
        figures.save_titled(fig.item() if hasattr(fig, "item") else fig, path, title)
    else:
        figures.save_axes(plot, path, title=title)


def _score_panel(r: LayerAnalysis) -> tuple[np.ndarray, float, int, int]:
    """A layer's score histogram: the scores its threshold decides on, the threshold, and
    what it keeps of how many — weights of a per-weight posterior, else groups once the
    masks are propagated."""
    scores, t = r.post.open_scores, r.threshold.value
    if r.post.per_weight:
        return scores, t, int(np.sum(scores <= t)), scores.size
    return scores, t, int(r.groups_kept_mask.sum()), r.groups_kept_mask.size


def _figures(path_for, result: dict[str, LayerAnalysis], score_label: str,
             posterior: dict[str, np.ndarray]) -> list[str]:
    """Draw the figures, each to ``path_for(file name)``; returns the file names."""
    drawn = ["scores.png", "weights.png"]
    figures.score_histograms({n: _score_panel(r) for n, r in result.items()},
                             score_label, path_for("scores.png"))
    figures.weight_scatter({n: (r.post.w_mean, r.post.w_var, r.weights_kept_mask)
                           for n, r in result.items()}, path_for("weights.png"))
    az = arviz()
    new_api = arviz_major() >= 1
    for name, r in result.items():
        if r.post.per_weight:
            continue
        order = np.argsort(r.post.score)
        pick = order[np.linspace(0, order.size - 1, min(24, order.size)).round().astype(int)]
        dim = f"{name}_group"
        data = _log_abs_data({f"{name}.z": posterior[f"{name}.z"][..., pick]},
                             {f"{name}.z": [dim]}, {dim: pick})
        extra = {"backend": "matplotlib"} if new_api else {"figsize": (6, 7)}
        with figures.pyplot_figures_closed():   # ArviZ draws through pyplot
            plot = az.plot_forest(data, combined=True, **extra)
            _save_arviz_plot(plot, path_for(f"forest_{name}.png"),
                             f"{name}: log |z|, 24 groups across the score range")
        drawn.append(f"forest_{name}.png")
    if all(f"{n}.s" in posterior for n in result):   # a global scale per layer (GHS)
        data = _log_abs_data({f"{n}.s": posterior[f"{n}.s"] for n in result}, {}, {})
        with figures.pyplot_figures_closed():
            plot = (az.plot_dist(data, backend="matplotlib") if new_api else
                    az.plot_posterior(data, figsize=(3.2 * len(result), 2.8)))
            _save_arviz_plot(plot, path_for("global_scales.png"), "log s per layer")
        drawn.append("global_scales.png")
    return drawn
