"""Bayesian linear and convolutional layers as Pyro model/guide pairs.

Generative process of one layer named ``L`` with ``G`` groups (paper eqs. 8–13)::

    z   ~ p(z)                   site "L.z"   (G,)         group scales (prior object)
    w   = z ⊙ w̃, w̃ ~ N(0, 1)     site "L.w"   weight shape (GroupScaledNormal, one event)
    b   ~ N(0, 1)  (linear)      site "L.b"   (out,)
    b   = z ⊙ b̃, b̃ ~ N(0, 1)     (conv: a pruned filter takes its bias with it)
    out = layer_output(L, x, w, b)            an effectful op that handlers may replace

and the guide ``q(z) q(w̃) q(b̃)`` with ``q(w̃) = N(μ, σ²)``, ``q(b̃) = N(μ_b, σ_b²)``.  Groups
are the *input units* of a linear layer and the *output channels* of a convolution.

A layer can lose groups for good (:meth:`BayesLayer.remove_groups`, what ``pbc finetune`` does
with the groups an analysis pruned): the buffer ``kept_groups`` (``(G,)``, 1 kept, 0 removed)
zeroes a removed input unit before the layer and a removed channel after it, and the
posterior means of its weights.  The removed groups' sites stay (their KL, which no longer
depends on the data, takes them back to the prior); ``kept_groups`` is in the state dict.

``forward(x)`` is the model half; ``guide()`` the guide half.  Under
:class:`pbc.bayes.handlers.LocalReparameterization` the guide draws none of ``z``, ``w``, ``b``
(only their distributions enter the KL) and the model's ``layer_output`` is drawn from the
Gaussian pre-activation, with ``z`` drawn per example.

The layers are plain ``nn.Module`` objects whose parameters live in the module: a torch
optimiser trains them, or :class:`pyro.infer.SVI` with Pyro's global param store, where
:meth:`pbc.bayes.net.BayesNet.guide` registers them (see :class:`pbc.bayes.net.BayesNet`).
"""

from __future__ import annotations

import functools
import math

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.poutine.runtime import effectful
from torch import nn

from pbc.bayes.distributions import GroupScaledNormal
from pbc.bayes.handlers import DEFERRED
from pbc.bayes.priors import GroupPrior


@effectful(type="bayes_layer")
def layer_output(layer: BayesLayer, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor):
    """The layer's deterministic map ``x ↦ f(x; w, b)``; an effect that handlers may replace."""
    return layer.functional(x, weight, bias)


@functools.lru_cache(maxsize=64)
def _standard_normal(shape: torch.Size, dtype: torch.dtype, device: torch.device):
    """``N(0, 1)`` over a bias of ``shape`` (one event), built once per shape: it has nothing
    to learn, and building it costs more than a small layer's KL.  A ``GroupScaledNormal``
    with ``z = 1``, so that the bias's KL takes the same closed form as the weights'."""
    return GroupScaledNormal.standard_prior(shape, 1.0, torch.zeros((), dtype=dtype,
                                                                     device=device))


