"""Physical removal of pruned units from a copy of any traced network."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from pbc.graph.deps import ChannelGraph
from pbc.graph.masks import Masks
from pbc.graph.rebuild import module_sizes, rebuilt, replace_modules


def _zero(m: nn.Module, z_in: np.ndarray, z_out: np.ndarray) -> None:
    """Zero the filters (and biases) of output units ``z_out`` and the columns of input
    units ``z_in`` of ``m.weight: (out, in, ...)``, in place."""
    with torch.no_grad():
        if z_out.any():
            rows = torch.from_numpy(np.flatnonzero(z_out)).to(m.weight.device)
            m.weight[rows] = 0
            if m.bias is not None:
                m.bias[rows] = 0
        if z_in.any():
            m.weight[:, torch.from_numpy(np.flatnonzero(z_in)).to(m.weight.device)] = 0


def _sliced(m: nn.Module, kind: str, keep_in: np.ndarray, keep_out: np.ndarray) -> nn.Module:
    """A smaller copy of ``m`` holding the kept units' parameters and buffers.

    ``weight: (out, in, ...)`` becomes ``weight[keep_out][:, keep_in]`` (a depthwise
    convolution's ``(C, 1, kh, kw)`` and a batch norm's ``(C,)`` tensors keep ``keep_in``).
    """
    n_in, n_out = int(keep_in.sum()), int(keep_out.sum())
    if kind in ("batchnorm", "depthwise"):
        rows = torch.from_numpy(np.flatnonzero(keep_in))
        state = {k: (v if k == "num_batches_tracked" else v[rows.to(v.device)])
                 for k, v in m.state_dict().items()}
        bias = m.affine if kind == "batchnorm" else m.bias is not None
        new = rebuilt(m, n_in, n_out, bias, groups=n_in if kind == "depthwise" else 1)
    else:
        rows = torch.from_numpy(np.flatnonzero(keep_out)).to(m.weight.device)
        cols = torch.from_numpy(np.flatnonzero(keep_in)).to(m.weight.device)
        state = {"weight": m.weight[rows][:, cols]}
        if m.bias is not None:
            state["bias"] = m.bias[rows]
        new = rebuilt(m, n_in, n_out, m.bias is not None)
    new.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=True)
    return new


def prune(module: nn.Module, graph: ChannelGraph, masks: Masks, zeroed: Masks | None = None,
          state: dict[str, torch.Tensor] | None = None) -> tuple[nn.Module, dict[str, dict]]:
    """A new module with pruned units removed, and its sizes record.

    Parameters
    ----------
    module : the traced network (left unchanged; a deep copy is pruned)
    graph : ``trace(module, input_shape)``
    masks, zeroed : from :func:`pbc.graph.masks.graph_masks`; ``zeroed`` units are set to
        zero before the kept units are selected
    state : a state dict of ``module`` to prune instead of its own (e.g. posterior means)

    Returns
    -------
    pruned : the copy in which every module of ``masks`` is replaced by one of the same
        class and hyper-parameters holding the kept units' weights and buffers
    sizes : :func:`pbc.graph.rebuild.module_sizes` of ``pruned`` (JSON-able)
    """
    new = copy.deepcopy(module)
    if state is not None:
        new.load_state_dict(state, strict=True)
    for name in masks:
        if name not in graph.kinds:
            raise ValueError(f"{name}: not a module the graph can resize")
    for name, (z_in, z_out) in (zeroed or {}).items():
        _zero(new.get_submodule(name), np.asarray(z_in, bool), np.asarray(z_out, bool))
    replace = {}
    with torch.no_grad():
        for name, (keep_in, keep_out) in masks.items():
            m = new.get_submodule(name)
            keep_in, keep_out = np.asarray(keep_in, bool), np.asarray(keep_out, bool)
            if keep_in.all() and keep_out.all():
                continue
            replace[m] = _sliced(m, graph.kinds[name], keep_in, keep_out)
    replace_modules(new, replace)
    return new, module_sizes(new)
