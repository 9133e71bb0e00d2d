"""BC-GNJ: group normal-Jeffreys scales (Louizos, Ullrich & Welling 2017, eq. 8).

``p(z_g) ∝ 1/|z_g|``, ``w | z ~ N(0, z²)``; ``q(z_g) = N(μ_g, σ_g²)``.  A group is pruned when
its dropout rate ``log α_g = log σ_g² − log μ_g²`` is above its layer's threshold.  The
weights' variance is bounded by Louizos et al.'s ``clip_var`` in the layer with the most
weights unless ``--max-weight-var`` says otherwise.
"""

from __future__ import annotations

from pbc.bayes.priors import GroupNormalJeffreys
from pbc.methods.posterior import CLIP_VAR, PosteriorMethod, largest_layer_bound


class GNJ(PosteriorMethod):
    name = "gnj"
    score_label = "log α"

    prior_family = GroupNormalJeffreys

    def default_weight_var(self, config, net):
        return largest_layer_bound(net)

    def earlier_settings(self, config):
        return {"max_weight_var": CLIP_VAR}   # every layer
