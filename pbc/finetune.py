"""The ``finetune`` stage: train an analysed run on, without the groups its analysis pruned.

Pruning at the analyse stage's thresholds removes input units and channels that carried a
little signal; the rest of the posterior was fitted beside them.  ``pbc finetune RUN --out
NEW`` starts a new run directory from RUN's posterior (parameters and Adam's state), removes
for good the groups that RUN's thresholds prune
(:meth:`pbc.bayes.net.BayesNet.remove_groups`, on the masks of
:func:`pbc.compression.masks.kept_groups`), and maximises the same ELBO for ``epochs`` more
under a schedule that decays the rate to 0.  NEW is a run like any other: ``pbc analyse NEW``
chooses its thresholds and bits (the removed groups are pruned at every threshold, so its
error budget counts from the fine-tuned network), ``pbc compress NEW`` packs it.  NEW's
``config.json`` holds RUN's settings with ``finetune_from`` = RUN and the epochs, rate and
schedule of the fine-tuning; ``metrics.jsonl`` its epochs; the removed groups are in the
checkpoint's state (``<layer>.kept_groups``).
"""

from __future__ import annotations

import dataclasses

import torch

from pbc.bayes.summaries import layer_moments
from pbc.compression.masks import kept_groups
from pbc.config import TrainConfig
from pbc.defaults import FINETUNE_EPOCHS, FINETUNE_LR, FINETUNE_SCHEDULE
from pbc.io import StageError
from pbc.nets import Architecture
from pbc.rundir import RunDir, load_trained


def finetune_config(source, out: str, epochs: int = FINETUNE_EPOCHS, lr: float = FINETUNE_LR,
                    lr_schedule: str = FINETUNE_SCHEDULE, **settings) -> TrainConfig:
    """The :class:`TrainConfig` of a run that fine-tunes the analysed run ``source``: its
    settings, with ``out``, ``epochs``, ``lr``, ``lr_schedule`` and ``settings`` (``device``,
    ``threads``, ``resume``, ``progress``) replaced, no KL warm-up, ``finetune_from=source``
    (and a fresh start unless ``settings`` say ``resume=True``).

    StageError when ``source`` is not an analysed run of a method with group scales."""
    run = RunDir(source)
    trained = load_trained(run.path)
    method = trained.method
    if not method.has_groups:
        raise StageError(f"{run}: prior {trained.config.prior!r} has no group scales to "
                         f"remove; pbc finetune retrains BC-GNJ and BC-GHS runs")
    run.thresholds([layer.site for layer in trained.net.bayes_layers()])  # analysed?
    return dataclasses.replace(trained.config, out=str(out), epochs=epochs, lr=lr,
                               lr_schedule=lr_schedule, kl_warmup=0, finetune_from=str(source),
                               **{"resume": False, **settings})


def start_from_analysed(source, net, arch: Architecture) -> dict:
    """Load the analysed run ``source``'s posterior into ``net`` (a network of the same
    method and architecture ``arch``) and remove the groups its thresholds prune; return
    its optimiser state, for the optimiser that goes on."""
    trained = load_trained(source)
    net.load_state_dict(trained.net.state_dict())
    layers = net.bayes_layers()
    thresholds = trained.dir.thresholds([layer.site for layer in layers])
    posts = {layer.site: layer_moments(layer) for layer in layers}
    net.remove_groups(kept_groups(arch, posts, thresholds))
    return trained.checkpoint["optim"]


def kept_counts(net: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """``{layer: (groups kept, groups)}`` of a Bayesian network."""
    return {layer.site: (int(layer.kept_groups.sum().item()), layer.n_groups)
            for layer in net.bayes_layers()}
