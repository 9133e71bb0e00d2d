"""Make any ``nn.Module`` Bayesian: swap its weighted layers for Bayesian ones.

:func:`bayesianize` copies a module and replaces every ``nn.Linear`` and every ``nn.Conv2d``
with ``groups = 1`` by :class:`~pbc.bayes.layers.BayesLinear` /
:class:`~pbc.bayes.layers.BayesConv2d` under one prior; the rest of the module (its forward,
skip connections, branches, batch norm, pooling …) stays as it is.  Each swapped layer's
Pyro sites are named by its dotted path in the module: ``layer1.0.conv1`` gives
``layer1.0.conv1.z``, ``layer1.0.conv1.w``, ``layer1.0.conv1.b``.  The result is a
:class:`~pbc.bayes.net.BayesNet` with the copy as its body, trained as the named
architectures are (``MeanFieldELBO`` over ``net.model`` and ``net.guide``).

Each swapped layer ``L`` has the generative process of :mod:`pbc.bayes.layers`::

    z ~ p(z)  (G,),    w = z ⊙ w̃,  w̃ ~ N(0, 1)  (weight shape),    b  (out,)

with ``G`` the input units of a linear layer, the output channels of a convolution; a
per-weight prior (Sparse VD) has no ``z``.

Example::

    net = pbc.bayesianize(model, prior="ghs", tau0=1e-5)   # pretrained start
    loss = MeanFieldELBO().differentiable_loss(net.model, net.guide, x, y)
    plain = copy.deepcopy(model)   # each swapped layer with a bias
    plain.load_state_dict(net.posterior_mean_state_dict())
"""

from __future__ import annotations

from torch import nn

from pbc import methods
from pbc.bayes.net import BayesNet, bayes_copy
from pbc.bayes.priors import GroupPrior
from pbc.methods.posterior import PosteriorMethod


def prior_names() -> tuple[str, ...]:
    """The names :func:`bayesianize` accepts: the registered methods with a posterior."""
    return tuple(n for n, m in methods.METHODS.items() if isinstance(m, PosteriorMethod))


def named_prior(prior: str | GroupPrior, **options) -> GroupPrior:
    """The prior called ``prior`` (a registered method's ``prior_family(**options)``), or
    ``prior`` itself when it is a :class:`~pbc.bayes.priors.GroupPrior` (then no options).
    ``ValueError`` naming the choices for an unknown name."""
    if isinstance(prior, GroupPrior):
        if options:
            raise ValueError(f"prior options {sorted(options)} given with a prior object")
        return prior
    if prior not in prior_names():
        raise ValueError(f"unknown prior {prior!r}; choose from {list(prior_names())}")
    return methods.METHODS[prior].prior_family(**options)


def bayesianize(module: nn.Module, prior: str | GroupPrior = "gnj", pretrained: bool = True,
                name: str = "net", **prior_options) -> BayesNet:
    """A Bayesian copy of ``module``: its linear and convolutional layers become Bayesian.

    Parameters
    ----------
    module : nn.Module
        Any module whose forward maps ``x: (N, ...)`` to logits ``(N, classes)`` and calls
        each of its ``Linear`` / ``Conv2d`` layers (rather than reading their weights) once per
        forward.  It is deep-copied; ``module`` itself is left unchanged.
    prior : str or GroupPrior
        ``"gnj"``, ``"ghs"``, ``"svd"`` (the registered methods with a posterior, see
        :func:`prior_names`) or a prior object.
    pretrained : bool
        Start the posterior means at the module's weights (the paper's pretrained start;
        a layer without bias starts ``E[b]`` at 0, and a GHS global scale at the layer's
        weight scale).  Otherwise the means start afresh, as for training from scratch.
    name : str
        The net's name in Pyro's param store (:class:`~pbc.bayes.net.BayesNet`).
    **prior_options
        Keyword arguments of the named prior family, e.g. ``tau0`` for ``"ghs"``.

    Returns
    -------
    BayesNet
        Body: the copy, each swapped layer at its place and named by its dotted path (the
        prefix of its sites ``<path>.z``, ``<path>.w``, ``<path>.b``; GHS adds ``<path>.sa``
        …).  Every other module stays as it was, trainable, deterministic: batch norm,
        pooling, ``Linear`` / ``Conv2d`` subclasses, grouped and depthwise convolutions
        (``groups > 1``) and convolutions whose ``padding_mode`` is not ``"zeros"`` (see
        :func:`swappable`).  ``posterior_mean_state_dict()`` loads strictly into a copy of
        ``module`` in which each swapped layer has a bias.

    Raises
    ------
    ValueError
        An unknown prior name (naming the choices), or ``module`` itself a layer to swap
        (wrap it in an ``nn.Sequential``, so that it has a path to be named by).
    """
    prior = named_prior(prior, **prior_options)
    return BayesNet(bayes_copy(module, prior, pretrained), prior, name=name)
