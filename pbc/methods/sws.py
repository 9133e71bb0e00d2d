"""Soft weight-sharing (Ullrich, Meeds & Welling 2017) as a baseline: ``pbc train --prior sws``.

Generative model (a Pyro model; every weight is a point estimate, i.e. a ``Delta`` guide)::

    λ_j ~ Gamma(α_j, rate β_j)                  site "sws.precision"  (J,)
    w_i ~ Σ_j π_j N(μ_j, 1/λ_j)                 site "<layer>.w"      (weight shape)
    y | x, w ~ Categorical(f(x; w, b))          site "obs"

with ``J = 17`` components, component 0 fixed at ``μ_0 = 0`` with fixed ``π_0 = 0.99`` (the
pruning component), and ``μ_1…μ_16``, ``log λ``, and the logits of ``π_1…π_16`` (which share
``1 − π_0``) learned with the weights (empirical Bayes).  The guide is
``Delta(w) · Delta(λ)``, so :class:`pbc.bayes.elbo.MeanFieldELBO`'s "KL" of each site is the
complexity cost ``−log p(w)`` (resp. ``−log p(λ)``) at the point estimate (Pyro's
``KL(Delta ‖ ·)``).  As in the paper, ``L = −log p(T | X, w) − τ·log p(w, λ)``: the
complexity is weighted by ``τ`` against the full-data log-likelihood (``--sws-tau``,
default 0.005, the paper's value; the authors' tutorial uses 0.003 with the mean
cross-entropy and ``τ/N``, the same thing).

Hyperpriors as in the authors' tutorial: ``Gamma(5000, rate 2)`` on the zero component's
precision and ``Gamma(250, rate 0.1)`` on the others'.  Initialisation: equal non-zero mixing
proportions (tutorial); means evenly spaced over the range of the pretrained weights (the
tutorial uses a fixed ``[−0.6, 0.6]``); precisions at their hyperprior's mode, ``σ ≈ 0.02``
(the tutorial starts at ``σ = 0.25``, at which, with ``π_0 = 0.99``, every weight is most
responsible to the zero component until the hyperprior has pulled the precisions in).
Learning rates relative to the weights' (:data:`LR_SCALES`) follow the tutorial's Adam
settings (weights 5e-4, means 1e-4, log-precisions and mixing logits 3e-3).  Training starts
from a plain network (``--init-from``).

The hyperpriors bound the precisions: at the optimum
``λ_j = (n_j/2 + α_j − 1)/(Σ_j (w − μ_j)²/2 + β_j)`` for the ``n_j`` weights component ``j`` holds,
so however far those weights collapse, ``λ_j < (n_j/2 + α_j − 1)/β_j``.  The rate ``β_j``
therefore sets how narrow a component can get, and so how far its weights stay spread
around the mean that quantisation sends them to.  ``--sws-zero-rate``
(:class:`MixturePrior`'s ``zero_rate``) lowers ``β_0`` so that the zero spike keeps
narrowing; ``--sws-rate`` lowers ``β_j`` for ``j > 0``.  With both lowered, a larger ``τ``
draws in the weights that sit between the spike and its neighbours.

Post-processing (:func:`merge_components`, :func:`quantise_to_components`): components whose
symmetric KL divergence is below ``merge_kl`` are merged (moment matching, the zero
component absorbing its partners), then each weight takes the mean of its most responsible
component, exactly 0 for the zero component.  In a layer where the zero component is the
most responsible for every weight (a run too short for the mixture to separate), each weight
takes its most likely component instead (:func:`layer_components`), so a short run
compresses to a poor network rather than a constant one.
"""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.func import functional_call

from pbc.bayes.mixture import GAMMA_OTHER, GAMMA_ZERO, Components, MixturePrior
from pbc.compression.plan import unstructured_plan
from pbc.compression.quantise import Quantised
from pbc.methods.base import ELBOMethod
from pbc.nets import Architecture, build_network

