"""Closed-form KL divergences of pbc's families, registered for ``kl_divergence``.

Each registration names at least one of pbc's own distribution types
(:mod:`pbc.bayes.distributions`), so importing pbc changes no KL that another caller of
``torch.distributions.kl_divergence`` could already compute.  The log-normal KLs against
torch's ``Gamma`` and ``InverseGamma`` are plain functions for the same reason.

* ``KL(N(μ, αμ²) ‖ p ∝ 1/|z|)`` — Molchanov et al. (2017), eq. 14:
  ``−KL ≈ k1·σ(k2 + k3·log α) − ½·softplus(−log α) − k1``;
* ``KL(N(μ, σ²) ‖ N(0, 1)) = ½ Σ (σ² + μ² − 1 − log σ²)`` for the weights given ``z``;
* ``KL(LN(μ,σ²) ‖ Gamma(k, rate r)) = −k log r + lnΓ(k) − kμ + r·e^{μ+σ²/2} − ½(1 + log 2πσ²)``;
* ``KL(LN(μ,σ²) ‖ InvGamma(k, r)) = −k log r + lnΓ(k) + kμ + r·e^{−μ+σ²/2} − ½(1 + log 2πσ²)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.distributions.kl import register_kl

from pbc.bayes.distributions import GroupScaledNormal, ImproperLogUniform, LogNormalFactor

# Molchanov et al. (2017), eq. 14: −KL ≈ k1·σ(k2 + k3·log α) − ½·softplus(−log α) − k1.
K1, K2, K3 = 0.63576, 1.87320, 1.48695


def neg_kl_log_uniform(log_alpha: torch.Tensor) -> torch.Tensor:
    """Molchanov et al.'s approximation of ``−KL(N(μ, αμ²) ‖ p ∝ 1/|z|)``, elementwise."""
    return K1 * torch.sigmoid(K2 + K3 * log_alpha) - 0.5 * F.softplus(-log_alpha) - K1


