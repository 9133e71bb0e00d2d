"""BC-GNJ: group normal-Jeffreys scales (Louizos, Ullrich & Welling 2017, eq. 8).

``p(z_g) ∝ 1/|z_g|``, ``w | z ~ N(0, z²)``; ``q(z_g) = N(μ_g, σ_g²)``.  A group is pruned when
its dropout rate ``log α_g = log σ_g² − log μ_g²`` is above its layer's threshold.  The
weights' variance is bounded in the layer with the most weights (as Louizos et al.'s
``clip_var``; :func:`pbc.methods.posterior.largest_layer_bound`) unless
``--max-weight-var`` says otherwise.
"""

from __future__ import annotations

from pbc.bayes.priors import GroupNormalJeffreys
from pbc.defaults import CLIP_VAR
from pbc.methods.posterior import PosteriorMethod, largest_layer_bound


class GNJ(PosteriorMethod):
    name = "gnj"
    score_label = "log α"

    prior_family = GroupNormalJeffreys

    def default_weight_var(self, config, net):
        return largest_layer_bound(net, config)

    def earlier_settings(self, config):
        return {"max_weight_var": CLIP_VAR}   # every layer
