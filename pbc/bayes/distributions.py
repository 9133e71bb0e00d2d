"""The distributions of pbc's priors and variational families (torch + Pyro only).

* :class:`GroupScaledNormal` — ``w = z ⊙ w̃``, ``w̃ ~ N(μ, σ²)``, a whole weight tensor as one
  event: the conditional prior (``μ = 0, σ = 1``) and posterior of the weights given the
  group scales (paper eq. 9);
* :class:`ImproperLogUniform` — the scale-invariant prior ``p(z) ∝ 1/|z|`` (paper eq. 8;
  Sparse VD's per-weight prior); improper, so its ``sample`` gives a prototype, not a draw;
* :class:`LogNormalFactor` — the log-normal guide of one horseshoe factor (paper eqs. 12–13).

Their closed-form KL divergences live in :mod:`pbc.bayes.kl`.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch.distributions import constraints


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

    ``log_prob`` is ``−log|z|`` (unnormalised).  ``log_alpha_clip = (lo, hi)`` clamps the
    dropout rate inside its KL (Sparse VD's ``[−8, 8]``); ``None`` (the group scales of
    BC-GNJ) does not.

    An improper prior has no draws.  In inference its site always takes the guide's value
    (replayed by an ELBO, conditioned on by :class:`pyro.infer.Predictive`), and only its KL
    against the guide enters the loss.  ``sample`` returns a *prototype* instead: ones of the
    requested shape, a point of the support (the unit scale, where the guides of
    :mod:`pbc.bayes.priors` start).  It is what Pyro's ``InitMessenger`` (``init_to_sample``)
    gets when it traces the model alone for its structure, as ``Predictive`` does to find the
    plate nesting and the sites' shapes before it runs the model on the guide's draws.  A run
    of the model alone is therefore no draw from a prior predictive: it sets these sites to 1.
    """

    arg_constraints = {}
    support = constraints.real

    def __init__(self, batch_shape, validate_args=None, log_alpha_clip=None):
        self.log_alpha_clip = log_alpha_clip
        super().__init__(torch.Size(batch_shape), torch.Size(), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        return ImproperLogUniform(batch_shape, log_alpha_clip=self.log_alpha_clip)

    def sample(self, sample_shape=torch.Size()):
        """The prototype (see class docstring): ones of shape ``sample_shape + batch_shape``,
        as an expanded scalar."""
        return torch.ones(()).expand(self._extended_shape(sample_shape))

    def log_prob(self, value):
        return -value.abs().log()


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

