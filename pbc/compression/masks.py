"""Keep masks: from per-group decisions to consistent unit masks of every weighted layer.

* :func:`structured_masks` — keep the groups whose prune score is at most the layer's
  threshold, then :func:`propagate_masks`; :func:`kept_groups` — the same as group masks;
* :func:`propagate_masks` — group masks → consistent ``(in_mask, out_mask)`` per layer: a
  layer's output unit goes when the next layer's input unit goes, and the other way round;
* :func:`groups_of_weights` — the groups an unstructured (per-weight) mask empties;
* :func:`kept_weight_mask` — the weights that survive structured pruning;
* :func:`surviving_weights` — per layer, the weights that survive both kinds of pruning.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np

from pbc.graph import ChannelGraph, graph_masks, trace
from pbc.nets import Architecture, build_network

if TYPE_CHECKING:  # the compressed networks' runtime needs no Pyro
    from pbc.bayes.summaries import LayerPosterior


def propagate_masks(arch: Architecture, group_masks: dict[str, np.ndarray]
                    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Consistent ``(in_mask, out_mask)`` per weighted layer from per-group keep masks.

    Groups are input units of linear layers and output channels of convolutions.  A unit
    goes from a layer's outputs when the next layer no longer reads it, and from a layer's
    inputs when the previous layer no longer produces it; a flatten maps channel ``c`` to the
    ``c·P … c·P + P − 1`` inputs of the next linear layer (``P`` spatial positions).

    A network of the user's code (``arch.factory``) follows its traced dependency graph
    (:func:`graph_unit_masks`): the masks are then of the weights that stay non-zero.
    """
    if arch.factory is not None:
        return graph_unit_masks(arch, group_masks)[0]
    specs = arch.weighted_layers()
    ins = [np.ones(s.in_size, bool) for s in specs]
    outs = [np.ones(s.out_size, bool) for s in specs]
    for i, s in enumerate(specs):
        g = np.asarray(group_masks[s.name], bool)
        if s.kind == "linear":
            ins[i] &= g
        else:
            outs[i] &= g
    for _ in range(2):  # forward then backward; a second sweep settles chains of removals
        for i in range(1, len(specs)):
            ins[i] &= np.repeat(outs[i - 1], specs[i].in_size // specs[i - 1].out_size)
        for i in range(len(specs) - 1, 0, -1):
            per = specs[i].in_size // specs[i - 1].out_size
            outs[i - 1] &= ins[i].reshape(specs[i - 1].out_size, per).any(axis=1)
    return {s.name: (ins[i], outs[i]) for i, s in enumerate(specs)}


@functools.lru_cache(maxsize=8)
def traced(arch: Architecture) -> ChannelGraph:
    """The channel dependency graph of ``build_network(arch)`` (traced once per record)."""
    return trace(build_network(arch), arch.input_shape)


def graph_unit_masks(arch: Architecture, group_masks: dict[str, np.ndarray]):
    """``(effective, physical, zeroed)`` unit masks of a factory network's weighted layers.

    ``physical[name] = (in_mask, out_mask)`` are the units its pruned copy holds; of those,
    ``zeroed`` are units a layer pruned that stay because other layers tied to them through
    an addition or concatenation keep them (their weights are set to 0); ``effective`` =
    physical and not zeroed, the contract of :func:`propagate_masks`.  Batch norms and other
    per-channel modules follow in ``physical`` (:func:`pbc.graph.graph_masks`)."""
    physical, zeroed = graph_masks(traced(arch), group_masks)
    effective = {}
    for s in arch.weighted_layers():
        (p_in, p_out), (z_in, z_out) = physical[s.name], zeroed.get(
            s.name, (np.zeros(s.in_size, bool), np.zeros(s.out_size, bool)))
        effective[s.name] = (p_in & ~z_in, p_out & ~z_out)
    return effective, physical, zeroed


def groups_of_weights(kind: str, weight_kept: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Group keep mask implied by an unstructured weight mask, exactly: a linear layer's input
    unit goes when its whole column is pruned; a conv filter only when all its weights are
    pruned *and* its bias is zero (otherwise it still outputs a constant)."""
    if kind == "linear":
        return weight_kept.any(axis=0)
    return weight_kept.reshape(weight_kept.shape[0], -1).any(axis=1) | (bias != 0)


def weight_masks(posts: dict[str, LayerPosterior], thresholds: dict[str, float]
                 ) -> dict[str, np.ndarray]:
    """Unstructured keep masks (weight shape) of per-weight posteriors: score ``≤`` threshold."""
    return {n: p.kept_at(thresholds[n]) for n, p in posts.items() if p.per_weight}


def structured_masks(arch: Architecture, posts: dict[str, LayerPosterior],
                     thresholds: dict[str, float]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Keep the groups whose prune score is ``≤`` their layer's threshold (and that the layer
    has not removed), then propagate.

    For a per-weight posterior the groups are those that keep a weight
    (:func:`groups_of_weights`)."""
    w_masks = weight_masks(posts, thresholds)
    groups = {n: (groups_of_weights(p.kind, w_masks[n], p.b_mean) if p.per_weight
                  else p.kept_at(thresholds[n])) for n, p in posts.items()}
    return propagate_masks(arch, groups)


def kept_groups(arch: Architecture, posts: dict[str, LayerPosterior],
                thresholds: dict[str, float]) -> dict[str, np.ndarray]:
    """Per layer, the groups (input units of a linear layer, output channels of a conv) that
    the thresholds keep once the masks are propagated: what
    :meth:`pbc.bayes.net.BayesNet.remove_groups` takes."""
    masks = structured_masks(arch, posts, thresholds)
    return {n: masks[n][0] if p.kind == "linear" else masks[n][1] for n, p in posts.items()}


def kept_weight_mask(kind: str, shape: tuple[int, ...], in_mask, out_mask) -> np.ndarray:
    """Boolean mask of the weights that survive structured pruning, of the weight's shape."""
    m = np.outer(out_mask, in_mask)
    return np.broadcast_to(m[:, :, None, None], shape) if kind == "conv" else m


def surviving_weights(posts: dict[str, LayerPosterior],
                      masks: dict[str, tuple[np.ndarray, np.ndarray]],
                      w_keep: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per layer, the weights (weight shape, boolean) that structured pruning (``masks``, as
    from :func:`structured_masks`) keeps and, for a per-weight posterior, ``w_keep`` too."""
    out = {}
    for name, post in posts.items():
        keep = kept_weight_mask(post.kind, post.w_mean.shape, *masks[name])
        out[name] = keep & w_keep[name] if name in w_keep else keep
    return out
