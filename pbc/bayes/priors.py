"""Prior families on group scales, each beside its variational family (guide).

Bayesian compression (Louizos, Ullrich & Welling 2017) puts a scale ``z_g`` on each group of
weights (an input unit of a linear layer, an output channel of a convolution) and writes the
weights non-centred::

    w = z ⊙ w̃,    w̃ ~ N(0, 1)          (prior, both families)
    w = z ⊙ w̃,    w̃ ~ N(μ, σ²)         (variational posterior, both families)

so ``KL(q(w | z) ‖ p(w | z)) = KL(N(μ, σ²) ‖ N(0, 1))`` whatever ``z`` is (paper eq. 9).
The families differ in the prior on ``z``:

* :class:`GroupNormalJeffreys` (BC-GNJ): ``p(z) ∝ 1/|z|``, ``q(z) = N(μ_z, σ_z²)``
  (:class:`NormalScaleGuide`); the KL uses the approximation of Molchanov et al. (2017) in
  the dropout rate ``α = σ_z² / μ_z²``.
* :class:`GroupHorseshoe` (BC-GHS): ``z_g = s · z̃_g`` with ``s ~ C⁺(0, τ0)``, ``z̃_g ~ C⁺(0, 1)``,
  each half-Cauchy written as ``√(a·b)``, ``a ~ Gamma(½, rate r)``, ``b ~ InvGamma(½, 1)``
  (``r = 1/τ0²`` for ``s``, ``1`` for ``z̃``); ``q`` is log-normal for every factor
  (:class:`HorseshoeScaleGuide`).
* :class:`SparseVD`: no group scales; ``p(w_ij) ∝ 1/|w_ij|`` per weight.

A prior object emits the model's sample sites; its guide module (an ``nn.Module`` holding
its own parameters, never Pyro's global param store) emits the guide's, with

* ``sample(layer)`` — the guide's sites for ``z``; returns ``z``, shape ``(G,)``;
* ``rsample_per_example(n)`` — ``n`` independent draws of ``z``, shape ``(n, G)``, used by
  local reparameterisation (:mod:`pbc.bayes.handlers`) to sample ``z`` per example;
* ``mean()`` / ``variance()`` — ``E_q[z]`` / ``Var_q[z]``, shape ``(G,)``;
* ``log_z_moments()`` — mean and variance of ``log|z|`` under ``q`` (exact for GHS, where
  ``log z`` is Gaussian; for GNJ the delta-method value at ``E[z]``);
* ``log_alpha()`` — the groups' dropout rates, what pruning thresholds act on;
* ``draws(n)`` — ``{"z": (n, G)}`` (and ``{"s": (n,)}`` for GHS) independent posterior draws.
"""

from __future__ import annotations

import functools
import math

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pbc.bayes.distributions import ImproperLogUniform, LogNormalFactor
from pbc.bayes.handlers import DEFERRED, local_reparam_active
from pbc.bayes.kl import log_alpha_of


def horseshoe_scales(layer: str, sa, sb, za, zb) -> torch.Tensor:
    """``z = s·√(za·zb)`` with ``s = √(sa·sb)``, shape ``(G,)``, recorded as the deterministic
    sites ``<layer>.s`` and ``<layer>.z`` — except under local reparameterisation, where the
    factors are placeholders and a site would record a value that is no draw."""
    s = torch.sqrt(sa * sb)
    z = s * torch.sqrt(za * zb)
    if local_reparam_active():
        return z
    pyro.deterministic(f"{layer}.s", s)
    return pyro.deterministic(f"{layer}.z", z, event_dim=1)




