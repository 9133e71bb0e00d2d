"""Pyro effect handlers: local reparameterisation for the hierarchical ``w = z ⊙ w̃`` family.

Local reparameterisation (Kingma, Salimans & Welling 2015; Louizos et al. 2017, §3.2) draws a
layer's pre-activation instead of its weights.  With ``z`` drawn per example ``n`` and
``w̃ ~ N(μ, σ²)`` elementwise, the pre-activation given ``z`` is Gaussian:

* linear (groups = input units), ``x: (N, in)``, ``z: (N, in)``::

      mean = (x ⊙ z) μᵀ + μ_b,    var = (x ⊙ z)² (σ²)ᵀ + σ_b²

* conv (groups = output channels), ``z: (N, F)`` broadcast over ``(H', W')``::

      mean = z ⊙ (conv(x, μ) + μ_b),    var = z² ⊙ (conv(x², σ²) + σ_b²)

and ``out = mean + √var · ε``, ``ε ~ N(0, 1)``.  A layer without group scales (Sparse VD's
per-weight posterior) is the special case ``z = 1``.  The layers of :mod:`pbc.bayes.layers` sample
``z``, ``w`` and ``b`` as named sites and call the effectful ``layer_output``; this handler

1. does not draw the guide's sites marked ``infer={"local_reparam": True}`` — the global
   ``L.z`` (or its horseshoe factors), ``L.w`` and ``L.b``: each gets a placeholder value
   (:func:`placeholder`; the ELBO needs only their distributions, for the KL), so no
   weight is ever sampled; deterministic functions of those placeholders (the
   horseshoe's ``L.s`` and ``L.z``) are not recorded as sites (:func:`local_reparam_active`);
2. replaces ``layer_output`` by the draw above, using the guide's parameters of ``w̃`` and a
   fresh per-example draw of ``z`` from ``q(z)``.

TyXe's ``LocalReparameterizationMessenger`` is the precedent; this one adds the group scales.
"""

from __future__ import annotations

import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import effectful

_VAR_EPS = 1e-8  # keeps √var differentiable where a variance underflows to 0

# The guide marks its sites of z, w and b with this: under local reparameterisation the layer
# draws z per example itself, so the guide's global draws are not needed.
DEFERRED = {"local_reparam": True}


@effectful(type="local_reparam_active")
def local_reparam_active() -> bool:
    """Whether a :class:`LocalReparameterization` handles this call: the guide's deferred
    sites then hold placeholders, not draws.  An effect that the handler answers with
    ``True``; without it the default, ``False``."""
    return False


class LocalReparameterization(Messenger):
    """Draw Bayesian layers' outputs from their Gaussian pre-activations (see module doc)."""

    def _pyro_sample(self, msg):
        if msg["value"] is None and not msg["is_observed"] and msg["infer"].get("local_reparam"):
            msg["value"] = placeholder(msg["fn"])

    def _pyro_bayes_layer(self, msg):
        layer, x = msg["args"][0], msg["args"][1]
        msg["value"] = local_reparam_output(layer, x)

    def _pyro_local_reparam_active(self, msg):
        msg["value"] = True


def placeholder(fn) -> torch.Tensor:
    """The value of a deferred site: ones of the site's shape as an expanded scalar.

    Nothing reads it (the KL needs only the distribution, the layer output is drawn from the
    guide's parameters); it is free to build, where the distribution's mean cost a full
    weight-sized product per layer and step, and it lies in the supports of these sites
    (real, positive).  Dtype and device are those of the distribution's ``loc``.
    """
    base = getattr(fn, "base_dist", fn)
    like = base.loc
    return like.new_ones(()).expand(fn.batch_shape + fn.event_shape)


def local_reparam_output(layer, x: torch.Tensor) -> torch.Tensor:
    """One draw of ``layer``'s output for the batch ``x`` (``(N, ...)``), ``z`` per example."""
    w_loc, w_var, b_loc, b_var = layer.variational_moments()
    if layer.q_scale is None:  # per-weight posterior (Sparse VD): no group scale
        mean = layer.functional(x, w_loc, b_loc)
        var = layer.functional(x * x, w_var, b_var)
        return mean + torch.sqrt(var + _VAR_EPS) * torch.randn_like(mean)
    z = layer.q_scale.rsample_per_example(x.shape[0])  # (N, G)
    if layer.groups_on_input:
        xz = x * z
        mean = layer.functional(xz, w_loc, b_loc)
        var = layer.functional(xz * xz, w_var, b_var)
    else:
        z = z[:, :, None, None]  # (N, F, 1, 1)
        mean = z * layer.functional(x, w_loc, b_loc)
        var = (z * z) * layer.functional(x * x, w_var, b_var)
    return mean + torch.sqrt(var + _VAR_EPS) * torch.randn_like(mean)
