"""Prior families for group scales ``z`` and weights ``w | z``, with closed-form KL terms.

Bayesian compression (Louizos, Ullrich & Welling 2017) puts a scale ``z_g`` on each group of
weights (an input unit of a linear layer, an output channel of a convolution) and writes the
weights non-centred::

    w = z ⊙ w̃,    w̃ ~ N(0, 1)          (prior, both families)
    w = z ⊙ w̃,    w̃ ~ N(μ, σ²)         (variational posterior, both families)

so ``KL(q(w | z) ‖ p(w | z)) = KL(N(μ, σ²) ‖ N(0, 1))`` whatever ``z`` is (paper eq. 9).
The families differ in the prior on ``z``:

* :class:`GroupNormalJeffreys` (BC-GNJ): ``p(z) ∝ 1/|z|``, ``q(z) = N(μ_z, σ_z²)``; the KL uses
  the approximation of Molchanov et al. (2017) in the dropout rate ``α = σ_z² / μ_z²``.
* :class:`GroupHorseshoe` (BC-GHS): ``z_g = s · z̃_g`` with ``s ~ C⁺(0, τ0)``, ``z̃_g ~ C⁺(0, 1)``,
  each half-Cauchy written as ``√(a·b)``, ``a ~ Gamma(½, rate r)``, ``b ~ InvGamma(½, 1)``
  (``r = 1/τ0²`` for ``s``, ``1`` for ``z̃``); ``q`` is log-normal for every factor.

The closed forms are registered with :func:`torch.distributions.kl.register_kl`, so
``kl_divergence(guide_fn, model_fn)`` finds them; ``tests/test_priors.py`` checks each
against Monte Carlo.  A prior object emits the model's sample sites; its variational
partner (``pbc.guides``) emits the guide's.  No ``nn`` code lives here.
"""

from __future__ import annotations

import functools
import math

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions.torch_distribution import TorchDistribution
from torch.distributions import constraints
from torch.distributions.kl import register_kl

from pbc.handlers import local_reparam_active

# Molchanov et al. (2017), eq. 14: −KL ≈ k1·σ(k2 + k3·log α) − ½·softplus(−log α) − k1.
K1, K2, K3 = 0.63576, 1.87320, 1.48695


