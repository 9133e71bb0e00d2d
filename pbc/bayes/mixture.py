"""The soft weight-sharing prior: a Gaussian mixture over the weights with learned
components and Gamma hyperpriors on their precisions (Ullrich, Meeds & Welling 2017).

Generative model of the prior (``J`` components, component 0 fixed at mean 0 with fixed
mixing proportion ``π_0``, the pruning component)::

    λ_j ~ Gamma(α_j, rate β_j)                  (J,)
    w_i ~ Σ_j π_j N(μ_j, 1/λ_j)                 i.i.d. over a weight tensor

:class:`MixturePrior` holds ``μ_1…μ_{J−1}``, ``log λ`` and the logits of ``π_1…π_{J−1}``
(which share ``1 − π_0``) as parameters; :class:`GaussianMixtureWeights` is the prior of one
weight tensor.  Hyperpriors as in the authors' tutorial: ``Gamma(5000, rate 2)`` on the zero
component's precision, ``Gamma(250, rate 0.1)`` on the others'; both rates can be lowered
(``zero_rate``, ``rate``): at the optimum ``λ_j < (n_j/2 + α_j − 1)/β_j`` for the ``n_j``
weights a component holds, so the rate bounds how narrow a component can get.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyro.distributions as dist
import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch import nn
from torch.distributions import constraints

from pbc.defaults import GAMMA_OTHER, GAMMA_ZERO

N_COMPONENTS = 17
PI_ZERO = 0.99
INIT_MEAN_RANGE = 0.6          # until the means are spread over a pretrained net's weights
MIXTURE_CHUNK = 8192         # weights per block of _MixtureNLL (a (17, 8192) block fits in L2)


class _MixtureNLL(torch.autograd.Function):
    """``−Σ_i log Σ_j exp(log π_j) N(w_i | μ_j, 1/λ_j)`` with its gradients computed in the
    forward pass, over chunks of :data:`MIXTURE_CHUNK` weights.

    Each chunk's ``(J, chunk)`` block of log-densities, responsibilities ``r`` and offsets
    ``d = w − μ`` stays in cache, and only ``∂/∂w`` (shape of ``w``) and three ``(J,)`` sums
    are kept for the backward pass, where autograd through ``MixtureSameFamily`` would keep
    about thirty ``(n, J)`` temporaries.  Value and gradients are those of the plain formula.
    """

    @staticmethod
    def forward(ctx, w, log_pi, mu, lam):
        flat = w.reshape(-1)
        scale = (-0.5 * lam).reshape(-1, 1)
        const = (log_pi + 0.5 * torch.log(lam / (2 * math.pi))).reshape(-1, 1)
        grad_w = torch.empty_like(flat)
        resp, sum_rd, sum_rd2 = (torch.zeros_like(mu) for _ in range(3))
        log_p = flat.new_zeros(())
        for s in range(0, flat.numel(), MIXTURE_CHUNK):
            d = flat[s:s + MIXTURE_CHUNK].reshape(1, -1) - mu.reshape(-1, 1)   # (J, chunk)
            e = d * d
            e.mul_(scale).add_(const)                                   # log π_j N(w | μ_j, 1/λ_j)
            m = e.amax(0)
            e.sub_(m).exp_()
            total = e.sum(0)
            log_p += m.sum() + total.log().sum()
            e.div_(total)                                               # r
            resp += e.sum(1)
            e.mul_(d)                                                   # r·d
            torch.mv(e.t(), lam, out=grad_w[s:s + MIXTURE_CHUNK])       # Σ_j λ_j r_j d_j
            sum_rd += e.sum(1)
            sum_rd2 += e.mul_(d).sum(1)                                 # Σ_i r·d²
        ctx.save_for_backward(grad_w.reshape(w.shape), resp, sum_rd, sum_rd2, lam)
        return -log_p

    @staticmethod
    def backward(ctx, g):
        grad_w, resp, sum_rd, sum_rd2, lam = ctx.saved_tensors
        return (g * grad_w,
                -g * resp,                                          # ∂/∂log π
                -g * lam * sum_rd,                                  # ∂/∂μ
                -g * (resp / (2 * lam) - 0.5 * sum_rd2))            # ∂/∂λ


class GaussianMixtureWeights(TorchDistribution):
    """``w_i ~ Σ_j π_j N(μ_j, 1/λ_j)`` i.i.d. over a whole weight tensor (one event).

    ``log_prob(w)`` is the event's total log-density, computed by :class:`_MixtureNLL`.
    """

    arg_constraints = {}
    support = constraints.real

    def __init__(self, log_pi, mu, lam, event_shape, validate_args=None):
        self.log_pi, self.mu, self.lam = log_pi, mu, lam
        super().__init__(torch.Size(), torch.Size(event_shape), validate_args=validate_args)

    def log_prob(self, value):
        if value.shape != self.event_shape:
            raise ValueError(f"expected one event of shape {tuple(self.event_shape)}, "
                             f"got {tuple(value.shape)}")
        return -_MixtureNLL.apply(value, self.log_pi, self.mu, self.lam)

    def sample(self, sample_shape=torch.Size()):
        shape = torch.Size(sample_shape) + self.event_shape
        with torch.no_grad():
            j = torch.distributions.Categorical(logits=self.log_pi).sample(shape)
            return self.mu[j] + self.lam[j].rsqrt() * torch.randn(shape, dtype=self.mu.dtype)




class MixturePrior(nn.Module):
    """The learned mixture ``Σ_j π_j N(μ_j, 1/λ_j)`` and its precision hyperprior."""

    def __init__(self, n_components: int = N_COMPONENTS, pi_zero: float = PI_ZERO,
                 zero_rate: float = GAMMA_ZERO[1], rate: float = GAMMA_OTHER[1]):
        super().__init__()
        j = n_components
        self.pi_zero = pi_zero
        self.means = nn.Parameter(torch.linspace(-INIT_MEAN_RANGE, INIT_MEAN_RANGE, j - 1))
        alpha = torch.tensor([GAMMA_ZERO[0]] + [GAMMA_OTHER[0]] * (j - 1))
        beta = torch.tensor([GAMMA_ZERO[1]] + [GAMMA_OTHER[1]] * (j - 1))
        # start at the default hyperpriors' modes (σ ≈ 0.02), whatever the rates are
        self.log_precision = nn.Parameter(((alpha - 1) / beta).log())
        beta[0], beta[1:] = zero_rate, rate
        self.mix_logits = nn.Parameter(torch.zeros(j - 1))
        self.register_buffer("gamma_concentration", alpha)
        self.register_buffer("gamma_rate", beta)

    def mixing(self) -> torch.Tensor:
        """``π``, shape ``(J,)``: ``π_0`` fixed, the rest a softmax sharing ``1 − π_0``."""
        rest = (1.0 - self.pi_zero) * torch.softmax(self.mix_logits, 0)
        return torch.cat([rest.new_tensor([self.pi_zero]), rest])

    def all_means(self) -> torch.Tensor:
        return torch.cat([self.means.new_zeros(1), self.means])

    def precision(self) -> torch.Tensor:
        return self.log_precision.exp()

    def distribution(self, shape, precision: torch.Tensor | None = None
                     ) -> GaussianMixtureWeights:
        """The prior of one weight tensor of ``shape``."""
        lam = self.precision() if precision is None else precision
        return GaussianMixtureWeights(self.mixing().log(), self.all_means(), lam, shape)

    def hyperprior(self) -> dist.Distribution:
        # event dim: components (J,)
        return dist.Gamma(self.gamma_concentration, self.gamma_rate).to_event(1)

    @torch.no_grad()
    def components(self) -> Components:
        return Components(self.mixing().double().numpy(), self.all_means().double().numpy(),
                          (1.0 / self.precision()).double().numpy())


@dataclass
class Components:
    """A 1-D Gaussian mixture as numpy arrays ``(J,)``; index 0 is the zero component."""

    pi: np.ndarray
    mean: np.ndarray
    var: np.ndarray
