"""The Bayesian network: any module body whose weighted layers are Bayesian.

A :class:`BayesNet` wraps a ``body`` (an ``nn.Module`` mapping inputs to logits) in which
some layers are :class:`~pbc.bayes.layers.BayesLinear` / :class:`~pbc.bayes.layers.BayesConv2d`,
at any depth, and adds ``model`` and ``guide`` callables with a shared signature.  Two ways
to get one:

* from a named :class:`~pbc.nets.Architecture` — ``BayesNet(arch, prior)`` builds the same
  ``nn.Sequential`` as :func:`~pbc.nets.build_network`, with Bayesian layers in place of
  ``Linear`` / ``Conv2d``; layer names are stable (``conv1``, ``fc1`` …);
* from any module — :func:`pbc.bayes.bayesianize.bayesianize` swaps the layers of a copy
  and passes it here as the body.

A Bayesian layer's site prefix is its dotted path in the body (``fc1``, ``layer1.0.conv1``),
and so are the keys of :meth:`BayesNet.posterior_mean_state_dict`.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Mapping

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pbc.bayes.layers import BayesConv2d, BayesLayer, BayesLinear
from pbc.bayes.priors import GroupPrior
from pbc.graph.rebuild import swappable
from pbc.nets import Architecture, build_network, plain_layer


def bayes_body(arch: Architecture, prior: GroupPrior, pretrained: bool = False
               ) -> nn.Sequential:
    """``arch``'s layers as an ``nn.Sequential`` named by the specs, with Bayesian layers
    under ``prior`` in place of ``linear`` and ``conv`` (the plain layers of
    :func:`~pbc.nets.build_network` otherwise)."""
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
    return nn.Sequential(OrderedDict(mods))


def bayes_layer(path: str, m: nn.Module, prior: GroupPrior, pretrained: bool) -> BayesLayer:
    """The Bayesian layer that replaces the :func:`swappable` ``m`` at ``path``, on ``m``'s
    device and dtype.  With ``pretrained`` its posterior means start at ``m``'s weight and
    bias (a missing bias at 0)."""
    if isinstance(m, nn.Linear):
        layer = BayesLinear(path, m.in_features, m.out_features, prior, pretrained=pretrained)
    else:
        layer = BayesConv2d(path, m.in_channels, m.out_channels, m.kernel_size, prior,
                            padding=m.padding, pretrained=pretrained, stride=m.stride,
                            dilation=m.dilation)
    layer.to(device=m.weight.device, dtype=m.weight.dtype)
    if pretrained:
        layer.load_point_estimate(m.weight.detach(),
                                  None if m.bias is None else m.bias.detach())
    return layer


def bayes_copy(module: nn.Module, prior: GroupPrior, pretrained: bool) -> nn.Module:
    """A deep copy of ``module`` in which every :func:`~pbc.graph.rebuild.swappable` layer is
    the Bayesian layer of :func:`bayes_layer`, named by its dotted path; other modules are
    copied as they are.  ``ValueError`` when ``module`` is itself such a layer."""
    body = copy.deepcopy(module)
    if swappable(body):
        raise ValueError(f"the module is itself a {type(body).__name__}: wrap it, e.g. "
                         f"nn.Sequential(module), so that its sites have a name")
    # id of a swapped module → its Bayesian layer, named by its first path (a module
    # registered at two paths becomes one layer, at both)
    swaps = {id(m): bayes_layer(path, m, prior, pretrained)
             for path, m in body.named_modules() if swappable(m)}
    places = [(path, m) for path, m in body.named_modules(remove_duplicate=False)
              if id(m) in swaps]
    for path, m in places:
        body.set_submodule(path, swaps[id(m)])
    return body


class BayesNet(nn.Module):
    """A body with Bayesian weighted layers under ``prior``, as a Pyro model and guide.

    ``model(x, y, subsample, size)`` samples every layer's sites (global) as the body's
    forward calls the layers, computes logits ``(N, classes)``, then observes ``y`` inside
    ``pyro.plate("data", size, subsample=subsample)``, whose scale ``size / len(subsample)``
    turns the minibatch log-likelihood into a full-data estimate.
    ``guide(x, y, subsample, size)`` samples every layer's guide sites; its arguments are
    unused (mean field) but kept so model and guide share a signature.

    Parameters
    ----------
    body : nn.Module or Architecture
        A module whose forward maps ``x: (N, ...)`` to logits ``(N, classes)`` and calls each
        of its Bayesian layers once, each layer's ``site`` its dotted path in ``body``; or a
        named architecture, whose body :func:`bayes_body` builds (``arch`` then holds it; it
        is ``None`` for any other body).
    prior : GroupPrior
        The prior of every Bayesian layer (the layers hold it too).
    pretrained : bool
        Architectures only: start a global group scale (GHS) at the layer's weight scale for
        means that :meth:`load_point_estimate` will load (see
        :class:`pbc.bayes.layers.BayesLayer`).  A module body's layers are built already.
    name : str
        The name under which :meth:`guide` registers the parameters in Pyro's param store.

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

    def __init__(self, body: nn.Module | Architecture, prior: GroupPrior,
                 pretrained: bool = False, name: str = "net"):
        super().__init__()
        self.arch = body if isinstance(body, Architecture) else None
        if self.arch is not None:
            body = (bayes_body(self.arch, prior, pretrained) if self.arch.factory is None
                    else bayes_copy(build_network(self.arch), prior, pretrained))
        self.prior, self.name = prior, name
        self.body = body
        # every Bayesian layer once, in the body's module order; the dotted path of each
        self._paths = {}
        for path, m in body.named_modules():
            if isinstance(m, BayesLayer):
                if m.site != path:
                    raise ValueError(f"layer {path!r} has site prefix {m.site!r}: a Bayesian "
                                     f"layer's site prefix is its path in the body")
                self._paths[path] = m
        self._bayes = list(self._paths.values())

    def bayes_layers(self) -> list[BayesLayer]:
        """The Bayesian layers at any depth of the body, in its module order."""
        return list(self._bayes)

    def scale_log_variances(self) -> list[nn.Parameter]:
        """The log-variances of every group scale's posterior ``q(z)`` (none for Sparse VD)."""
        return [p for layer in self._bayes if layer.q_scale is not None
                for p in layer.q_scale.log_variances()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, classes)`` for ``x: (N, ...)``; samples the layers' model sites."""
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

    def remove_groups(self, keep: Mapping[str, object]) -> None:
        """Remove for good, in each layer that ``keep`` names by site, the groups where its
        mask (``(G,)``, bool) is false (:meth:`pbc.bayes.layers.BayesLayer.remove_groups`)."""
        unknown = set(keep) - set(self._paths)
        if unknown:
            raise KeyError(f"no Bayesian layers {sorted(unknown)}; layers are {list(self._paths)}")
        for site, mask in keep.items():
            self._paths[site].remove_groups(mask)

    def clip_variances(self, max_var: float | Mapping[str, float] | None) -> None:
        """Bound each layer's weight variance ``σ²``: by ``max_var`` in every layer, or by
        ``max_var[site]`` in the layers it names (no-op for ``None``).

        Group priors only: Sparse VD bounds ``log α`` inside its KL instead, and its pruned
        weights need ``σ² ≫ θ²``.
        """
        if max_var is None or not self.prior.groups:
            return
        for layer in self._bayes:
            bound = max_var.get(layer.site) if isinstance(max_var, Mapping) else max_var
            if bound is not None:
                layer.clip_variances(bound)

    def _places(self):
        """``(path, module)`` at every place in the body, a module registered twice at each."""
        return self.body.named_modules(remove_duplicate=False)

    def _plain_state_keys(self) -> list[str]:
        """The keys of the body's state dict that do not belong to a Bayesian layer."""
        prefixes = tuple(f"{p}." for p, m in self._places() if isinstance(m, BayesLayer))
        return [k for k in self.body.state_dict() if not k.startswith(prefixes)]

    @torch.no_grad()
    def posterior_mean_state_dict(self) -> dict[str, torch.Tensor]:
        """The body's state as a plain network's state dict: ``<path>.weight`` = ``E[w]`` and
        ``<path>.bias`` = ``E[b]`` for each Bayesian layer at dotted ``path``, every other
        module's state (batch norm …) under its own keys, in the body's module order.

        It loads strictly into :func:`~pbc.nets.build_network` of an architecture, or into
        the module a body was made from when each of its swapped layers has a bias."""
        owned = {}  # a module's path → its own (non-Bayesian) state-dict keys
        for key in self._plain_state_keys():
            owned.setdefault(key.rpartition(".")[0], []).append(key)
        state = self.body.state_dict()
        out = {}
        for path, m in self._places():
            if isinstance(m, BayesLayer):
                out[f"{path}.weight"], out[f"{path}.bias"] = m.posterior_mean()
            for key in owned.get(path, ()):
                out[key] = state[key].clone()
        return out

    @torch.no_grad()
    def load_point_estimate(self, state: dict[str, torch.Tensor]) -> None:
        """Initialise posterior means from a plain network's state dict (``--init-from``):
        each Bayesian layer at ``path`` from ``<path>.weight`` and ``<path>.bias`` (a missing
        bias leaves ``μ_b`` as it is), every other key of the body strictly from ``state``."""
        for path, m in self._paths.items():
            m.load_point_estimate(state[f"{path}.weight"], state.get(f"{path}.bias"))
        wanted = self._plain_state_keys()
        missing = [k for k in wanted if k not in state]
        if missing:
            raise KeyError(f"state dict lacks {missing}")
        self.body.load_state_dict({k: state[k] for k in wanted}, strict=False)
