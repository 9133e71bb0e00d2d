"""Deep Compression (Han, Mao & Dally 2016) as a baseline method: ``pbc train --prior dc``.

1. **Prune and retrain** (the train stage).  Start from a trained plain network
   (``--init-from``).  During the first half of the epochs the keep fraction of each layer
   steps down linearly, at the start of every epoch, from 1 to its target: the weights of
   smallest magnitude among those still alive are masked.  The remaining epochs retrain the
   survivors.  A masked weight is re-zeroed after every optimiser step, so it stays exactly 0.
2. **Weight sharing** (the compress stage, :func:`compression_plan`).  Per-layer k-means on
   the surviving weights, linear initialisation between their min and max, ``2^8``
   centroids for convolutions and ``2^5`` for linear layers
   (:data:`pbc.compression.plan.KMEANS_BITS`).  Han et al. also fine-tune the shared centroids;
   this reference does not.
3. **Huffman coding** of the codes and of the relative CSR indices: the shared packed format
   (:mod:`pbc.compression.codec`), so DC's sizes come from the same accounting as every other
   method.

Target keep fractions are Han et al.'s (2015, "Learning both weights and connections",
Table 1/2) for LeNet-300-100 and LeNet-5 on MNIST; other architectures use
:data:`DEFAULT_KEEP`.  Han et al. chose them by a per-layer sensitivity analysis on their
data; ``--dc-keep`` sets others (a harder data set may need more weights).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pbc.compression.plan import KMEANS_BITS, unstructured_plan
from pbc.compression.quantise import Quantised, kmeans_codes
from pbc.config import SettingError
from pbc.methods.base import Method
from pbc.nets import Architecture, build_network

KEEP = {
    "lenet300": {"fc1": 0.08, "fc2": 0.09, "fc3": 0.26},
    "lenet5": {"conv1": 0.66, "conv2": 0.12, "fc1": 0.08, "fc2": 0.19},
}
KEEP["lenet5-relu"] = KEEP["lenet5"]
DEFAULT_KEEP = 0.1


def keep_fractions(arch: Architecture, overrides: dict[str, float] | None = None
                   ) -> dict[str, float]:
    """Target fraction of weights kept per weighted layer of ``arch`` (Han et al.'s unless
    ``overrides`` names the layer; ``--dc-keep fc1=0.12,…``)."""
    table = {**KEEP.get(arch.name, {}), **(overrides or {})}
    names = [s.name for s in arch.weighted_layers()]
    unknown = set(overrides or {}) - set(names)
    if unknown:
        raise SettingError(f"--dc-keep names unknown layers {sorted(unknown)}; "
                           f"layers are {names}")
    for name, frac in table.items():
        if not 0 < frac <= 1:
            raise ValueError(f"keep fraction of {name} must be in (0, 1], got {frac}")
    return {n: table.get(n, DEFAULT_KEEP) for n in names}


def scheduled_keep(target: float, epoch: int, epochs: int) -> float:
    """Keep fraction in force during ``epoch`` (0-based): linear from 1 at the first epoch's
    end to ``target`` at half the run, then ``target``."""
    ramp = max(1, epochs // 2)
    progress = min(1.0, (epoch + 1) / ramp)
    return 1.0 - (1.0 - target) * progress


def magnitude_mask(weight: torch.Tensor, mask: torch.Tensor, keep: float) -> torch.Tensor:
    """Keep the ``round(keep·numel)`` largest ``|w|`` among the weights ``mask`` still keeps
    (never revives a pruned weight; ties broken by position, so the count is exact)."""
    n_keep = int(round(keep * weight.numel()))
    n_keep = max(1, min(n_keep, int(mask.sum().item())))
    score = (weight.abs() * mask).flatten()
    score = torch.where(mask.flatten() > 0, score, torch.full_like(score, -1.0))
    idx = torch.topk(score, n_keep, sorted=False).indices
    new = torch.zeros_like(score)
    new[idx] = 1.0
    return new.view_as(weight)


def _mask_key(layer: str) -> str:
    """The mask buffer's name of ``layer``: ``mask_<layer>``, a dotted path's dots as ``__``
    (a buffer's name holds no dot)."""
    return "mask_" + layer.replace(".", "__")


class MaskedNetwork(nn.Module):
    """A plain network of ``arch`` with a 0/1 mask buffer ``mask_<layer>`` per weighted layer.

    State-dict keys: ``body.<layer>.weight`` … and ``mask_<layer>``; the plain network's
    state (masked weights) is :meth:`posterior_mean_state_dict` (the name the other methods'
    networks use for "the weights to evaluate").
    """

    def __init__(self, arch: Architecture, keep: dict[str, float] | None = None):
        super().__init__()
        self.arch = arch
        self.body = build_network(arch)
        self.targets = keep_fractions(arch, keep)
        for name in self.targets:
            weight = self.body.get_submodule(name).weight
            self.register_buffer(_mask_key(name), torch.ones_like(weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def mask(self, name: str) -> torch.Tensor:
        return self._buffers[_mask_key(name)]

    @torch.no_grad()
    def before_epoch(self, epoch: int, epochs: int) -> None:
        """Prune to this epoch's keep fractions (:func:`scheduled_keep`)."""
        for name, target in self.targets.items():
            weight = self.body.get_submodule(name).weight
            keep = scheduled_keep(target, epoch, epochs)
            self.mask(name).copy_(magnitude_mask(weight, self.mask(name), keep))
        self.after_step()

    @torch.no_grad()
    def kept_fraction(self) -> float:
        """Fraction of the weights still unmasked, over all weighted layers."""
        kept = sum(self.mask(n).sum().item() for n in self.targets)
        return kept / sum(self.mask(n).numel() for n in self.targets)

    @torch.no_grad()
    def after_step(self) -> None:
        """Re-zero the masked weights (an optimiser step may have moved them)."""
        for name in self.targets:
            self.body.get_submodule(name).weight.mul_(self.mask(name))

    @torch.no_grad()
    def posterior_mean_state_dict(self) -> dict[str, torch.Tensor]:
        state = {k: v.clone() for k, v in self.body.state_dict().items()}
        for name in self.targets:
            state[f"{name}.weight"].mul_(self.mask(name))
        return state

    @torch.no_grad()
    def load_point_estimate(self, state: dict[str, torch.Tensor]) -> None:
        self.body.load_state_dict(state)


class DeepCompression(Method):
    """``--prior dc``: prune by magnitude while retraining, then k-means weight sharing."""

    name = "dc"
    needs_init_from = True

    def build(self, config, arch):
        return MaskedNetwork(arch, config.dc_keep)

    def load_point_estimate(self, net, state):
        net.load_point_estimate(state)

    def before_epoch(self, net, epoch, config):
        net.before_epoch(epoch, config.epochs)

    def after_step(self, net, config):
        net.after_step()

    def epoch_metrics(self, net):
        return {"kept_fraction": net.kept_fraction()}

    def plain_state(self, net):
        return net.posterior_mean_state_dict()

    def compression_plan(self, run, config, arch, net):
        """Masks as pruned; a k-means codebook per layer."""
        state = {k: v.cpu() for k, v in net.posterior_mean_state_dict().items()}
        kinds = {s.name: s.kind for s in arch.weighted_layers()}

        def quantise(name: str, w: np.ndarray) -> Quantised:
            bits = KMEANS_BITS[kinds[name]]
            codes, codebook = kmeans_codes(w, bits)
            return Quantised(codes, codebook, {"bits": bits})

        keep = {n: net.mask(n).cpu().numpy().astype(bool) for n in kinds}
        return unstructured_plan(arch, state, keep, quantise)
