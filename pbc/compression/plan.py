"""What a method hands the compress stage, and the structured export shared by all methods.

A :class:`CompressionPlan` holds the trained network's plain state dict, the keep masks and
a per-layer quantiser.  :func:`structured_export` removes pruned units and channels
physically (a ``select`` layer picks single kept inputs of a linear layer);
:func:`unstructured_plan` builds the plan of a method that prunes single weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from pbc.compression.masks import graph_unit_masks, groups_of_weights, propagate_masks, traced
from pbc.compression.quantise import Quantised
from pbc.graph import prune
from pbc.nets import Architecture, LayerSpec, build_network, sized_modules

INDEX_BITS = {"linear": 5, "conv": 8}     # relative-index bits of the CSR streams
KMEANS_BITS = {"linear": 5, "conv": 8}    # Deep Compression's codebook sizes (2^bits)


@dataclass
class CompressionPlan:
    """What a method hands to the shared export → quantise → pack → account path.

    ``state`` is the trained network's plain state dict (posterior means for the Bayesian
    methods); ``weight_keep`` the unstructured keep masks of the methods that prune single
    weights (applied before the structured export); ``masks`` the structured
    ``(in_mask, out_mask)`` per weighted layer; ``quantise(name, w)`` quantises the pruned
    weights of a layer; ``thresholds`` is recorded per layer (``None`` where none applies).
    """

    state: dict[str, torch.Tensor]
    masks: dict[str, tuple[np.ndarray, np.ndarray]]
    quantise: Callable[[str, np.ndarray], Quantised]
    weight_keep: dict[str, np.ndarray] = field(default_factory=dict)
    thresholds: dict[str, float | None] = field(default_factory=dict)


@dataclass
class Structured:
    """A structurally pruned network: its architecture and plain state dict."""

    arch: Architecture
    state: dict[str, torch.Tensor]
    weighted: list[str]          # names of the weighted layers, in order


def structured_export(arch: Architecture, state: dict[str, torch.Tensor],
                      masks: dict[str, tuple[np.ndarray, np.ndarray]]) -> Structured:
    """Remove pruned units/channels from ``state`` (a ``build_network(arch)`` state dict).

    ``masks[name] = (in_mask, out_mask)`` as from :func:`pbc.compression.masks.propagate_masks`.
    A network of the user's code is pruned along its dependency graph
    (:func:`graph_structured_export`).
    """
    if arch.factory is not None:
        return graph_structured_export(arch, state, masks)
    specs, out, weighted = [], {}, []
    alive = None                      # mask of the units the previous layers still produce
    prev_out = None                   # out-size of the previous weighted layer
    for s in arch.layers:
        if s.kind in ("linear", "conv"):
            in_m, out_m = masks[s.name]
            if alive is None:
                avail = np.ones(s.in_size, bool)
            else:
                avail = np.repeat(alive, s.in_size // prev_out)
            if np.any(in_m & ~avail):
                raise ValueError(f"{s.name}: input mask keeps units the previous layer removed")
            in_t, out_t = torch.from_numpy(in_m), torch.from_numpy(out_m)
            if s.kind == "linear" and not in_m[avail].all():
                index = torch.from_numpy(np.flatnonzero(in_m[avail]))
                sel = f"{s.name}_select"
                specs.append(LayerSpec("select", sel, int(avail.sum()), int(index.numel())))
                out[f"{sel}.index"] = index
            w = state[f"{s.name}.weight"][out_t][:, in_t]
            out[f"{s.name}.weight"] = w.contiguous()
            out[f"{s.name}.bias"] = state[f"{s.name}.bias"][out_t].contiguous()
            specs.append(LayerSpec(s.kind, s.name, int(in_m.sum()), int(out_m.sum()),
                                   s.kernel, s.padding))
            weighted.append(s.name)
            alive, prev_out = out_m, s.out_size
        elif s.kind == "batchnorm":
            keep = torch.from_numpy(alive)
            for key in ("weight", "bias", "running_mean", "running_var"):
                out[f"{s.name}.{key}"] = state[f"{s.name}.{key}"][keep].clone()
            out[f"{s.name}.num_batches_tracked"] = state[f"{s.name}.num_batches_tracked"]
            specs.append(LayerSpec("batchnorm", s.name, int(alive.sum()), int(alive.sum())))
        else:
            specs.append(s)
    return Structured(Architecture(arch.name + "-pruned", arch.input_shape, tuple(specs)),
                      out, weighted)


def graph_structured_export(arch: Architecture, state: dict[str, torch.Tensor],
                            masks: dict[str, tuple[np.ndarray, np.ndarray]]) -> Structured:
    """:func:`structured_export` of a factory network (``arch.factory``): the units that
    ``masks`` keep, plus those tied to kept units through additions or concatenations, which
    stay with zero weights (:func:`pbc.compression.masks.graph_unit_masks`); batch norms and
    other per-channel modules lose the channels their inputs lose."""
    groups = {s.name: (masks[s.name][0] if s.kind == "linear" else masks[s.name][1])
              for s in arch.weighted_layers()}
    _, physical, zeroed = graph_unit_masks(arch, groups)
    pruned, sizes = prune(build_network(arch), traced(arch), physical, zeroed,
                          {k: v.detach().cpu() for k, v in state.items()})
    pruned_arch = Architecture(arch.name + "-pruned", arch.input_shape, sized_modules(pruned),
                               arch.factory, arch.builder)
    return Structured(pruned_arch, {k: v.contiguous() for k, v in pruned.state_dict().items()},
                      [s.name for s in pruned_arch.weighted_layers()])


def unstructured_plan(arch: Architecture, state: dict[str, torch.Tensor],
                      weight_keep: dict[str, np.ndarray],
                      quantise: Callable[[str, np.ndarray], Quantised]) -> CompressionPlan:
    """The plan of a method that prunes single weights (DC, SWS): the structured masks are
    the units left without a weight (:func:`pbc.compression.masks.groups_of_weights`,
    propagated); no threshold applies."""
    groups = {s.name: groups_of_weights(s.kind, weight_keep[s.name],
                                        state[f"{s.name}.bias"].numpy())
              for s in arch.weighted_layers()}
    return CompressionPlan(state, propagate_masks(arch, groups), quantise, weight_keep,
                           dict.fromkeys(groups))
