"""Sparse variational dropout (Molchanov, Ashukha & Vetrov 2017) as a baseline.

``p(w_ij) ∝ 1/|w_ij|`` per weight, ``q(w) = N(θ, σ²)`` in the additive parameterisation,
``log α`` clipped to ``[−8, 8]`` inside the KL.  A weight is pruned when ``log α ≥ 3``
(every layer, the paper's rule); the layers keep no group scales, so the compress stage
removes a unit only when all its weights go.
"""

from __future__ import annotations

from pbc.bayes.priors import SVD_LOG_ALPHA_THRESHOLD, SparseVD
from pbc.methods.posterior import PosteriorMethod


class SVD(PosteriorMethod):
    name = "svd"
    score_name = "log_alpha (per weight)"
    score_label = "log α per weight"

    prior_family = SparseVD

    def fixed_threshold(self):
        return SVD_LOG_ALPHA_THRESHOLD, "sparse-vd"