MERGE_KL = 0.1
LR_SCALES = {"means": 0.2, "log_precision": 6.0, "mix_logits": 6.0}


class SoftSharingNet(nn.Module):
    """A plain network of ``arch`` under the mixture prior, with ``model``/``guide``.

    ``zero_rate`` and ``rate`` are the rates of the precision hyperpriors of the zero
    component and of the others (see the module docstring).
    """

    def __init__(self, arch: Architecture, zero_rate: float = GAMMA_ZERO[1],
                 rate: float = GAMMA_OTHER[1]):
        super().__init__()
        self.arch = arch
        self.body = build_network(arch)
        self.prior = MixturePrior(zero_rate=zero_rate, rate=rate)
        self.weighted = [s.name for s in arch.weighted_layers()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def param_groups(self) -> list[dict]:
        """Optimiser groups with an ``lr_scale`` each (weights 1, mixture :data:`LR_SCALES`)."""
        groups = [{"params": list(self.body.parameters()), "lr_scale": 1.0}]
        groups += [{"params": [getattr(self.prior, name)], "lr_scale": scale}
                   for name, scale in LR_SCALES.items()]
        return groups

    def model(self, x, y=None, subsample=None, size=None):
        lam = pyro.sample("sws.precision", self.prior.hyperprior())
        weights = {}
        for name in self.weighted:
            shape = self.body.get_submodule(name).weight.shape
            weights[f"{name}.weight"] = pyro.sample(
                f"{name}.w", self.prior.distribution(shape, lam))
        logits = functional_call(self.body, weights, (x,), strict=False)
        n = x.shape[0]
        # plate dim -1: examples of the minibatch, a subsample of `size` training examples
        with pyro.plate("data", size or n, subsample=subsample if subsample is not None
                        else torch.arange(n, device=x.device)):
            return pyro.sample("obs", dist.Categorical(logits=logits), obs=y)

    def guide(self, x=None, y=None, subsample=None, size=None):
        pyro.sample("sws.precision", dist.Delta(self.prior.precision()).to_event(1))
        for name in self.weighted:
            w = self.body.get_submodule(name).weight
            pyro.sample(f"{name}.w", dist.Delta(w, event_dim=w.dim()))

    @torch.no_grad()
    def posterior_mean_state_dict(self) -> dict[str, torch.Tensor]:
        """The point estimates (unquantised)."""
        return {k: v.clone() for k, v in self.body.state_dict().items()}

    @torch.no_grad()
    def load_point_estimate(self, state: dict[str, torch.Tensor]) -> None:
        """Load a plain network's weights and spread the means over their range."""
        self.body.load_state_dict(state)
        w = torch.cat([state[f"{n}.weight"].flatten() for n in self.weighted])
        self.prior.means.copy_(torch.linspace(w.min().item(), w.max().item(),
                                              self.prior.means.numel()))


def _sym_kl(m1, v1, m2, v2) -> float:
    """Symmetric KL between ``N(m1, v1)`` and ``N(m2, v2)``."""
    d = (m1 - m2) ** 2
    return 0.5 * ((v1 + d) / v2 + (v2 + d) / v1) - 1.0


def merge_components(c: Components, merge_kl: float = MERGE_KL) -> Components:
    """Merge pairs of components closer than ``merge_kl`` (symmetric KL), closest first.

    A merged pair keeps the total ``π`` and the moment-matched mean and variance; a pair that
    includes the zero component stays the zero component (mean exactly 0).
    """
    pi, mean, var = (list(map(float, a)) for a in (c.pi, c.mean, c.var))
    while len(pi) > 1:
        best, pair = math.inf, None
        for i in range(len(pi)):
            for j in range(i + 1, len(pi)):
                k = _sym_kl(mean[i], var[i], mean[j], var[j])
                if k < best:
                    best, pair = k, (i, j)
        if best >= merge_kl:
            break
        i, j = pair
        p = pi[i] + pi[j]
        m = (pi[i] * mean[i] + pi[j] * mean[j]) / p
        v = (pi[i] * (var[i] + mean[i] ** 2) + pi[j] * (var[j] + mean[j] ** 2)) / p - m * m
        if i == 0:
            m = 0.0
        pi[i], mean[i], var[i] = p, m, v
        del pi[j], mean[j], var[j]
    return Components(np.array(pi), np.array(mean), np.array(var))


def responsibilities_argmax(w: np.ndarray, c: Components) -> np.ndarray:
    """Index of the most responsible component for each weight (shape of ``w``)."""
    x = w.astype(np.float64).ravel()[:, None]
    log_r = (np.log(c.pi) - 0.5 * np.log(2 * np.pi * c.var)
             - 0.5 * (x - c.mean) ** 2 / c.var)
    return log_r.argmax(axis=1).reshape(w.shape)


def layer_components(w: np.ndarray, c: Components) -> tuple[Components, bool]:
    """The mixture that assigns a layer's weights ``w``: ``c`` itself, unless its zero
    component is the most responsible for every weight of the layer — a mixture trained too
    briefly to separate, whose fixed ``π_0 = 0.99`` outweighs the unlearned rest, which would
    prune the layer and so the whole network to a constant.  Then ``c`` with equal mixing
    proportions (each weight to its component by likelihood alone): a poor network, not none.
    Returns the mixture and whether it is the equal-proportions one."""
    if responsibilities_argmax(w, c).any():
        return c, False
    return Components(np.full_like(c.pi, 1.0 / c.pi.size), c.mean, c.var), True


def quantise_to_components(w: np.ndarray, c: Components) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, codebook)`` with ``codebook[codes]`` the quantised weights: each weight at its
    most responsible component's mean, 0 (code 0) for the zero component.  The codebook
    keeps only the non-zero components some weight uses, in order of their means."""
    resp = responsibilities_argmax(w, c)
    used = np.unique(resp[resp != 0])
    used = used[np.argsort(c.mean[used])]
    codebook = np.concatenate([[0.0], c.mean[used]]).astype(np.float32)
    lookup = np.zeros(c.pi.size, np.int64)
    lookup[used] = np.arange(1, used.size + 1)
    return lookup[resp], codebook


class SoftWeightSharing(ELBOMethod):
    """``--prior sws``: retrain a plain network under the mixture prior (see module doc)."""

    name = "sws"
    needs_init_from = True

    def build(self, config, arch):
        return SoftSharingNet(arch, zero_rate=config.sws_zero_rate, rate=config.sws_rate)

    def load_point_estimate(self, net, state):
        net.load_point_estimate(state)

    def param_groups(self, net, config):
        return net.param_groups()

    def complexity_scale(self, config):
        return config.sws_tau

    def plain_state(self, net):
        return net.posterior_mean_state_dict()

    def compression_plan(self, run, config, arch, net):
        """Zero-component weights pruned, the rest shared at their component's mean."""
        state = {k: v.cpu() for k, v in net.posterior_mean_state_dict().items()}
        comps = merge_components(net.prior.components())
        index_bits = max(1, math.ceil(math.log2(comps.pi.size)))
        per_layer = {s.name: layer_components(state[f"{s.name}.weight"].numpy(), comps)
                     for s in arch.weighted_layers()}

        def quantise(name: str, w: np.ndarray) -> Quantised:
            mixture, equal = per_layer[name]
            codes, codebook = quantise_to_components(w, mixture)
            return Quantised(codes, codebook, {
                "bits": index_bits, "components_merged": int(comps.pi.size),
                "assigned_by": "likelihood (equal mixing proportions: the mixture had not "
                               "separated)" if equal else "responsibility"})

        keep = {name: responsibilities_argmax(state[f"{name}.weight"].numpy(), mixture) != 0
                for name, (mixture, _) in per_layer.items()}
        return unstructured_plan(arch, state, keep, quantise)
