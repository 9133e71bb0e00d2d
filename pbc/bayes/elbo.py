"""The mean-field ELBO with closed-form KL terms, as a :class:`pyro.infer.ELBO`.

For a model ``p(y | x, θ) p(θ)`` and a mean-field guide ``q(θ)``::

    ELBO = Σ_obs scale · log p(y | x, θ)  −  Σ_latent scale · KL(q ‖ p)

with every KL taken in closed form through ``torch.distributions.kl_divergence`` (the
registrations in :mod:`pbc.bayes.kl`, and Pyro's own, e.g. a ``Delta`` guide's
``−log p(v)``).  Scales and masks come from Pyro's handlers as usual: an observation's scale
(a subsampled ``pyro.plate``, ``poutine.scale`` around the model) multiplies its
log-likelihood; a latent site's KL is multiplied by the *guide* site's scale and mask, as in
Pyro's ``TraceMeanField_ELBO`` — so ``poutine.scale(guide, scale=β)`` weighs the complexity
term (KL annealing, soft weight-sharing's τ) and ``poutine.mask`` removes terms.

Unlike ``TraceMeanField_ELBO`` it never evaluates the log-densities of latent sites it does
not need (which lets the model hold improper priors), and it refuses, rather than silently
replacing by Monte Carlo, a latent site without a closed form — unless asked
(``mc_fallback=True``).  With ``local_reparam=True`` (default) both traces run under
:class:`pbc.bayes.handlers.LocalReparameterization`, so no weight is sampled.

It works with :class:`pyro.infer.SVI` (``loss``, ``loss_and_grads``; ``SVI`` optimises the
parameters of the ``param`` sites it sees) and with a torch optimiser over module-local
parameters (``differentiable_loss``, or ``elbo(model, guide)`` as an ``nn.Module``);
:meth:`MeanFieldELBO.terms` returns the two parts separately.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from pyro import poutine
from pyro.infer import ELBO
from pyro.infer.util import is_identically_zero, torch_item
from torch.distributions import kl_divergence

from pbc.bayes.handlers import LocalReparameterization

LN2 = math.log(2.0)


@dataclass
class ELBOTerms:
    """One estimate, in nats: ``loss = −(expected_loglik − kl)`` (``kl`` already scaled)."""

    loss: torch.Tensor
    expected_loglik: torch.Tensor
    kl: torch.Tensor


def _is_latent(site) -> bool:
    return (site["type"] == "sample" and not site["is_observed"]
            and not site["infer"].get("_deterministic"))


def _is_observation(site) -> bool:
    return (site["type"] == "sample" and site["is_observed"]
            and not site["infer"].get("_deterministic"))


def _scaled_sum(value: torch.Tensor, site) -> torch.Tensor:
    """``Σ scale · value`` over the site's batch shape, leaving out where its mask is False."""
    mask = site["mask"]
    if mask is False:
        return value.new_zeros(())
    if mask is not None and mask is not True:
        value = torch.where(mask, value, value.new_zeros(()))
    scale = site["scale"]
    if isinstance(scale, torch.Tensor) and scale.numel() > 1:
        return (value * scale).sum()
    return scale * value.sum()


class MeanFieldELBO(ELBO):
    """Negative ELBO with analytic KL terms (see module docstring).

    Parameters
    ----------
    num_particles : int
        Draws averaged per estimate (the KL terms are exact; only the log-likelihood is
        estimated).
    local_reparam : bool
        Run model and guide under :class:`~pbc.bayes.handlers.LocalReparameterization`.
    mc_fallback : bool
        For a latent site without a registered closed form use ``log q(v) − log p(v)`` at the
        guide's sample ``v``; otherwise raise ``NotImplementedError`` naming the site.
    """

    def __init__(self, num_particles: int = 1, local_reparam: bool = True,
                 mc_fallback: bool = False):
        super().__init__(num_particles=num_particles)
        self.local_reparam = local_reparam
        self.mc_fallback = mc_fallback

    def _get_trace(self, model, guide, args, kwargs):
        """Guide trace, then the model's trace replayed against it."""
        guide_tr = poutine.trace(guide).get_trace(*args, **kwargs)
        model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(*args, **kwargs)
        return model_tr, guide_tr

    def _traces(self, model, guide, args, kwargs):
        if not self.local_reparam:
            return self._get_trace(model, guide, args, kwargs)
        with LocalReparameterization():
            return self._get_trace(model, guide, args, kwargs)

    def _particle_terms(self, model_tr, guide_tr) -> ELBOTerms:
        loglik = 0.0
        for site in model_tr.nodes.values():
            if _is_observation(site):
                loglik = loglik + _scaled_sum(site["fn"].log_prob(site["value"]), site)
        kls = self._site_kls(model_tr, guide_tr).values()
        kl = sum(kls, torch.zeros(()))
        loglik = torch.as_tensor(loglik)
        return ELBOTerms(-(loglik - kl), loglik, kl)

    def terms(self, model, guide, *args, **kwargs) -> ELBOTerms:
        """The loss and its two parts, averaged over ``num_particles`` estimates."""
        parts = [self._particle_terms(*self._traces(model, guide, args, kwargs))
                 for _ in range(self.num_particles)]
        if len(parts) == 1:
            return parts[0]
        n = float(len(parts))
        return ELBOTerms(*(sum(getattr(p, f) for p in parts) / n
                           for f in ("loss", "expected_loglik", "kl")))

    # -- the pyro.infer.ELBO interface ------------------------------------------------------
    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """``−ELBO`` as a differentiable tensor."""
        return self.terms(model, guide, *args, **kwargs).loss

    def loss(self, model, guide, *args, **kwargs) -> float:
        """``−ELBO`` as a float, without gradients."""
        with torch.no_grad():
            return torch_item(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """``−ELBO``, with its gradients accumulated into the parameters (for ``SVI``)."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward()
        return torch_item(loss)

    # -- KL terms ------------------------------------------------------------------------------
    def _site_kls(self, model_tr, guide_tr) -> dict[str, torch.Tensor]:
        out = {}
        for name, q_site in guide_tr.nodes.items():
            if not _is_latent(q_site) or q_site["mask"] is False \
                    or is_identically_zero(q_site["scale"]):
                continue
            kl = self._site_kl(name, q_site, model_tr.nodes[name])
            out[name] = _scaled_sum(kl, q_site)
        return out

    @torch.no_grad()
    def kl_by_site(self, model, guide, *args, **kwargs) -> dict[str, float]:
        """Each latent site's KL term in nats (what :meth:`terms` sums)."""
        with LocalReparameterization():
            model_tr, guide_tr = self._get_trace(model, guide, args, kwargs)
        return {name: float(v) for name, v in self._site_kls(model_tr, guide_tr).items()}

    def _site_kl(self, name, q_site, p_site) -> torch.Tensor:
        try:
            return kl_divergence(q_site["fn"], p_site["fn"])
        except NotImplementedError:
            if not self.mc_fallback:
                raise NotImplementedError(
                    f"site {name!r}: no closed-form KL({type(q_site['fn']).__name__} ‖ "
                    f"{type(p_site['fn']).__name__}); register one or pass mc_fallback=True"
                ) from None
            v = q_site["value"]
            return q_site["fn"].log_prob(v) - p_site["fn"].log_prob(v)
