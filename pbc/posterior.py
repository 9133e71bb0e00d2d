"""Numeric core of the posterior analysis (torch and numpy; no ArviZ, no xarray).

* :func:`layer_moments` — per-group and per-weight posterior moments of one layer:
  ``E[w] = E[z]·μ`` and ``Var[w] = Var[z]·(μ² + σ²) + E[z]²·σ²`` (DESIGN §4, paper eq. 9).
* :func:`prune_score` — what a threshold acts on: the dropout rate ``log α = log Var[z]/E[z]²``
  of each group's scale (GNJ: normal ``q(z)``; GHS: log-normal ``q(z)``, ``log(e^{σ²} − 1)``),
  or of each weight (Sparse VD); prune when above the threshold.
* :func:`find_threshold` — the gap between the two modes of a bimodal sample (Otsu split,
  then the middle of the widest empty run between the two class means).
* :func:`propagate_masks` — group masks → consistent input/output unit masks per layer.
* :func:`bit_precision` — significand and exponent bits of a layer (DESIGN §5.3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from pbc.guides import NormalScaleGuide
from pbc.models import Architecture
from pbc.priors import log_alpha_of


@dataclass
class LayerPosterior:
    """Posterior summaries of one Bayesian layer (numpy arrays on the CPU).

    A per-weight posterior (Sparse VD, ``per_weight=True``) has no ``z``: its ``z_*``,
    ``e_log_z`` and ``log_mode`` are ``None`` and ``log_alpha`` has the weight's shape.
    """

    name: str
    kind: str                   # "linear" | "conv"
    z_mean: np.ndarray | None   # (G,)  E[z]
    z_var: np.ndarray | None    # (G,)  Var[z]
    e_log_z: np.ndarray | None  # (G,)  E[log|z|]
    log_mode: np.ndarray | None  # (G,) log of the posterior mode of z (GHS; GNJ: log|μ|)
    log_alpha: np.ndarray       # (G,) group dropout rates (weight shape for Sparse VD)
    w_mean: np.ndarray          # weight shape, E[w]
    w_var: np.ndarray           # weight shape, Var[w]
    b_mean: np.ndarray          # (out,) E[b]
    per_weight: bool = False

    @property
    def score(self) -> np.ndarray:
        return prune_score(self)


@torch.no_grad()
def layer_moments(layer) -> LayerPosterior:
    """Posterior moments of a :class:`pbc.layers.BayesLayer`."""
    w_loc, w_var, _, _ = layer.variational_moments()
    _, b_mean = layer.posterior_mean()
    q = layer.q_scale

    def np_(t):
        return t.detach().cpu().double().numpy()

    kind = "linear" if layer.groups_on_input else "conv"
    if q is None:  # Sparse VD: q(w) = N(θ, σ²) per weight
        return LayerPosterior(
            name=layer.site, kind=kind, z_mean=None, z_var=None, e_log_z=None, log_mode=None,
            log_alpha=np_(log_alpha_of(w_loc, w_var.sqrt())), w_mean=np_(w_loc),
            w_var=np_(w_var), b_mean=np_(b_mean), per_weight=True)
    z_mean, z_var = q.mean(), q.variance()
    e_log, v_log = q.log_z_moments()
    zm, zv = layer.group_view(z_mean), layer.group_view(z_var)
    w_mean = zm * w_loc
    w_var_total = zv * (w_loc.pow(2) + w_var) + zm.pow(2) * w_var
    gnj = isinstance(q, NormalScaleGuide)
    log_mode = z_mean.abs().log() if gnj else e_log - v_log
    return LayerPosterior(
        name=layer.site, kind=kind,
        z_mean=np_(z_mean), z_var=np_(z_var), e_log_z=np_(e_log), log_mode=np_(log_mode),
        log_alpha=np_(q.log_alpha()),
        w_mean=np_(w_mean), w_var=np_(w_var_total), b_mean=np_(b_mean))


def prune_score(post: LayerPosterior) -> np.ndarray:
    """``log α`` of the groups' scales (GNJ, GHS) or of the weights (SVD): above the threshold
    goes.  For GHS this replaced ``−E[log z]``: on Fashion-MNIST LeNet-300-100 the groups the
    data did not need kept E[log z] like the others but a scale posterior as wide as the prior
    (log α ≈ −1.4 against ≈ −6), and pruning them left the test error unchanged."""
    return post.log_alpha


@dataclass
class Threshold:
    value: float           # prune when score > value
    method: str            # how it was chosen
    separation: float      # Ashman's D between the two modes (nan when not computed)


def find_threshold(scores: np.ndarray, min_separation: float = 3.0,
                   min_gap: float = 0.5, min_log_gap: float = 0.5) -> Threshold:
    """Split a bimodal sample of prune scores at the gap between its modes.

    Otsu's split (maximum between-class variance over the sorted sample) names two classes.
    The sample counts as bimodal when the classes are well separated — Ashman's
    ``D = √2·|m1 − m2| / √(s1² + s2²) ≥ min_separation`` (a Gaussian split this way gives
    D ≈ 2.7) — *and* the widest empty run between consecutive sorted values lying between
    the class means is at least ``min_gap`` pooled class standard deviations (a uniform
    sample has D ≈ 3.5 but no empty run) *and* at least ``min_log_gap`` in absolute terms:
    the scores are log dropout rates, and two groups less than ``e^0.5`` apart are not a
    keep/prune decision however few groups there are (a 20-filter layer can look "bimodal"
    by chance).  The threshold is the middle of that run.  A sample that is not
    bimodal keeps everything (threshold above its maximum).
    """
    x = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    n = x.size
    if n < 4 or x[-1] - x[0] < 1e-12:
        return Threshold(float(x[-1]) + 1.0 if n else math.inf, "unimodal", math.nan)
    keep_all = float(x[-1]) + 1.0
    csum = np.cumsum(x)
    k = np.arange(1, n)                       # left class = x[:k]
    m1 = csum[:-1] / k
    m2 = (csum[-1] - csum[:-1]) / (n - k)
    kk = int(np.argmax(k * (n - k) * (m1 - m2) ** 2)) + 1
    left, right = x[:kk], x[kk:]
    pooled = math.sqrt(0.5 * (left.var() + right.var()))
    d = abs(right.mean() - left.mean()) / pooled if pooled > 0 else math.inf
    lo, hi = np.searchsorted(x, left.mean()), np.searchsorted(x, right.mean(), side="right")
    seg = x[max(lo - 1, 0):hi]
    gaps = np.diff(seg)
    j = int(np.argmax(gaps))
    if d < min_separation or gaps[j] < max(min_gap * pooled, min_log_gap):
        return Threshold(keep_all, "unimodal", d)
    return Threshold(float(0.5 * (seg[j] + seg[j + 1])), "otsu+widest-gap", d)


def propagate_masks(arch: Architecture, group_masks: dict[str, np.ndarray]
                    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Consistent ``(in_mask, out_mask)`` per weighted layer from per-group keep masks.

    Groups are input units of linear layers and output channels of convolutions.  A unit
    goes from a layer's outputs when the next layer no longer reads it, and from a layer's
    inputs when the previous layer no longer produces it; a flatten maps channel ``c`` to the
    ``c·P … c·P + P − 1`` inputs of the next linear layer (``P`` spatial positions).
    """
    specs = arch.weighted_layers()
    ins = [np.ones(s.in_size, bool) for s in specs]
    outs = [np.ones(s.out_size, bool) for s in specs]
    for i, s in enumerate(specs):
        g = np.asarray(group_masks[s.name], bool)
        if s.kind == "linear":
            ins[i] &= g
        else:
            outs[i] &= g
    for _ in range(2):  # forward then backward; a second sweep settles chains of removals
        for i in range(1, len(specs)):
            ins[i] &= np.repeat(outs[i - 1], specs[i].in_size // specs[i - 1].out_size)
        for i in range(len(specs) - 1, 0, -1):
            per = specs[i].in_size // specs[i - 1].out_size
            outs[i - 1] &= ins[i].reshape(specs[i - 1].out_size, per).any(axis=1)
    return {s.name: (ins[i], outs[i]) for i, s in enumerate(specs)}


def groups_of_weights(kind: str, weight_kept: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Group keep mask implied by an unstructured weight mask, exactly: a linear layer's input
    unit goes when its whole column is pruned; a conv filter only when all its weights are
    pruned *and* its bias is zero (otherwise it still outputs a constant)."""
    if kind == "linear":
        return weight_kept.any(axis=0)
    return weight_kept.reshape(weight_kept.shape[0], -1).any(axis=1) | (bias != 0)


def weight_masks(posts: dict[str, LayerPosterior], thresholds: dict[str, float]
                 ) -> dict[str, np.ndarray]:
    """Unstructured keep masks (weight shape) of per-weight posteriors: score ``≤`` threshold."""
    return {n: p.score <= thresholds[n] for n, p in posts.items() if p.per_weight}


def structured_masks(arch: Architecture, posts: dict[str, LayerPosterior],
                     thresholds: dict[str, float]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Keep the groups whose prune score is ``≤`` their layer's threshold, then propagate.

    For a per-weight posterior the groups are those that keep a weight
    (:func:`groups_of_weights`)."""
    w_masks = weight_masks(posts, thresholds)
    groups = {n: (groups_of_weights(p.kind, w_masks[n], p.b_mean) if p.per_weight
                  else p.score <= thresholds[n]) for n, p in posts.items()}
    return propagate_masks(arch, groups)


def kept_weight_mask(kind: str, shape: tuple[int, ...], in_mask, out_mask) -> np.ndarray:
    """Boolean mask of the weights that survive structured pruning, of the weight's shape."""
    m = np.outer(out_mask, in_mask)
    return np.broadcast_to(m[:, :, None, None], shape) if kind == "conv" else m


MAX_SIGNIFICAND_BITS = 23  # float32


def significand_bits(spread: float) -> int:
    """Fewest significand bits ``t`` whose unit round-off ``2^−t`` lies below ``spread``."""
    if not spread > 0:
        return MAX_SIGNIFICAND_BITS
    t = math.floor(-math.log2(spread)) + 1
    return int(min(max(t, 1), MAX_SIGNIFICAND_BITS))


def exponent_bits(weights: np.ndarray, t: int) -> int:
    """Bits to index the binary exponents ``⌊log2|w|⌋`` of the weights that remain nonzero at
    significand precision ``t`` (``|w| ≥ 2^−t``); at least 1.  Defined for any magnitude."""
    w = np.abs(np.asarray(weights, dtype=np.float64).ravel())
    w = w[w >= 2.0 ** -t]
    if w.size == 0:
        return 1
    e = np.floor(np.log2(w))
    span = int(e.max() - e.min()) + 1
    return max(1, math.ceil(math.log2(span))) if span > 1 else 1


def bit_precision(w_mean_kept: np.ndarray, w_var_kept: np.ndarray) -> dict:
    """Significand bits from the layer's mean posterior variance (the paper's rule), exponent
    bits from the range of binary exponents, one sign bit."""
    mean_var = float(np.mean(w_var_kept)) if w_var_kept.size else math.nan
    t = significand_bits(mean_var)
    e = exponent_bits(w_mean_kept, t)
    return {"mean_var_kept": mean_var, "significand_bits": t, "exponent_bits": e,
            "bits": 1 + e + t}
