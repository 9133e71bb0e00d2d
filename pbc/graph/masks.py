"""Unit masks of every resizable module of a traced graph, from per-group keep masks.

Groups are, as in :func:`pbc.compression.masks.propagate_masks`, the output channels of a
convolution and the input units of a linear layer.  Over each class of tied channels
(:class:`pbc.graph.deps.ChannelGraph`):

* a channel is *produced* when any convolution producing it keeps it (a linear layer
  produces all its outputs), and *consumed* when any convolution reads it or any linear
  layer keeps one of its input units;
* it stays physically iff it is produced and consumed, or its class is fixed.

A producer whose own group is pruned while the channel stays (a tied producer keeps it,
e.g. across a residual add, or the class is fixed) keeps the channel with a zeroed filter
and bias; a linear layer's pruned input unit whose channel stays keeps a zeroed column.
The dense pruned layer computes with these zeros, so they count as stored weights.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from pbc.graph.deps import ChannelGraph

Masks = dict[str, tuple[np.ndarray, np.ndarray]]


def _group(group_masks: dict[str, np.ndarray], name: str, n: int) -> np.ndarray:
    if name not in group_masks:
        return np.ones(n, bool)
    g = np.asarray(group_masks[name], bool)
    if g.shape != (n,):
        raise ValueError(f"{name}: group mask of shape {g.shape}, expected ({n},)")
    return g


def graph_masks(graph: ChannelGraph, group_masks: dict[str, np.ndarray]
                ) -> tuple[Masks, Masks]:
    """Consistent unit masks and the units kept with zeroed weights.

    Parameters
    ----------
    graph : from :func:`pbc.graph.deps.trace`
    group_masks : module name → keep mask of its groups, ``(out_channels,)`` for a
        convolution and ``(in_features,)`` for a linear layer; a module left out keeps all
        its groups, and depthwise convolutions and batch norms have none.

    Returns
    -------
    masks : module name → ``(in_mask, out_mask)``, the units that stay physically, for every
        convolution, linear layer and batch norm the graph can resize (a per-channel module
        gets its channel mask twice); for the weighted layers of an ``nn.Sequential`` of
        :mod:`pbc.nets` the contract of ``propagate_masks`` except at inputs kept by a fixed
        class or a kept channel, where that function removes single linear inputs.
    zeroed : producer name → ``(in_zeroed, out_zeroed)``: units that stay but whose weights
        are zero — a convolution's pruned output channels (filter and bias) kept by a tied
        producer or a fixed class, a linear layer's pruned inputs of a channel that stays.
    """
    roots = graph.roots()
    n = len(roots)
    produced, consumed = np.zeros(n, bool), np.zeros(n, bool)
    groups = {}
    for name, kind in graph.kinds.items():
        ins, outs = graph.inputs[name], graph.outputs.get(name)
        if kind == "conv":
            groups[name] = _group(group_masks, name, len(outs))
            np.logical_or.at(produced, roots[outs], groups[name])
            consumed[roots[ins]] = True
        elif kind == "linear":
            groups[name] = _group(group_masks, name, len(ins))
            produced[roots[outs]] = True
            np.logical_or.at(consumed, roots[ins], groups[name])
    fixed = np.array(graph.fixed, bool)
    stays_root = fixed | (produced & consumed)

    def stays(ids):
        return stays_root[roots[ids]]

    masks, zeroed = {}, {}
    for name, kind in graph.kinds.items():
        keep_in = stays(graph.inputs[name])
        if kind in ("batchnorm", "depthwise"):
            masks[name] = (keep_in, keep_in.copy())
            continue
        keep_out = stays(graph.outputs[name])
        masks[name] = (keep_in, keep_out)
        if kind == "conv":
            zeroed[name] = (np.zeros_like(keep_in), keep_out & ~groups[name])
        else:
            zeroed[name] = (keep_in & ~groups[name], np.zeros_like(keep_out))
    return masks, zeroed


def weight_counts(module: nn.Module, masks: Masks, zeroed: Masks) -> dict[str, dict]:
    """Per weighted module of ``masks``: its weights before pruning, those that stay
    physically, and those among them that are zero by ``zeroed`` (biases not counted).

    A convolution keeps ``out·in·k_h·k_w / groups`` weights of its kept units (a depthwise
    one ``C·k_h·k_w``); a zeroed output channel zeroes its ``in·k_h·k_w`` weights, a
    zeroed linear input its ``out`` weights.
    """
    counts = {}
    for name, (keep_in, keep_out) in masks.items():
        m = module.get_submodule(name)
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        per = int(np.prod(m.weight.shape[2:], dtype=np.int64))   # k_h·k_w, 1 for linear
        z_in, z_out = zeroed.get(name, (np.zeros_like(keep_in), np.zeros_like(keep_out)))
        if isinstance(m, nn.Conv2d) and m.groups > 1:
            kept, zero = int(keep_out.sum()) * per, 0
        else:
            n_in, n_out = int(keep_in.sum()), int(keep_out.sum())
            kept = n_in * n_out * per
            zero = (int(z_out.sum()) * n_in + int(z_in.sum()) * n_out
                    - int(z_out.sum()) * int(z_in.sum())) * per
        counts[name] = {"weights": m.weight.numel(), "kept": kept, "zeroed": zero}
    return counts