class BayesLayer(nn.Module):
    """Shared body of :class:`BayesLinear` and :class:`BayesConv2d`.

    Parameters
    ----------
    name : str
        Site prefix, e.g. ``"fc1"`` gives sites ``fc1.z``, ``fc1.w``, ``fc1.b``.
    weight_shape : tuple of int
        ``(out, in)`` or ``(out, in, kH, kW)``.
    prior : GroupPrior
        The family of the group scales; its ``guide(G)`` supplies ``q(z)``.
    """

    groups_on_input: bool = True

    def __init__(self, name: str, weight_shape: tuple[int, ...], prior: GroupPrior,
                 pretrained: bool = False):
        super().__init__()
        self.site = name
        self.prior = prior
        out_features, fan_in = weight_shape[0], math.prod(weight_shape[1:])
        self.n_groups = weight_shape[1] if self.groups_on_input else weight_shape[0]
        # A prior with a global scale (GHS) starts it at 1 for training from scratch, so that
        # w̃ = w and Adam's steps move the weights by ~lr, and at the weight scale 1/√fan_in
        # when the means come from a pretrained net, so that w̃ = O(1) against its N(0, 1)
        # prior and a group can prune (see :class:`pbc.bayes.priors.HorseshoeScaleGuide`).
        init_scale = fan_in ** -0.5 if pretrained else 1.0
        # None for a per-weight prior (Sparse VD): the layer then has no z
        self.add_module("scale_guide", prior.guide(self.n_groups, init_scale=init_scale))
        # w = z·w̃ starts with the weights of :meth:`initial_weight_means` and Louizos et al.'s
        # weight noise (log Var = −9) whatever z starts at: w̃'s mean and log-variance are
        # rescaled by E[z]
        z0 = self._z_view_of_mean()
        self.w_loc = nn.Parameter(self.initial_weight_means(weight_shape) / z0)
        self.w_logvar = nn.Parameter(torch.empty(weight_shape).normal_(-9.0, 1e-2)
                                     - 2.0 * torch.log(torch.as_tensor(z0)))
        self.b_loc = nn.Parameter(torch.zeros(out_features))
        self.b_logvar = nn.Parameter(torch.empty(out_features).normal_(-9.0, 1e-2))
        self.register_buffer("kept_groups", torch.ones(self.n_groups))
        self._removed_any = False   # whether kept_groups holds a 0: masking costs a product

    # -- helpers ------------------------------------------------------------------------------
    @staticmethod
    def initial_weight_means(weight_shape: tuple[int, ...]) -> torch.Tensor:
        """The weights ``E[w]`` a layer trained from scratch starts at: ``N(0, 1/fan_in)``, as
        Louizos et al.'s ``LinearGroupNJ`` draws them."""
        return torch.randn(weight_shape) / math.sqrt(math.prod(weight_shape[1:]))

    def functional(self, x, weight, bias):
        raise NotImplementedError

    @torch.no_grad()
    def remove_groups(self, keep) -> None:
        """Remove the groups where ``keep`` (``(G,)``, bool) is false, for good: they stay
        removed whatever ``keep`` a later call gives."""
        keep = torch.as_tensor(keep, dtype=torch.bool, device=self.kept_groups.device)
        if keep.shape != self.kept_groups.shape:
            raise ValueError(f"{self.site}: keep mask of shape {tuple(keep.shape)} for "
                             f"{self.n_groups} groups")
        self.kept_groups.mul_(keep.to(self.kept_groups.dtype))
        self._removed_any = bool((self.kept_groups == 0).any())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a state saved before layers could lose groups has every group
        key = prefix + "kept_groups"
        if key not in state_dict:
            state_dict[key] = torch.ones_like(self.kept_groups)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._removed_any = bool((self.kept_groups == 0).any())

    def _output(self, x, w, b):
        """``layer_output`` with the removed groups' inputs (linear) or outputs (conv) at 0."""
        if not self._removed_any:
            return layer_output(self, x, w, b)
        if self.groups_on_input:
            return layer_output(self, x * self.kept_groups, w, b)
        return layer_output(self, x, w, b) * self.kept_groups[:, None, None]

    def group_view(self, z: torch.Tensor) -> torch.Tensor:
        """Lay ``z`` (``(..., G)``) along the weight's group dimension."""
        raise NotImplementedError

    @property
    def q_scale(self) -> nn.Module | None:
        """The variational module of ``z`` (see :mod:`pbc.bayes.priors`); ``None`` without
        groups."""
        return self.scale_guide

    @torch.no_grad()
    def _z_view_of_mean(self):
        """``E[z]`` laid along the weight's group dimension (``1.0`` without groups)."""
        q = self.q_scale
        return 1.0 if q is None else self.group_view(q.mean())

    def variational_moments(self):
        """``(μ, σ²)`` of ``w̃`` and of ``b̃`` — four tensors of the weight and bias shapes."""
        return self.w_loc, self.w_logvar.exp(), self.b_loc, self.b_logvar.exp()

    # -- model and guide ----------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Model half: sample ``z``, ``w | z``, ``b`` from the prior and apply the layer."""
        w_like, b_like = self.w_loc, self.b_loc
        if self.q_scale is None:  # per-weight prior (Sparse VD): w ~ p(w), b ~ N(0, 1)
            w = pyro.sample(f"{self.site}.w", self.prior.weight_prior(w_like.shape, w_like))
            b = pyro.sample(f"{self.site}.b", self._standard_bias_prior(b_like))
            return self._output(x, w, b)
        z = self.prior.sample_scales(self.site, self.n_groups, w_like)
        w = pyro.sample(f"{self.site}.w",
                        GroupScaledNormal.standard_prior(w_like.shape, self.group_view(z), w_like))
        if self.groups_on_input:
            b_prior = self._standard_bias_prior(b_like)
        else:
            b_prior = GroupScaledNormal.standard_prior(b_like.shape, z, b_like)
        b = pyro.sample(f"{self.site}.b", b_prior)
        return self._output(x, w, b)

    def guide(self) -> None:
        """Guide half: ``z ~ q(z)``, then ``w̃ ~ N(μ, σ²)``, ``b̃ ~ N(μ_b, σ_b²)``."""
        if self.q_scale is None:  # per-weight q(w) = N(θ, σ²), additive parameterisation
            # event dims: the whole weight tensor
            w_q = dist.Normal(self.w_loc, (0.5 * self.w_logvar).exp()).to_event(self.w_loc.dim())
            pyro.sample(f"{self.site}.w", w_q, infer=DEFERRED)
            pyro.sample(f"{self.site}.b", self._bias_guide(), infer=DEFERRED)
            return
        z = self.q_scale.sample(self.site)
        pyro.sample(f"{self.site}.w",
                    GroupScaledNormal(self.w_loc, z=self.group_view(z), logvar=self.w_logvar),
                    infer=DEFERRED)
        b_q = (self._bias_guide() if self.groups_on_input
               else GroupScaledNormal(self.b_loc, z=z, logvar=self.b_logvar))
        pyro.sample(f"{self.site}.b", b_q, infer=DEFERRED)

    @staticmethod
    def _standard_bias_prior(like):
        return _standard_normal(like.shape, like.dtype, like.device)

    def _bias_guide(self):
        """``q(b) = N(μ_b, σ_b²)``, one event of shape ``(out,)`` (``z = 1``)."""
        return GroupScaledNormal(self.b_loc, logvar=self.b_logvar)

    # -- posterior summaries --------------------------------------------------------------------
    @torch.no_grad()
    def posterior_mean(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(E[w], E[b])``: ``E[z]·μ`` (eq. 9) and ``μ_b`` (``E[z]·μ_b`` for a conv); 0 in
        the removed groups."""
        w_loc, _, b_loc, _ = self.variational_moments()
        if self.q_scale is None:
            return w_loc.clone(), b_loc.clone()
        z = self.q_scale.mean() * self.kept_groups
        bias = b_loc if self.groups_on_input else z * b_loc
        return self.group_view(z) * w_loc, bias.clone()

    @torch.no_grad()
    def clip_variances(self, max_var: float) -> None:
        """Project ``σ²`` of ``w̃`` and ``b̃`` onto ``(0, max_var]`` (after an optimiser step).

        Louizos et al.'s reference code does this (``clip_var``): it bounds the weight noise
        that the KL term ``½(σ² − 1 − log σ²)`` would otherwise drive towards ``σ² = 1``.
        """
        limit = math.log(max_var)
        self.w_logvar.clamp_(max=limit)
        self.b_logvar.clamp_(max=limit)

    @torch.no_grad()
    def load_point_estimate(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """Start the posterior means from a deterministic net's weights: ``μ = w / E[z]``
        (and ``μ_b = b / E[z]`` for a conv), so that :meth:`posterior_mean` returns them."""
        self.w_loc.copy_(weight / self._z_view_of_mean())
        if bias is not None:
            unscaled = self.groups_on_input or self.q_scale is None
            self.b_loc.copy_(bias if unscaled else bias / self.q_scale.mean())


class BayesLinear(BayesLayer):
    """Bayesian ``nn.Linear``; groups are input units.  ``x: (N, in) → (N, out)``."""

    groups_on_input = True

    def __init__(self, name: str, in_features: int, out_features: int, prior: GroupPrior,
                 pretrained: bool = False):
        super().__init__(name, (out_features, in_features), prior, pretrained)
        self.in_features, self.out_features = in_features, out_features

    def functional(self, x, weight, bias):
        return F.linear(x, weight, bias)

    def extra_repr(self):
        return f"{self.site!r}, in_features={self.in_features}, out_features={self.out_features}"

    def group_view(self, z):
        return z.unsqueeze(-2)  # (..., 1, in)


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class BayesConv2d(BayesLayer):
    """Bayesian ``nn.Conv2d`` (``groups = 1``); groups are output channels.

    ``x: (N, C, H, W) → (N, F, H', W')`` with ``F.conv2d``'s ``stride``, ``padding`` (an int,
    a pair, ``"same"`` or ``"valid"``) and ``dilation``; the weight is
    ``(F, C, kH, kW)`` for ``kernel_size = (kH, kW)`` (or ``k`` for ``(k, k)``).  The attributes
    hold the arguments as given.
    """

    groups_on_input = False

    def __init__(
        self, name: str, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
        prior: GroupPrior, padding: int | tuple[int, int] | str = 0, pretrained: bool = False,
        stride: int | tuple[int, int] = 1, dilation: int | tuple[int, int] = 1,
    ):
        super().__init__(name, (out_channels, in_channels, *_pair(kernel_size)), prior,
                         pretrained)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.padding = kernel_size, padding
        self.stride, self.dilation = stride, dilation

    @staticmethod
    def initial_weight_means(weight_shape: tuple[int, ...]) -> torch.Tensor:
        """``U(±1/√fan_in)``, the draw of ``nn.Conv2d.reset_parameters`` (Kaiming-uniform with
        ``a = √5``) and of Louizos et al.'s ``Conv2dGroupNJ``: a standard deviation √3 below
        ``N(0, 1/fan_in)``."""
        weight = torch.empty(weight_shape)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        return weight

    def functional(self, x, weight, bias):
        return F.conv2d(x, weight, bias, stride=self.stride, padding=self.padding,
                        dilation=self.dilation)

    def extra_repr(self):
        return (f"{self.site!r}, {self.in_channels}, {self.out_channels}, "
                f"kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding!r}, dilation={self.dilation}")

    def group_view(self, z):
        return z[..., None, None, None]  # (..., F, 1, 1, 1)
