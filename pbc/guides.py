"""Variational families for the group scales ``z``, one per prior in ``pbc.priors``.

Each is an ``nn.Module`` holding its own parameters (never Pyro's global param store) with:

* ``sample(layer)`` — emits the guide's sample sites for ``z`` and returns ``z``, shape ``(G,)``;
* ``rsample_per_example(n)`` — ``n`` independent draws of ``z``, shape ``(n, G)``, used by
  local reparameterisation (``pbc.handlers``) to sample ``z`` per example;
* ``mean()`` — ``E_q[z]``, shape ``(G,)``, used for posterior-mean weights;
* ``variance()`` — ``Var_q[z]``, shape ``(G,)``;
* ``log_z_moments()`` — mean and variance of ``log|z|`` under ``q`` (exact for GHS, where
  ``log z`` is Gaussian; for GNJ the delta-method value at ``E[z]``), used by the analysis;
* ``draws(n)`` — ``{"z": (n, G)}`` (and ``{"s": (n,)}`` for GHS) independent posterior draws.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pbc.priors import LogNormalFactor, horseshoe_scales, log_alpha_of

# Under local reparameterisation the layer draws z per example itself (pbc.handlers), so the
# guide's global draw of z is not needed: the handler gives these sites a placeholder value.
DEFERRED = {"local_reparam": True}


def _normal_param(shape, mean: float, std: float) -> nn.Parameter:
    return nn.Parameter(torch.empty(shape).normal_(mean, std))


class NormalScaleGuide(nn.Module):
    """``q(z_g) = N(μ_g, σ_g²)`` for the group normal-Jeffreys prior (paper eq. 8).

    Initialised as in Louizos et al.'s code: ``μ ~ N(1, 0.01²)``, ``log σ² ~ N(−9, 0.01²)``.
    """

    def __init__(self, n_groups: int):
        super().__init__()
        self.n_groups = n_groups
        self.loc = _normal_param((n_groups,), 1.0, 1e-2)
        self.logvar = _normal_param((n_groups,), -9.0, 1e-2)

    def scale(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def sample(self, layer: str) -> torch.Tensor:
        # event dim: groups (G,)
        return pyro.sample(f"{layer}.z", dist.Normal(self.loc, self.scale()).to_event(1),
                           infer=DEFERRED)

    def rsample_per_example(self, n: int) -> torch.Tensor:
        eps = torch.randn(n, self.n_groups, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + self.scale() * eps

    def mean(self) -> torch.Tensor:
        return self.loc

    def variance(self) -> torch.Tensor:
        return self.logvar.exp()

    @torch.no_grad()
    def draws(self, n: int) -> dict[str, torch.Tensor]:
        return {"z": self.rsample_per_example(n)}

    def log_alpha(self) -> torch.Tensor:
        """Group dropout rates ``log α_g = log σ_g² − log μ_g²``, shape ``(G,)``."""
        return log_alpha_of(self.loc, self.scale())

    def log_z_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        mu2 = self.loc.pow(2) + 1e-16
        return 0.5 * mu2.log(), self.logvar.exp() / mu2


class HorseshoeScaleGuide(nn.Module):
    """Log-normal ``q`` for each factor of the group horseshoe (paper eqs. 12–13).

    ``q(sa), q(sb), q(za_g), q(zb_g)`` are log-normal, so ``log z_g = ½(log sa + log sb +
    log za_g + log zb_g)`` is Gaussian with mean ``½ Σ μ`` and variance ``¼ Σ σ²``.
    Initialised with ``s = init_scale`` and ``z̃ = 1``: ``μ_sa = log τ0²``,
    ``μ_sb = 2 log init_scale − log τ0²``, ``μ_za = μ_zb = 0``, and ``log σ² = −9`` for every
    factor.  For means loaded from a pretrained net ``init_scale`` is the layer's weight
    scale, so ``w̃ = w / z`` starts at ``O(1)`` against its ``N(0, 1)`` prior; starting at
    ``s = 1`` leaves ``w̃`` as small as the weights (≈ 0.03), its KL then gains almost nothing
    when a group shrinks, and on Fashion-MNIST lenet5 no group was pruned in 30 epochs.  From
    scratch ``init_scale = 1``: at the weight scale, Adam's steps on ``μ`` move the weights
    ``z ≈ 1/√fan_in`` times less, and lenet5 stayed at 16–17% test error for 7 epochs.
    """

    def __init__(self, n_groups: int, tau0: float, init_scale: float = 1.0):
        super().__init__()
        if not init_scale > 0:
            raise ValueError(f"init_scale must be positive, got {init_scale}")
        self.n_groups = n_groups
        log_tau2 = 2.0 * math.log(tau0)
        self.sa_loc = _normal_param((), log_tau2, 1e-2)
        self.sb_loc = _normal_param((), 2.0 * math.log(init_scale) - log_tau2, 1e-2)
        self.sa_logvar = _normal_param((), -9.0, 1e-2)
        self.sb_logvar = _normal_param((), -9.0, 1e-2)
        self.za_loc = _normal_param((n_groups,), 0.0, 1e-2)
        self.zb_loc = _normal_param((n_groups,), 0.0, 1e-2)
        self.za_logvar = _normal_param((n_groups,), -9.0, 1e-2)
        self.zb_logvar = _normal_param((n_groups,), -9.0, 1e-2)

    @staticmethod
    def _lognormal(loc, logvar):
        return LogNormalFactor(loc, logvar)

    def sample(self, layer: str) -> torch.Tensor:
        ln = self._lognormal
        sa = pyro.sample(f"{layer}.sa", ln(self.sa_loc, self.sa_logvar), infer=DEFERRED)
        sb = pyro.sample(f"{layer}.sb", ln(self.sb_loc, self.sb_logvar), infer=DEFERRED)
        # event dim: groups (G,)
        za = pyro.sample(f"{layer}.za", ln(self.za_loc, self.za_logvar).to_event(1),
                         infer=DEFERRED)
        zb = pyro.sample(f"{layer}.zb", ln(self.zb_loc, self.zb_logvar).to_event(1),
                         infer=DEFERRED)
        return horseshoe_scales(layer, sa, sb, za, zb)

    def log_s_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of ``log s`` (scalars)."""
        mean = 0.5 * (self.sa_loc + self.sb_loc)
        var = 0.25 * (self.sa_logvar.exp() + self.sb_logvar.exp())
        return mean, var

    def log_ztilde_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of ``log z̃_g``, shape ``(G,)``."""
        mean = 0.5 * (self.za_loc + self.zb_loc)
        var = 0.25 * (self.za_logvar.exp() + self.zb_logvar.exp())
        return mean, var

    def log_z_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        s_mean, s_var = self.log_s_moments()
        t_mean, t_var = self.log_ztilde_moments()
        return s_mean + t_mean, s_var + t_var

    def _rsample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z, s)`` of shapes ``(n, G)`` and ``(n,)``: ``s`` once per draw, ``z̃`` per group."""
        s_mean, s_var = self.log_s_moments()
        t_mean, t_var = self.log_ztilde_moments()
        like = t_mean
        log_s = s_mean + s_var.sqrt() * torch.randn(n, 1, dtype=like.dtype, device=like.device)
        eps = torch.randn(n, self.n_groups, dtype=like.dtype, device=like.device)
        return torch.exp(log_s + t_mean + t_var.sqrt() * eps), torch.exp(log_s[:, 0])

    def rsample_per_example(self, n: int) -> torch.Tensor:
        return self._rsample(n)[0]

    def log_alpha(self) -> torch.Tensor:
        """Group dropout rates ``log α_g = log(Var[z_g] / E[z_g]²) = log(e^{σ²} − 1)`` with
        ``σ² = Var[log z_g]``, shape ``(G,)``: large where the scale's posterior stayed as
        wide as its prior (the data did not need the group)."""
        _, var = self.log_z_moments()
        return torch.log(torch.expm1(var))

    def mean(self) -> torch.Tensor:
        mean, var = self.log_z_moments()
        return torch.exp(mean + 0.5 * var)

    def variance(self) -> torch.Tensor:
        mean, var = self.log_z_moments()
        return torch.expm1(var) * torch.exp(2 * mean + var)

    @torch.no_grad()
    def draws(self, n: int) -> dict[str, torch.Tensor]:
        z, s = self._rsample(n)
        return {"z": z, "s": s}
