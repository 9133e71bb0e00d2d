"""Compressed networks as plain torch modules: save, load, decode.  Never imports Pyro.

Three on-disk forms:

* ``*.pt`` — ``{"format", "arch": Architecture.to_dict(), "state_dict": {...}}`` saved with
  ``torch.save``; loads with ``torch.load(weights_only=True)``.  Weights whose magnitude is
  below the smallest normal float32 are stored as 0 (:func:`flush_subnormals`): they change
  no prediction, and subnormal operands make float arithmetic slow on many CPUs;
* ``*.int8.pt`` — the same form with format ``pbc-int8-network``: the layers that
  :mod:`pbc.compression.lowbit` runs on integer kernels hold ``weight_int8`` (int8) and
  ``weight_scale`` (float32) instead of ``weight``, and their static activation scales
  (``input_scale``, ``output_scale``; 0 where the activation is quantised per call);
  ``int8_layers`` names them;
* ``*.pbcz`` — the packed format of :mod:`pbc.compression.codec` (relative CSR + Huffman);
  its metadata holds the architecture and the small non-weight state (``select`` indices,
  batch norm).

All load into ``build_network(arch)`` of :mod:`pbc.nets` (int8 layers swapped in).  A network
of the user's own code records the factory that builds it; its loaders take that callable as
``builder`` (a file's record is never imported).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pbc.compression import codec, lowbit
from pbc.io import ArtefactError, load_torch, save_torch
from pbc.nets import Architecture, build_network

FORMAT = "pbc-compressed-network"
INT8_FORMAT = "pbc-int8-network"


def flush_subnormals(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with every floating-point value of magnitude below the smallest normal
    number of its dtype (a subnormal) set to 0; other tensors unchanged."""
    out = {}
    for k, v in state.items():
        if v.is_floating_point():
            v = torch.where(v.abs() < torch.finfo(v.dtype).tiny, torch.zeros_like(v), v)
        out[k] = v
    return out


def save_export(path, arch: Architecture, state: dict[str, torch.Tensor]) -> None:
    """Write a ``.pt`` export; subnormal weights are stored as 0 (:func:`flush_subnormals`)."""
    state = flush_subnormals({k: v.detach().cpu() for k, v in state.items()})
    save_torch(path, {"format": FORMAT, "arch": arch.to_dict(), "state_dict": state})


Builder = Callable[[], nn.Module] | None


def load_export(path, builder: Builder = None) -> nn.Module:
    """Rebuild a ``.pt`` export (``weights_only=True``) as a plain ``nn.Sequential``; an int8
    export (:func:`save_int8`) with its int8 layers."""
    return read_export(path, builder)[1]


def read_export(path, builder: Builder = None) -> tuple[Architecture, nn.Module]:
    """:func:`load_export`, with the architecture the file records."""
    obj = load_torch(path)
    fmt = obj.get("format") if isinstance(obj, dict) else None
    if fmt not in (FORMAT, INT8_FORMAT):
        raise ArtefactError(f"{path}: not a pbc compressed network")
    int8_layers = obj.get("int8_layers", []) if fmt == INT8_FORMAT else []
    return _build(path, obj["arch"], obj["state_dict"], int8_layers, builder)


def save_int8(path, arch: Architecture, net: nn.Sequential) -> list[str]:
    """Write ``net`` — :func:`pbc.compression.lowbit.lowbit_network` of an export of ``arch``
    — as an int8 export; returns the names of its int8 layers."""
    names = [n for n, m in net.named_children() if isinstance(m, lowbit.Int8Layer)]
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    save_torch(path, {"format": INT8_FORMAT, "arch": arch.to_dict(), "int8_layers": names,
                      "state_dict": state})
    return names


def _build(path, arch_dict, state, int8_layers=(), builder: Builder = None
           ) -> tuple[Architecture, nn.Module]:
    factory = arch_dict.get("factory") if isinstance(arch_dict, dict) else None
    if factory is not None and builder is None:
        raise ArtefactError(f"{path}: the network is built by the user's code ({factory}); "
                            f"pass that factory to load it (pbc never imports code a file "
                            f"names)")
    try:
        arch = Architecture.from_dict(arch_dict, builder)
        net = build_network(arch)
        for name in int8_layers:
            setattr(net, name, lowbit.empty_int8_like(getattr(net, name)))
        net.load_state_dict(state, strict=True)
        if int8_layers:
            lowbit.route_codes(net)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        raise ArtefactError(f"{path}: architecture and weights do not match "
                            f"({type(e).__name__}: {str(e).splitlines()[0]})") from None
    return arch, net.eval()


def packed_meta(arch: Architecture, extra_state: dict[str, torch.Tensor], source: dict) -> dict:
    """The JSON metadata stored in a ``.pbcz`` header (floats round-trip exactly)."""
    extra = {k: {"dtype": str(v.dtype).removeprefix("torch."), "shape": list(v.shape),
                 "data": v.detach().cpu().reshape(-1).tolist()} for k, v in extra_state.items()}
    return {"format": FORMAT, "arch": arch.to_dict(), "extra_state": extra, "source": source}


def state_from_packed(meta: dict, layers: list[codec.PackedLayer]) -> dict[str, torch.Tensor]:
    """Weights ``codebook[codes]`` and biases of each packed layer, plus the extra state."""
    state = {}
    for layer in layers:
        w = codec.dense_weights(layer).reshape(layer.shape)
        state[f"{layer.name}.weight"] = torch.from_numpy(np.ascontiguousarray(w))
        state[f"{layer.name}.bias"] = torch.from_numpy(layer.bias.astype(np.float32))
    for key, spec in meta.get("extra_state", {}).items():
        dtype = getattr(torch, spec["dtype"])
        state[key] = torch.tensor(spec["data"], dtype=dtype).reshape(spec["shape"])
    return state


def load_packed(path, builder: Builder = None) -> nn.Module:
    """Decode a ``.pbcz`` file into a plain ``nn.Sequential`` (torch and numpy only)."""
    try:
        meta, layers = codec.read_pbcz(path)
    except codec.CodecError as e:
        raise ArtefactError(str(e)) from None
    if meta.get("format") != FORMAT or "arch" not in meta:
        raise ArtefactError(f"{path}: packed file does not describe a pbc network")
    try:
        state = state_from_packed(meta, layers)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ArtefactError(f"{path}: bad extra state in the header ({e})") from None
    return _build(path, meta["arch"], state, builder=builder)[1]


def load_compressed(path, builder: Builder = None) -> nn.Module:
    """Load a ``.pbcz`` or ``.pt`` compressed network by its suffix."""
    p = Path(path)
    return load_packed(p, builder) if p.suffix == ".pbcz" else load_export(p, builder)
