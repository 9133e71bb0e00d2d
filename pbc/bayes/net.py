"""The Bayesian counterpart of the named architectures of :mod:`pbc.nets`.

The same :class:`~pbc.nets.Architecture` record builds

* :func:`~pbc.nets.build_network` — a plain ``nn.Sequential`` (torch only;
  deterministic training, posterior-mean evaluation, the compressed export), and
* :class:`BayesNet` — the same layers with :class:`~pbc.bayes.layers.BayesLinear` /
  :class:`~pbc.bayes.layers.BayesConv2d` in place of ``Linear`` / ``Conv2d``, plus ``model`` and
  ``guide`` callables with a shared signature.

Layer names are stable (``conv1``, ``fc1`` …) and are the Pyro site prefixes.
"""

from __future__ import annotations

from collections import OrderedDict

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pbc.bayes.layers import BayesConv2d, BayesLayer, BayesLinear
from pbc.bayes.priors import GroupPrior
from pbc.nets import Architecture, plain_layer


class BayesNet(nn.Module):
    """``arch`` with Bayesian weighted layers under ``prior``.

    ``model(x, y, subsample, size)`` samples every layer's sites (global), computes logits, then
    observes ``y`` inside ``pyro.plate("data", size, subsample=subsample)``, whose scale
    ``size / len(subsample)`` turns the minibatch log-likelihood into a full-data estimate.
    ``guide(x, y, subsample, size)`` samples every layer's guide sites; its arguments are
    unused (mean field) but kept so model and guide share a signature.
    ``pretrained`` starts a global group scale (GHS) at the layer's weight scale for means
    that :meth:`load_point_estimate` will load (see :class:`pbc.bayes.layers.BayesLayer`).

    Parameters live in the module.  Two ways to train them:

    * module-local parameters (``pyro.settings.set(module_local_params=True)``, what
      :mod:`pbc.train` does): a torch optimiser over ``net.parameters()`` and the loss
      ``MeanFieldELBO().differentiable_loss(net.model, net.guide, ...)`` (or ``.terms``);
    * Pyro's global param store (``module_local_params=False``, Pyro's default):
      :class:`pyro.infer.SVI` with a :mod:`pyro.optim` optimiser.  The guide then registers
      every parameter of the net with ``pyro.module(name, net)`` (store names
      ``"<name>$$$body.fc1.w_loc"`` …), which emits the ``param`` sites where ``SVI`` finds
      what to optimise.  As with any ``pyro.module``, a name holds the parameters of the
      first net registered under it: give two nets in one store different ``name`` s, or
      call ``pyro.clear_param_store()`` between them.
    """

    def __init__(self, arch: Architecture, prior: GroupPrior, pretrained: bool = False,
                 name: str = "net"):
        super().__init__()
        self.arch, self.prior, self.name = arch, prior, name
        mods = []
        for s in arch.layers:
            if s.kind == "linear":
                mods.append((s.name, BayesLinear(s.name, s.in_size, s.out_size, prior,
                                                 pretrained=pretrained)))
            elif s.kind == "conv":
                mods.append((s.name, BayesConv2d(s.name, s.in_size, s.out_size, s.kernel,
                                                 prior, padding=s.padding,
                                                 pretrained=pretrained)))
            else:
                mods.append((s.name, plain_layer(s)))
        self.body = nn.Sequential(OrderedDict(mods))
        self._bayes = [m for m in self.body if isinstance(m, BayesLayer)]

    def bayes_layers(self) -> list[BayesLayer]:
        return list(self._bayes)

    def scale_log_variances(self) -> list[nn.Parameter]:
        """The log-variances of every group scale's posterior ``q(z)`` (none for Sparse VD)."""
        return [p for layer in self._bayes if layer.q_scale is not None
                for p in layer.q_scale.log_variances()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, classes)`` for ``x: (N, C, H, W)``; samples the layers' model sites."""
        return self.body(x)

    def model(self, x, y=None, subsample=None, size=None):
        logits = self.body(x)
        n = x.shape[0]
        # plate dim -1: examples of the minibatch, a subsample of `size` training examples
        with pyro.plate("data", size or n, subsample=subsample if subsample is not None
                        else torch.arange(n, device=x.device)):
            return pyro.sample("obs", dist.Categorical(logits=logits), obs=y)

    def guide(self, x=None, y=None, subsample=None, size=None):
        if not pyro.settings.get("module_local_params"):
            # global param store: `param` sites for SVI (module-local: nothing per step)
            pyro.module(self.name, self)
        for layer in self._bayes:
            layer.guide()

    def clip_variances(self, max_var: float | None) -> None:
        """Bound every layer's weight variance ``σ²`` by ``max_var`` (no-op for ``None``).

        Group priors only: Sparse VD bounds ``log α`` inside its KL instead, and its pruned
        weights need ``σ² ≫ θ²``.
        """
        if max_var is not None and self.prior.groups:
            for layer in self._bayes:
                layer.clip_variances(max_var)

    @torch.no_grad()
    def posterior_mean_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict for :func:`build_network` holding ``E[w]``, ``E[b]`` (and BN state)."""
        out = {}
        for name, m in self.body.named_children():
            if isinstance(m, BayesLayer):
                out[f"{name}.weight"], out[f"{name}.bias"] = m.posterior_mean()
            else:
                out.update({f"{name}.{k}": v.clone() for k, v in m.state_dict().items()})
        return out

    @torch.no_grad()
    def load_point_estimate(self, state: dict[str, torch.Tensor]) -> None:
        """Initialise posterior means from a plain network's state dict (``--init-from``)."""
        for name, m in self.body.named_children():
            if isinstance(m, BayesLayer):
                m.load_point_estimate(state[f"{name}.weight"], state.get(f"{name}.bias"))
            else:
                m.load_state_dict({k[len(name) + 1:]: v for k, v in state.items()
                                   if k.startswith(name + ".")})