class GroupPrior:
    """A prior family on group scales.  Subclasses emit the model's ``z`` sites.

    ``groups = False`` marks a per-weight prior without group scales (Sparse VD): its layers
    have no ``z``, ``weight_prior(shape, like)`` is the prior of ``w`` itself and ``guide``
    returns ``None``.

    ``sample_scales(layer, n_groups, like)`` returns ``z`` of shape ``(n_groups,)``;
    ``guide(n_groups, init_scale)`` builds the matching variational module (below);
    ``init_scale`` is where a prior with a global scale starts it: the layer's weight scale
    ``1/√fan_in`` for means from a pretrained net, 1 from scratch (:mod:`pbc.bayes.layers`).
    """

    name: str = ""
    groups: bool = True

    def sample_scales(self, layer: str, n_groups: int, like: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def guide(self, n_groups: int, init_scale: float = 1.0):
        raise NotImplementedError

    def config(self) -> dict:
        return {"name": self.name}


@functools.lru_cache(maxsize=64)
def _log_uniform(n_groups: int):
    return ImproperLogUniform((n_groups,)).to_event(1)


class GroupNormalJeffreys(GroupPrior):
    """BC-GNJ: ``p(z_g) ∝ 1/|z_g|`` (paper eq. 8); site ``<layer>.z`` of shape ``(G,)``."""

    name = "gnj"

    def sample_scales(self, layer, n_groups, like):
        # event dim: groups (G,)
        return pyro.sample(f"{layer}.z", _log_uniform(n_groups))

    def guide(self, n_groups, init_scale=1.0):
        # log-uniform is scale-free: z starts at 1 as in Louizos et al.'s code
        return NormalScaleGuide(n_groups)


class GroupHorseshoe(GroupPrior):
    """BC-GHS: ``z_g = s·z̃_g``, ``s ~ C⁺(0, τ0)``, ``z̃_g ~ C⁺(0, 1)`` (paper eqs. 10–13).

    Sites: ``<layer>.sa``/``<layer>.sb`` (scalars) for ``s = √(sa·sb)`` and
    ``<layer>.za``/``<layer>.zb`` (``(G,)``) for ``z̃ = √(za·zb)``, with
    ``sa ~ Gamma(½, rate 1/τ0²)``, ``sb ~ InvGamma(½, 1)``, ``za ~ Gamma(½, 1)``,
    ``zb ~ InvGamma(½, 1)``; deterministic ``<layer>.s`` and ``<layer>.z``.
    """

    name = "ghs"

    def __init__(self, tau0: float = 1e-5):
        if not tau0 > 0:
            raise ValueError(f"tau0 must be positive, got {tau0}")
        self.tau0 = float(tau0)
        self._cache = {}

    def _priors(self, n_groups: int, like: torch.Tensor):
        """The four factor priors, built once per (G, dtype, device): they have no parameters
        to learn, and building an InverseGamma costs more than sampling from it."""
        key = (n_groups, like.dtype, like.device)
        if key not in self._cache:
            half, one = like.new_tensor(0.5), like.new_tensor(1.0)
            self._cache[key] = (
                dist.Gamma(half, one / self.tau0**2), dist.InverseGamma(half, one),
                # event dim: groups (G,)
                dist.Gamma(half, one).expand([n_groups]).to_event(1),
                dist.InverseGamma(half, one).expand([n_groups]).to_event(1))
        return self._cache[key]

    def sample_scales(self, layer, n_groups, like):
        p_sa, p_sb, p_za, p_zb = self._priors(n_groups, like)
        sa = pyro.sample(f"{layer}.sa", p_sa)
        sb = pyro.sample(f"{layer}.sb", p_sb)
        za = pyro.sample(f"{layer}.za", p_za)
        zb = pyro.sample(f"{layer}.zb", p_zb)
        return horseshoe_scales(layer, sa, sb, za, zb)

    def guide(self, n_groups, init_scale=1.0):
        return HorseshoeScaleGuide(n_groups, self.tau0, init_scale)

    def config(self):
        return {"name": self.name, "tau0": self.tau0}


class SparseVD(GroupPrior):
    """Sparse variational dropout (Molchanov et al. 2017): ``p(w_ij) ∝ 1/|w_ij|`` per weight.

    No group scales: site ``<layer>.w`` (weight shape, one event) has the log-uniform prior
    and the guide ``q(w) = N(θ, σ²)`` in the additive parameterisation (``θ`` and ``log σ²``
    are the parameters, ``α = σ²/θ²`` is derived).  Its KL is Molchanov et al.'s
    approximation with ``log α`` clipped to ``[−8, 8]``; a weight is pruned when
    ``log α ≥ 3`` (:data:`SVD_LOG_ALPHA_THRESHOLD`).  Biases keep the ``N(0, 1)`` prior.
    """

    name = "svd"
    groups = False
    log_alpha_clip = (-8.0, 8.0)

    def __init__(self):
        self._cache = {}

    def weight_prior(self, shape, like: torch.Tensor):
        shape = torch.Size(shape)
        if shape not in self._cache:
            self._cache[shape] = ImproperLogUniform(
                shape, log_alpha_clip=self.log_alpha_clip).to_event(len(shape))
        return self._cache[shape]

    def guide(self, n_groups, init_scale=1.0):
        return None


SVD_LOG_ALPHA_THRESHOLD = 3.0

PRIORS = {"gnj": GroupNormalJeffreys, "ghs": GroupHorseshoe, "svd": SparseVD}


def make_prior(name: str, tau0: float = 1e-5) -> GroupPrior:
    """Build a prior by its short name (``gnj``, ``ghs``, ``svd``; ``tau0`` is the horseshoe's)."""
    if name not in PRIORS:
        raise ValueError(f"unknown prior {name!r}; choose from {sorted(PRIORS)}")
    return GroupHorseshoe(tau0) if name == "ghs" else PRIORS[name]()


# ---------------------------------------------------------------------------- guides
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

    def log_variances(self) -> list[nn.Parameter]:
        """The parameters that set the dropout rates' spread (``log σ²``)."""
        return [self.logvar]

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
    scale ``1/√fan_in``, so ``w̃ = w / z`` starts at ``O(1)`` against its ``N(0, 1)`` prior
    (with ``s = 1``, ``w̃`` would be as small as the weights, and its KL would gain almost
    nothing when a group shrinks).  From scratch ``init_scale = 1``, so that ``w = w̃`` and
    Adam's steps on ``μ`` move the weights by the learning rate (at ``z = 1/√fan_in`` they
    would move ``√fan_in`` times less).
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

    def log_variances(self) -> list[nn.Parameter]:
        """The parameters that set the dropout rates (every factor's ``log σ²``)."""
        return [self.sa_logvar, self.sb_logvar, self.za_logvar, self.zb_logvar]

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