# ---------------------------------------------------------------------------- distributions
class GroupScaledNormal(TorchDistribution):
    """``w = z ⊙ w̃`` with ``w̃ ~ N(loc, scale²)`` elementwise; the whole tensor is one event.

    Parameters
    ----------
    loc, scale : Tensor, shape ``S`` (the weight shape, e.g. ``(out, in)``)
        Mean and standard deviation of the unscaled weights ``w̃``.
    z : Tensor, broadcastable to ``S``
        The group scales laid out along the group dimension, e.g. ``z[None, :]`` for the
        input units of a linear layer or ``z[:, None, None, None]`` for conv filters.
    logvar : Tensor, shape ``S``, optional
        ``log scale²`` in place of ``scale`` (the guide's parameterisation: the KL then
        needs neither ``exp`` nor ``log`` of the full weight tensor).
    standard : bool
        Marks the prior ``loc = 0, scale = 1`` (see :meth:`standard_prior`).

    ``log_prob`` is that of ``N(z·loc, (|z|·scale)²)``.  Its KL against another
    ``GroupScaledNormal`` *with the same* ``z`` does not depend on ``z`` and is computed on
    ``(loc, scale)`` alone, which stays finite when a group scale goes to zero.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    has_rsample = True

    def __init__(self, loc, scale=None, z=1.0, validate_args=None, *, logvar=None,
                 standard=False):
        if (scale is None) == (logvar is None):
            raise ValueError("GroupScaledNormal takes exactly one of scale and logvar")
        self.loc, self._scale, self.logvar, self.z = loc, scale, logvar, z
        self.standard = standard
        super().__init__(torch.Size(), loc.shape, validate_args=validate_args)

    @classmethod
    def standard_prior(cls, shape, z, like: torch.Tensor) -> GroupScaledNormal:
        """``w = z ⊙ w̃``, ``w̃ ~ N(0, 1)``, with ``loc``/``scale`` as expanded scalars."""
        shape = torch.Size(shape)
        return cls(like.new_zeros(()).expand(shape), like.new_ones(()).expand(shape), z,
                   standard=True)

    @property
    def scale(self):
        return self._scale if self._scale is not None else torch.exp(0.5 * self.logvar)

    @property
    def support(self):
        """Every element of the event is real."""
        return constraints.independent(constraints.real, len(self.event_shape))

    @property
    def mean(self):
        return self.z * self.loc

    @property
    def variance(self):
        return (self.z * self.scale).pow(2).expand(self.event_shape)

    def rsample(self, sample_shape=torch.Size()):
        shape = torch.Size(sample_shape) + self.event_shape
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.z * (self.loc + self.scale * eps)

    def log_prob(self, value):
        scale = abs(self.z) * self.scale
        lp = dist.Normal(self.z * self.loc, scale).log_prob(value)
        return lp.reshape(lp.shape[: lp.dim() - len(self.event_shape)] + (-1,)).sum(-1)

    def expand(self, batch_shape, _instance=None):
        if torch.Size(batch_shape) != torch.Size():
            raise NotImplementedError("GroupScaledNormal is a single event; it has no batch shape")
        return self


class ImproperLogUniform(TorchDistribution):
    """The improper scale-invariant (Jeffreys) prior ``p(z) ∝ 1/|z|``, elementwise.

    It has no sampler; in SVI its site is always replayed from the guide.  ``log_prob`` is
    ``−log|z|`` (unnormalised).  ``log_alpha_clip = (lo, hi)`` clamps the dropout rate inside
    its KL (Sparse VD's ``[−8, 8]``); ``None`` (the group scales of BC-GNJ) does not.
    """

    arg_constraints = {}
    support = constraints.real

    def __init__(self, batch_shape, validate_args=None, log_alpha_clip=None):
        self.log_alpha_clip = log_alpha_clip
        super().__init__(torch.Size(batch_shape), torch.Size(), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        return ImproperLogUniform(batch_shape, log_alpha_clip=self.log_alpha_clip)

    def sample(self, sample_shape=torch.Size()):
        raise NotImplementedError("the log-uniform prior is improper and cannot be sampled")

    def log_prob(self, value):
        return -value.abs().log()


# ---------------------------------------------------------------------------- closed-form KLs
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

    Autograd through the formula makes six full-size passes forward and as many backward
    for the largest tensors of a step (lenet300's 235 200 ``fc1`` weights); this makes
    four reductions and one ``exp`` forward, two elementwise passes backward.
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


class LogNormalFactor(TorchDistribution):
    """``x = exp(y)``, ``y ~ N(loc, exp(logvar))`` elementwise: the guide of a horseshoe factor.

    The same law as ``LogNormal(loc, exp(½·logvar))``, without the transformed-distribution
    machinery (which costs more to build than a horseshoe layer's KL takes to compute) and
    with its KLs taken from ``logvar`` directly.
    """

    arg_constraints = {"loc": constraints.real, "logvar": constraints.real}
    support = constraints.positive
    has_rsample = True

    def __init__(self, loc, logvar, validate_args=None):
        self.loc, self.logvar = loc, logvar
        super().__init__(loc.shape, torch.Size(), validate_args=validate_args)

    @property
    def scale(self):
        return torch.exp(0.5 * self.logvar)

    @property
    def mean(self):
        return torch.exp(self.loc + 0.5 * self.logvar.exp())

    def rsample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return torch.exp(self.loc + self.scale * eps)

    def log_prob(self, value):
        y = value.log()
        return dist.Normal(self.loc, self.scale).log_prob(y) - y

    def expand(self, batch_shape, _instance=None):
        shape = torch.Size(batch_shape)
        return LogNormalFactor(self.loc.expand(shape), self.logvar.expand(shape))


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


@register_kl(torch.distributions.LogNormal, torch.distributions.Gamma)
def _kl_lognormal_gamma(q, p):
    """KL(LN(μ,σ²) ‖ Gamma(k, rate r)) = −k log r + lnΓ(k) − kμ + r·e^{μ+σ²/2} − ½(1 + log 2πσ²)."""
    var = q.scale.pow(2)
    return _kl_log_normal_gamma_family(q.loc, var, var.log(), p, 1.0)


@register_kl(torch.distributions.LogNormal, torch.distributions.InverseGamma)
def _kl_lognormal_inverse_gamma(q, p):
    """KL(LN(μ,σ²) ‖ InvGamma(k, r)) = −k log r + lnΓ(k) + kμ + r·e^{−μ+σ²/2} − ½(1 + log 2πσ²)."""
    var = q.scale.pow(2)
    return _kl_log_normal_gamma_family(q.loc, var, var.log(), p, -1.0)


@register_kl(LogNormalFactor, torch.distributions.Gamma)
def _kl_factor_gamma(q, p):
    return _kl_log_normal_gamma_family(q.loc, q.logvar.exp(), q.logvar, p, 1.0)


@register_kl(LogNormalFactor, torch.distributions.InverseGamma)
def _kl_factor_inverse_gamma(q, p):
    return _kl_log_normal_gamma_family(q.loc, q.logvar.exp(), q.logvar, p, -1.0)


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


# ---------------------------------------------------------------------------- prior objects
class GroupPrior:
    """A prior family on group scales.  Subclasses emit the model's ``z`` sites.

    ``groups = False`` marks a per-weight prior without group scales (Sparse VD): its layers
    have no ``z``, ``weight_prior(shape, like)`` is the prior of ``w`` itself and ``guide``
    returns ``None``.

    ``sample_scales(layer, n_groups, like)`` returns ``z`` of shape ``(n_groups,)``;
    ``guide(n_groups, init_scale)`` builds the matching variational module (``pbc.guides``);
    ``init_scale`` is where a prior with a global scale starts it: the layer's weight scale
    ``1/√fan_in`` for means from a pretrained net, 1 from scratch (``pbc.layers``).
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
        from pbc.guides import NormalScaleGuide

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
        from pbc.guides import HorseshoeScaleGuide

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
