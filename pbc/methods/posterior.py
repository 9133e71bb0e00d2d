"""The shared body of the variational-posterior methods (BC-GNJ, BC-GHS, Sparse VD).

Each trains a :class:`pbc.bayes.net.BayesNet` under its prior by maximising the ELBO;
the analyse stage chooses a threshold on each layer's prune scores and writes it to
``analysis.json``; the compress stage keeps the groups (or weights) at or below it and rounds
each layer's kept weights to fixed point at the layer's posterior bit precision.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pbc.bayes.net import BayesNet
from pbc.bayes.priors import GroupPrior
from pbc.bayes.summaries import layer_moments
from pbc.compression.masks import structured_masks, surviving_weights, weight_masks
from pbc.compression.plan import CompressionPlan
from pbc.compression.quantise import Quantised, posterior_fixed_point
from pbc.config import SettingError, saved_setting
from pbc.defaults import CLIP_VAR, GROUP_SCRATCH_LR, GROUP_SCRATCH_WEIGHT_VAR
from pbc.methods.base import ELBOMethod
from pbc.nets import plain_network


def largest_layer_bound(net, config) -> dict[str, float]:
    """A bound on ``Var[w̃]`` on the layer with the most weights (the first of equals), none on
    the others: where Louizos et al.'s code puts its ``clip_var`` (LeNet-300-100's fc1).

    The bound keeps the KL term ½(σ² − 1 − log σ²) from drowning the weights in noise where
    ``w̃`` carries the weight's scale.  From a plain net (``--init-from``) it is theirs,
    :data:`~pbc.defaults.CLIP_VAR` (0.04); from scratch
    :data:`~pbc.defaults.GROUP_SCRATCH_WEIGHT_VAR` (0.01): at the scratch rate
    (:meth:`PosteriorMethod.default_lr`) the log-variances reach the bound within the first
    epochs and stay there, so the bound sets the weights' noise for the whole run."""
    largest = max(net.bayes_layers(), key=lambda layer: layer.w_loc.numel())
    return {largest.site: CLIP_VAR if config.init_from else GROUP_SCRATCH_WEIGHT_VAR}


class PosteriorMethod(ELBOMethod):
    """A :class:`~pbc.bayes.net.BayesNet` under :meth:`prior`; see the module docstring.

    Subclasses set :attr:`prior_family`, whose keyword arguments :meth:`prior_options` reads
    from the config; :func:`pbc.bayes.bayesianize.bayesianize` builds the same prior from
    keyword arguments given directly.
    """

    has_posterior = True
    score_name = "log_alpha"
    #: the prior family (a :class:`~pbc.bayes.priors.GroupPrior` class)
    prior_family: type[GroupPrior] = GroupPrior

    def prior_options(self, config) -> dict:
        """The keyword arguments of :attr:`prior_family` that ``config`` sets."""
        return {}

    @property
    def has_groups(self) -> bool:
        return self.prior_family.groups

    def prior(self, config) -> GroupPrior:
        """The prior that this method trains under: ``prior_family(**prior_options(config))``."""
        return self.prior_family(**self.prior_options(config))

    def default_weight_var(self, config, net) -> float | dict[str, float] | None:
        """The bound on ``Var[w̃]`` a run that names none trains with (``None``: no bound)."""
        return None

    def default_lr(self, config):
        """:data:`~pbc.defaults.GROUP_SCRATCH_LR` for group posteriors trained from scratch:
        every log-variance starts at −9 and Adam moves a parameter by about the rate per step,
        so at 10⁻³ a log-variance climbs at most ~0.5 per epoch of 430 steps, and the weights'
        noise and the groups' dropout rates lag far behind what the ELBO asks for.  From a
        plain net (``--init-from``), and for Sparse VD, Adam's usual 10⁻³."""
        if self.has_groups and not config.init_from:
            return GROUP_SCRATCH_LR
        return super().default_lr(config)

    def settle(self, config, net, saved=None):
        """A run without ``--max-weight-var`` takes :meth:`default_weight_var` when it starts
        and the bound it started with when it resumes (and the rate as :meth:`Method.settle`)."""
        config = super().settle(config, net, saved)
        if config.max_weight_var is not None:
            return config
        bound = (self.default_weight_var(config, net) if saved is None else
                 saved_setting(saved, "max_weight_var", self.earlier_settings(config)))
        return dataclasses.replace(config, max_weight_var=bound)

    def build(self, config, arch):
        net = BayesNet(arch, self.prior(config), pretrained=bool(config.init_from))
        bound = config.max_weight_var
        if isinstance(bound, dict):
            sites = [layer.site for layer in net.bayes_layers()]
            unknown = set(bound) - set(sites)
            if unknown:
                raise SettingError(f"--max-weight-var names unknown layers {sorted(unknown)}; "
                                   f"layers are {sites}")
        return net

    def load_point_estimate(self, net, state):
        net.load_point_estimate(state)

    def param_groups(self, net, config):
        """The group scales' log-variances learn at ``config.scale_var_lr`` times the rate of
        the rest (default 1, as in Louizos et al.'s code).  They start at −9 and Adam moves a
        parameter by about the learning rate per step, so at 10⁻³ a dropout rate climbs at
        most ~0.5 per epoch of 430 steps; a larger multiplier lets groups leave sooner under
        a decaying schedule."""
        fast = net.scale_log_variances()
        ids = {id(p) for p in fast}
        rest = [p for p in net.parameters() if id(p) not in ids]
        return [{"params": rest, "lr_scale": 1.0},
                {"params": fast, "lr_scale": config.scale_var_lr}]

    def after_step(self, net, config):
        net.clip_variances(config.max_weight_var)

    def plain_state(self, net):
        return net.posterior_mean_state_dict()

    def compression_plan(self, run, config, arch, net) -> CompressionPlan:
        """The analyse stage's thresholds prune groups (or single weights); each layer is
        rounded to fixed point at the significand bits the analyse stage chose."""
        posts = {layer.site: layer_moments(layer) for layer in net.bayes_layers()}
        thresholds = run.thresholds(list(posts))
        significand = run.significand_bits()
        masks = structured_masks(arch, posts, thresholds)
        w_keep = weight_masks(posts, thresholds)
        keeps = surviving_weights(posts, masks, w_keep)
        full = plain_network(arch, net.posterior_mean_state_dict())

        def quantise(name: str, w: np.ndarray) -> Quantised:
            post, keep = posts[name], keeps[name]
            return posterior_fixed_point(w, post.w_mean[keep], post.w_var[keep],
                                         significand.get(name))

        return CompressionPlan(full.state_dict(), masks, quantise, w_keep, dict(thresholds))
