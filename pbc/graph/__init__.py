"""Structured pruning of any torch network: trace its channel dependencies with
``torch.fx``, turn per-group keep masks into consistent unit masks, remove pruned units
physically and rebuild the pruned network from a factory.  Imports torch and numpy only.

* :func:`trace` — :class:`ChannelGraph` of a module (:mod:`pbc.graph.deps`);
* :func:`graph_masks`, :func:`weight_counts` — unit masks and what stays zeroed
  (:mod:`pbc.graph.masks`);
* :func:`prune` — a smaller copy and its sizes record (:mod:`pbc.graph.prune`);
* :func:`resize`, :func:`with_biases`, :func:`module_sizes`, :func:`import_factory` —
  rebuilding (:mod:`pbc.graph.rebuild`).
"""

from pbc.graph.deps import ChannelGraph, trace
from pbc.graph.masks import graph_masks, weight_counts
from pbc.graph.prune import prune
from pbc.graph.rebuild import import_factory, module_sizes, resize, with_biases

__all__ = ["ChannelGraph", "graph_masks", "import_factory", "module_sizes", "prune", "resize",
           "trace", "weight_counts", "with_biases"]