def log_alpha_of(loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Dropout rate ``log α = log σ² − log μ²`` of ``N(μ, σ²)`` (eps keeps it finite at μ = 0)."""
    return 2.0 * scale.log() - torch.log(loc.pow(2) + 1e-8)


@register_kl(torch.distributions.Normal, ImproperLogUniform)
def _kl_normal_log_uniform(q, p):
    log_alpha = log_alpha_of(q.loc, q.scale)
    if p.log_alpha_clip is not None:
        log_alpha = log_alpha.clamp(*p.log_alpha_clip)
    return -neg_kl_log_uniform(log_alpha)


class _StandardNormalKL(torch.autograd.Function):
    """``Σ KL(N(μ, e^v) ‖ N(0, 1)) = ½ Σ (e^v + μ² − 1 − v)`` over all elements, with the
    gradients ``∂/∂μ = μ`` and ``∂/∂v = ½(e^v − 1)`` written out.

    Autograd through the formula makes six passes over the weight tensor forward and as many
    backward; this makes four reductions and one ``exp`` forward, two elementwise passes
    backward.
    """

    @staticmethod
    def forward(ctx, loc, logvar):
        var = logvar.exp()
        ctx.save_for_backward(loc, var)
        flat = loc.reshape(-1)
        return 0.5 * (var.sum() - logvar.sum() + torch.dot(flat, flat) - loc.numel())

    @staticmethod
    def backward(ctx, g):
        loc, var = ctx.saved_tensors
        grad_loc = g * loc if ctx.needs_input_grad[0] else None
        grad_logvar = (var - 1.0).mul_(0.5 * g) if ctx.needs_input_grad[1] else None
        return grad_loc, grad_logvar


@register_kl(GroupScaledNormal, GroupScaledNormal)
def _kl_group_scaled_normal(q, p):
    """``Σ KL(N(μq, σq²) ‖ N(μp, σp²))`` over the event; the shared ``z`` cancels (eq. 9).

    Against the standard prior this is ``½ Σ (σ² + μ² − 1 − log σ²)``, computed from
    ``log σ²`` directly when ``q`` carries it (:class:`_StandardNormalKL`).
    """
    if p.standard:
        log_var = q.logvar if q.logvar is not None else 2.0 * q.scale.log()
        loc, log_var = torch.broadcast_tensors(q.loc, log_var)
        return _StandardNormalKL.apply(loc.expand(q.event_shape), log_var.expand(q.event_shape))
    var_ratio = (q.scale / p.scale).pow(2)
    t = ((q.loc - p.loc) / p.scale).pow(2)
    kl = 0.5 * (var_ratio + t - 1.0 - var_ratio.log())
    return kl.expand(q.event_shape).sum()



def _constant(t: torch.Tensor) -> float | None:
    """``t``'s value as a float if it is one number (possibly expanded) outside autograd."""
    if t.requires_grad or not (t.numel() == 1 or all(s == 0 for s in t.stride())):
        return None
    return float(t.reshape(-1)[0])


def _gamma_family_constants(p) -> tuple[float, float, float] | None:
    """``(k, r, −k log r + lnΓ(k) − ½(1 + log 2π))`` of a fixed Gamma/InvGamma prior, computed
    once per prior object (the horseshoe's factor priors are built once per layer shape), or
    ``None`` when ``k`` or ``r`` vary over elements or are learned."""
    cached = p.__dict__.get("_pbc_kl_constants")
    if cached is None:
        k, r = _constant(p.concentration), _constant(p.rate)
        if k is None or r is None:
            return None
        cached = (k, r, -k * math.log(r) + math.lgamma(k) - 0.5 * (1.0 + math.log(2 * math.pi)))
        p.__dict__["_pbc_kl_constants"] = cached
    return cached


def _kl_log_normal_gamma_family(mu, var, log_var, p, sign: float):
    """KL of ``LN(μ, σ²)`` against ``Gamma(k, rate r)`` (``sign = +1``) or ``InvGamma(k, r)``
    (``sign = −1``):  ``−k log r + lnΓ(k) − sign·kμ + r·e^{sign·μ + σ²/2} − ½(1 + log 2πσ²)``.
    """
    consts = _gamma_family_constants(p)
    if consts is not None:   # fixed scalar hyperparameters: the constant part in Python floats
        k, r, c = consts
        return c - (sign * k) * mu + r * torch.exp(sign * mu + 0.5 * var) - 0.5 * log_var
    k, r = p.concentration, p.rate
    return (-k * r.log() + torch.lgamma(k) - sign * k * mu + r * torch.exp(sign * mu + var / 2)
            - 0.5 * (1.0 + math.log(2 * math.pi) + log_var))


def kl_lognormal_gamma(q, p):
    """KL(LN(μ,σ²) ‖ Gamma(k, rate r)) = −k log r + lnΓ(k) − kμ + r·e^{μ+σ²/2} − ½(1 + log 2πσ²)."""
    var = q.scale.pow(2)
    return _kl_log_normal_gamma_family(q.loc, var, var.log(), p, 1.0)


def kl_lognormal_inverse_gamma(q, p):
    """KL(LN(μ,σ²) ‖ InvGamma(k, r)) = −k log r + lnΓ(k) + kμ + r·e^{−μ+σ²/2} − ½(1 + log 2πσ²)."""
    var = q.scale.pow(2)
    return _kl_log_normal_gamma_family(q.loc, var, var.log(), p, -1.0)


@register_kl(LogNormalFactor, torch.distributions.Gamma)
def _kl_factor_gamma(q, p):
    return _kl_log_normal_gamma_family(q.loc, q.logvar.exp(), q.logvar, p, 1.0)


@register_kl(LogNormalFactor, torch.distributions.InverseGamma)
def _kl_factor_inverse_gamma(q, p):
    return _kl_log_normal_gamma_family(q.loc, q.logvar.exp(), q.logvar, p, -1.0)

