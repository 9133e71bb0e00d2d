"""What a method is: the hooks through which the stages train, evaluate and compress it.

A method (a prior on the weights, or a baseline) is one object.  The stages ask it, and
never branch on its name:

* train — :meth:`Method.validate`, :meth:`~Method.build`, :meth:`~Method.load_point_estimate`,
  :meth:`~Method.param_groups`, :meth:`~Method.before_epoch`, :meth:`~Method.loss`,
  :meth:`~Method.after_step`, :meth:`~Method.epoch_metrics`;
* evaluation — :meth:`~Method.plain_state`: the plain network's state dict that stands for
  the trained net (posterior means, point estimates, masked weights);
* analyse — :attr:`~Method.has_posterior`, :attr:`~Method.score_label`,
  :meth:`~Method.fixed_threshold`;
* compress — :meth:`~Method.compression_plan`.

The defaults describe a plain network trained by maximum likelihood.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from pyro import poutine
from torch import nn

from pbc.bayes.elbo import MeanFieldELBO
from pbc.compression.plan import CompressionPlan
from pbc.config import TrainConfig, saved_setting
from pbc.defaults import LR
from pbc.io import StageError
from pbc.nets import Architecture, build_network

LN2 = math.log(2.0)



class Method:
    """A method's hooks (see the module docstring).  Subclasses set :attr:`name`."""

    name: str = ""
    #: trains from a plain network's weights: ``--init-from`` is required
    needs_init_from: bool = False
    #: has a variational posterior for the analyse stage
    has_posterior: bool = False
    #: its posterior has group scales, whose groups ``pbc finetune`` can remove
    has_groups: bool = False
    #: what the analyse stage's pruning thresholds act on (posterior methods)
    score_name: str = ""
    score_label: str = ""

    def validate(self, config: TrainConfig) -> None:
        """Raise ``ValueError`` with a one-line reason for a setting this method cannot use."""
        if self.needs_init_from and not config.init_from and not config.resume:
            raise ValueError(f"--prior {self.name} retrains a trained plain network: pass "
                             f"--init-from RUN (from `pbc pretrain`)")

    # -- training ------------------------------------------------------------------------
    def build(self, config: TrainConfig, arch: Architecture) -> nn.Module:
        """The network that this method trains on ``arch``."""
        return build_network(arch)

    def settle(self, config: TrainConfig, net: nn.Module,
               saved: dict | None = None) -> TrainConfig:
        """``config`` with the settings it leaves to the method filled in, as training records
        them in ``config.json``; ``saved``: the saved config of the run being resumed.  A run
        without ``--lr`` takes :meth:`default_lr` when it starts and its saved rate when it
        resumes."""
        if config.lr is not None:
            return config
        lr = self.default_lr(config) if saved is None else saved_setting(saved, "lr")
        return dataclasses.replace(config, lr=lr)

    def default_lr(self, config: TrainConfig) -> float:
        """Adam's learning rate for a run that names none."""
        return LR

    def earlier_settings(self, config: TrainConfig) -> dict:
        """What a setting saved as ``None`` meant before pbc recorded the method's choice
        for it in ``config.json``."""
        return {}

    def load_point_estimate(self, net: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Start ``net`` from a plain network's state dict (``--init-from``)."""
        net.load_state_dict(state)

    def param_groups(self, net: nn.Module, config: TrainConfig) -> list[dict]:
        """Optimiser parameter groups; an optional ``lr_scale`` multiplies the learning rate."""
        return [{"params": list(net.parameters())}]

    def before_epoch(self, net: nn.Module, epoch: int, config: TrainConfig) -> None:
        """Called before each epoch (0-based ``epoch``)."""

    def complexity_scale(self, config: TrainConfig) -> float:
        """The weight of the complexity (KL) term against the full-data log-likelihood."""
        return 1.0

    def loss(self, net: nn.Module, elbo: MeanFieldELBO, x: torch.Tensor, y: torch.Tensor,
             subsample: torch.Tensor, size: int, kl_scale: float) -> tuple[torch.Tensor, dict]:
        """The minibatch loss and its parts (floats, summed into the epoch's metrics).

        ``x: (B, ...)``, ``y: (B,)`` are the examples ``subsample`` of a training set of
        ``size``; ``kl_scale`` weighs the complexity term."""
        loss = F.cross_entropy(net(x), y)
        return loss, {}

    def loss_metrics(self, sums: dict[str, float], steps: int, kl_scale: float) -> dict:
        """The epoch's loss metrics from the sums of :meth:`loss`'s values over ``steps``."""
        return {"cross_entropy": sums["loss"] / steps}

    def after_step(self, net: nn.Module, config: TrainConfig) -> None:
        """Called after each optimiser step."""

    def epoch_metrics(self, net: nn.Module) -> dict:
        """Extra per-epoch metrics."""
        return {}

    # -- evaluation and compression --------------------------------------------------------
    def plain_state(self, net: nn.Module) -> dict[str, torch.Tensor]:
        """The state dict of ``build_network(arch)`` that stands for the trained ``net``."""
        return net.state_dict()

    def evaluation_network(self, net: nn.Module, arch: Architecture) -> nn.Module:
        """The plain network that the train stage evaluates after each epoch: a fresh
        ``build_network(arch)`` (on ``net``'s device) holding :meth:`plain_state`."""
        plain = build_network(arch).to(next(net.parameters()).device)
        plain.load_state_dict(self.plain_state(net))
        return plain

    def fixed_threshold(self) -> tuple[float, str] | None:
        """``(threshold, rule name)`` the method prescribes for every layer (``None``: the
        analyse stage chooses one per layer)."""
        return None

    def compression_plan(self, run, config: TrainConfig, arch: Architecture,
                         net: nn.Module) -> CompressionPlan:
        """What the compress stage prunes and how it quantises (``run``: a
        :class:`pbc.rundir.RunDir`)."""
        raise StageError(f"{run.path}: a {self.name!r} run has nothing to compress; train with "
                         f"a compression method")


class ELBOMethod(Method):
    """A method trained by maximising an ELBO: ``net.model`` and ``net.guide`` share the
    signature ``(x, y, subsample, size)``.  The complexity term is weighed by running the
    guide under ``poutine.scale`` (its sites' KL terms carry the guide's scale)."""

    def loss(self, net, elbo, x, y, subsample, size, kl_scale):
        guide = net.guide if kl_scale == 1.0 else poutine.scale(net.guide, scale=kl_scale)
        terms = elbo.terms(net.model, guide, x, y, subsample=subsample, size=size)
        return terms.loss, {"expected_loglik": terms.expected_loglik.item(),
                            "kl": terms.kl.item() / kl_scale}

    def loss_metrics(self, sums, steps, kl_scale):
        return {"elbo": -sums["loss"] / steps, "expected_loglik": sums["expected_loglik"] / steps,
                "kl": sums["kl"] / steps, "kl_bits": sums["kl"] / steps / LN2,
                "kl_weight": kl_scale}
