"""BC-GHS: group horseshoe scales (Louizos, Ullrich & Welling 2017, eqs. 10–13).

``z_g = s·z̃_g``, ``s ~ C⁺(0, τ0)`` (``--tau0``), ``z̃_g ~ C⁺(0, 1)``, log-normal ``q`` for every
half-Cauchy factor.  A group is pruned when the dropout rate of its log-normal scale,
``log α_g = log(e^{Var[log z_g]} − 1)``, is above its layer's threshold.

Two starting points: from scratch the global scale starts at 1 (``w̃ = w``) and the weights'
variance is bounded in the layer with the most weights
(:func:`pbc.methods.posterior.largest_layer_bound`); from
a pretrained net (``--init-from``) it starts at the weight scale ``1/√fan_in``, so that
``w̃ = O(1)`` against its ``N(0, 1)`` prior, and there is no bound: a group prunes when ``w̃``
returns to its prior and ``z`` shrinks, which a bound far below 1 forbids.
"""

from __future__ import annotations

from pbc.bayes.priors import GroupHorseshoe
from pbc.defaults import CLIP_VAR
from pbc.methods.posterior import PosteriorMethod, largest_layer_bound


class GHS(PosteriorMethod):
    name = "ghs"
    score_label = "log α = log(e^Var[log z] − 1)"

    prior_family = GroupHorseshoe

    def prior_options(self, config):
        return {"tau0": config.tau0}

    def default_weight_var(self, config, net):
        return {} if config.init_from else largest_layer_bound(net, config)

    def earlier_settings(self, config):
        return {"max_weight_var": {} if config.init_from else CLIP_VAR}   # every layer
