"""The loss and evaluation pieces that a training loop is built from.

:class:`MeanFieldELBO` is the negative ELBO of a mean-field guide as an ``nn.Module``::

    ELBO = Σ_obs scale · log p(y | x, θ)  −  β · Σ_latent KL(q ‖ p)

with every KL taken in closed form through ``torch.distributions.kl_divergence`` (the
registrations in ``pbc.priors``).  Unlike Pyro's ``TraceMeanField_ELBO`` it never evaluates
the log-densities of latent sites it does not need, and it refuses, rather than silently
replacing by Monte Carlo, a latent site without a closed form — unless asked
(``mc_fallback=True``).  With ``local_reparam=True`` (default) both traces run under
:class:`pbc.handlers.LocalReparameterization`, so no weight is sampled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from pyro import poutine
from torch import nn
from torch.distributions import kl_divergence

from pbc.handlers import LocalReparameterization

LN2 = math.log(2.0)


@dataclass
class ELBOTerms:
    """One minibatch estimate, in nats: ``loss = −(expected_loglik − kl_weight · kl)``."""

    loss: torch.Tensor
    expected_loglik: torch.Tensor
    kl: torch.Tensor


def _is_latent(site) -> bool:
    return (site["type"] == "sample" and not site["is_observed"]
            and not site["infer"].get("_deterministic"))


def _is_observation(site) -> bool:
    return (site["type"] == "sample" and site["is_observed"]
            and not site["infer"].get("_deterministic"))


class MeanFieldELBO(nn.Module):
    """Negative ELBO with analytic KL terms (see module docstring).

    Parameters
    ----------
    local_reparam : bool
        Run model and guide under :class:`~pbc.handlers.LocalReparameterization`.
    mc_fallback : bool
        For a latent site without a registered closed form use ``log q(v) − log p(v)`` at the
        guide's sample ``v``; otherwise raise ``NotImplementedError`` naming the site.
    """

    def __init__(self, local_reparam: bool = True, mc_fallback: bool = False):
        super().__init__()
        self.local_reparam = local_reparam
        self.mc_fallback = mc_fallback

    def traces(self, model, guide, *args, **kwargs):
        """Guide trace, then the model's trace replayed against it."""
        guide_tr = poutine.trace(guide).get_trace(*args, **kwargs)
        model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(*args, **kwargs)
        return model_tr, guide_tr

    def forward(self, model, guide, *args, kl_weight: float = 1.0, **kwargs) -> ELBOTerms:
        if self.local_reparam:
            with LocalReparameterization():
                model_tr, guide_tr = self.traces(model, guide, *args, **kwargs)
        else:
            model_tr, guide_tr = self.traces(model, guide, *args, **kwargs)
        loglik = 0.0
        for site in model_tr.nodes.values():
            if _is_observation(site):
                loglik = loglik + site["scale"] * site["fn"].log_prob(site["value"]).sum()
        kl = sum(self._site_kls(model_tr, guide_tr).values(), torch.tensor(0.0))
        return ELBOTerms(-(loglik - kl_weight * kl), loglik, kl)

    def _site_kls(self, model_tr, guide_tr) -> dict[str, torch.Tensor]:
        return {name: q_site["scale"] * self._site_kl(name, q_site, model_tr.nodes[name])
                for name, q_site in guide_tr.nodes.items() if _is_latent(q_site)}

    @torch.no_grad()
    def kl_by_site(self, model, guide, *args, **kwargs) -> dict[str, float]:
        """Each latent site's KL term in nats (what :meth:`forward` sums)."""
        with LocalReparameterization():
            model_tr, guide_tr = self.traces(model, guide, *args, **kwargs)
        return {name: float(v) for name, v in self._site_kls(model_tr, guide_tr).items()}

    def _site_kl(self, name, q_site, p_site) -> torch.Tensor:
        try:
            return kl_divergence(q_site["fn"], p_site["fn"]).sum()
        except NotImplementedError:
            if not self.mc_fallback:
                raise NotImplementedError(
                    f"site {name!r}: no closed-form KL({type(q_site['fn']).__name__} ‖ "
                    f"{type(p_site['fn']).__name__}); register one or pass mc_fallback=True"
                ) from None
            v = q_site["value"]
            return (q_site["fn"].log_prob(v) - p_site["fn"].log_prob(v)).sum()


@torch.no_grad()
def classification_error(net: nn.Module, x: torch.Tensor, y: torch.Tensor,
                         batch_size: int = 1000, device: str | torch.device = "cpu") -> float:
    """Fraction of ``x: (N, ...)`` that the deterministic ``net`` misclassifies."""
    was_training = net.training
    net.eval()
    wrong = 0
    for i in range(0, x.shape[0], batch_size):
        xb = x[i:i + batch_size].to(device, non_blocking=True)
        yb = y[i:i + batch_size].to(device, non_blocking=True)
        wrong += (net(xb).argmax(-1) != yb).sum().item()
    net.train(was_training)
    return wrong / max(1, x.shape[0])
