"""Posterior summaries of one Bayesian layer as numpy arrays (torch; no ArviZ, no xarray).

* :func:`layer_moments` — per-group and per-weight posterior moments of one layer:
  ``E[w] = E[z]·μ`` and ``Var[w] = Var[z]·(μ² + σ²) + E[z]²·σ²`` (paper eq. 9);
* :func:`prune_score` — what a pruning threshold acts on: the dropout rate
  ``log α = log Var[z]/E[z]²`` of each group's scale (GNJ: normal ``q(z)``; GHS: log-normal
  ``q(z)``, ``log(e^{σ²} − 1)``), or of each weight (Sparse VD); prune when above the
  threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pbc.bayes.kl import log_alpha_of
from pbc.bayes.priors import NormalScaleGuide


@dataclass
class LayerPosterior:
    """Posterior summaries of one Bayesian layer (numpy arrays on the CPU).

    A per-weight posterior (Sparse VD, ``per_weight=True``) has no ``z``: its ``z_*``,
    ``e_log_z`` and ``log_mode`` are ``None`` and ``log_alpha`` has the weight's shape.
    ``removed`` marks the groups the layer has lost for good
    (:meth:`pbc.bayes.layers.BayesLayer.remove_groups`): pruned at any threshold, their
    weights' moments 0.
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
    removed: np.ndarray | None = None   # (G,) bool; None: every group is there

    @property
    def score(self) -> np.ndarray:
        return prune_score(self)

    @property
    def open_scores(self) -> np.ndarray:
        """The scores of the groups (or weights) a threshold still decides on: all but the
        removed groups', flattened."""
        score = self.score
        return score.ravel() if self.removed is None else score[~self.removed]

    def kept_at(self, threshold: float) -> np.ndarray:
        """The groups (weights, per-weight) a threshold keeps: score ``≤ threshold`` and not
        removed."""
        keep = self.score <= threshold
        return keep if self.removed is None else keep & ~self.removed


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
    kept = layer.group_view(layer.kept_groups)
    zm, zv = layer.group_view(z_mean), layer.group_view(z_var)
    w_mean = kept * zm * w_loc
    w_var_total = kept * (zv * (w_loc.pow(2) + w_var) + zm.pow(2) * w_var)
    removed = layer.kept_groups == 0
    gnj = isinstance(q, NormalScaleGuide)
    log_mode = z_mean.abs().log() if gnj else e_log - v_log
    return LayerPosterior(
        name=layer.site, kind=kind,
        z_mean=np_(z_mean), z_var=np_(z_var), e_log_z=np_(e_log), log_mode=np_(log_mode),
        log_alpha=np_(q.log_alpha()),
        w_mean=np_(w_mean), w_var=np_(w_var_total), b_mean=np_(b_mean),
        removed=removed.cpu().numpy() if removed.any() else None)


def prune_score(post: LayerPosterior) -> np.ndarray:
    """``log α`` of the groups' scales (GNJ, GHS) or of the weights (SVD): above the threshold
    goes.  For GHS a group the data does not need keeps a scale posterior about as wide as
    its prior (large ``log α``), whatever its ``E[log z]``; so the score is ``log α``, not
    ``−E[log z]``."""
    return post.log_alpha
