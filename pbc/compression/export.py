"""Compressed networks as plain torch modules: save, load, decode.  Never imports Pyro.

Two on-disk forms:

* ``*.pt`` — ``{"arch": Architecture.to_dict(), "state_dict": {...}}`` saved with
  ``torch.save``; loads with ``torch.load(weights_only=True)``.
* ``*.pbcz`` — the packed format of :mod:`pbc.compression.codec` (relative CSR + Huffman);
  its metadata holds the architecture and the small non-weight state (``select`` indices,
  batch norm).

Both load into ``build_network(arch)`` of :mod:`pbc.nets`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from pbc.compression import codec
from pbc.io import ArtefactError, load_torch, save_torch
from pbc.nets import Architecture, build_network

FORMAT = "pbc-compressed-network"


def save_export(path, arch: Architecture, state: dict[str, torch.Tensor]) -> None:
    save_torch(path, {"format": FORMAT, "arch": arch.to_dict(),
                      "state_dict": {k: v.detach().cpu() for k, v in state.items()}})


def load_export(path) -> nn.Module:
    """Rebuild a ``.pt`` export (``weights_only=True``) as a plain ``nn.Sequential``."""
    obj = load_torch(path)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ArtefactError(f"{path}: not a pbc compressed network")
    return _build(path, obj["arch"], obj["state_dict"])


def _build(path, arch_dict, state) -> nn.Module:
    try:
        net = build_network(Architecture.from_dict(arch_dict))
        net.load_state_dict(state, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ArtefactError(f"{path}: architecture and weights do not match "
                            f"({type(e).__name__}: {str(e).splitlines()[0]})") from None
    return net.eval()


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


def load_packed(path) -> nn.Module:
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
    return _build(path, meta["arch"], state)


def load_compressed(path) -> nn.Module:
    """Load a ``.pbcz`` or ``.pt`` compressed network by its suffix."""
    p = Path(path)
    return load_packed(p) if p.suffix == ".pbcz" else load_export(p)
