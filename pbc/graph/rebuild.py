"""Rebuild a pruned network from a factory and a JSON-able record of its module sizes.

A pruned network is saved as a state dict and ``sizes``, the record
``{dotted_name: {"kind": "conv" | "linear" | "batchnorm", "in": int, "out": int,
"bias": bool}}`` of every ``Conv2d`` (with ``"groups"``), ``Linear`` and batch norm
module (:func:`module_sizes`).  To load it, build the model with its factory and
:func:`resize` it; ``load_state_dict(strict=True)`` then takes the pruned weights.

Reading a file never imports code that the file names: :func:`import_factory` is for the
factory string a caller trusts (typed on the command line), and callers pass it in.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
from collections.abc import Callable

import torch
from torch import nn

BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
#: sizes read back from a file must be whole numbers below this
MAX_UNITS = 1 << 20
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def _kind(m: nn.Module) -> str | None:
    if isinstance(m, nn.Conv2d):
        return "conv"
    if isinstance(m, nn.Linear):
        return "linear"
    return "batchnorm" if isinstance(m, BATCHNORMS) else None


def module_sizes(module: nn.Module) -> dict[str, dict]:
    """The sizes record of every ``Conv2d``, ``Linear`` and batch norm in ``module``
    (for a batch norm ``in == out == num_features`` and ``bias`` means ``affine``)."""
    sizes = {}
    for name, m in module.named_modules():
        kind = _kind(m)
        if kind == "conv":
            sizes[name] = {"kind": kind, "in": m.in_channels, "out": m.out_channels,
                           "bias": m.bias is not None, "groups": m.groups}
        elif kind == "linear":
            sizes[name] = {"kind": kind, "in": m.in_features, "out": m.out_features,
                           "bias": m.bias is not None}
        elif kind == "batchnorm":
            sizes[name] = {"kind": kind, "in": m.num_features, "out": m.num_features,
                           "bias": m.affine}
    return sizes


def rebuilt(m: nn.Module, n_in: int, n_out: int, bias: bool, groups: int = 1) -> nn.Module:
    """A fresh module of ``m``'s class and hyper-parameters with new unit counts.

    Convolutions keep kernel, stride, padding, dilation and padding mode; batch norms
    keep ``eps``, ``momentum``, ``affine`` (= ``bias``) and ``track_running_stats``.  The
    new module is on ``m``'s device and dtype and in ``m``'s training mode.
    """
    ref = next(m.parameters(), None)
    if ref is None:
        ref = next(m.buffers(), torch.zeros(()))
    kw = {"device": ref.device, "dtype": ref.dtype}
    kind = _kind(m)
    if kind == "conv":
        new = type(m)(n_in, n_out, m.kernel_size, stride=m.stride, padding=m.padding,
                      dilation=m.dilation, groups=groups, bias=bias,
                      padding_mode=m.padding_mode, **kw)
    elif kind == "linear":
        new = type(m)(n_in, n_out, bias=bias, **kw)
    elif kind == "batchnorm":
        new = type(m)(n_out, eps=m.eps, momentum=m.momentum, affine=bias,
                      track_running_stats=m.track_running_stats, **kw)
    else:
        raise ValueError(f"cannot resize a {type(m).__name__}")
    return new.train(m.training)


def replace_modules(root: nn.Module, new: dict[nn.Module, nn.Module]) -> None:
    """Put ``new[old]`` wherever ``old`` is a child of a module of ``root`` (every alias)."""
    for parent in list(root.modules()):
        for key, child in list(parent._modules.items()):
            if child in new:
                parent._modules[key] = new[child]


def _whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < MAX_UNITS


def _check_record(name, rec) -> None:
    ok = (isinstance(rec, dict) and rec.get("kind") in ("conv", "linear", "batchnorm")
          and _whole(rec.get("in")) and _whole(rec.get("out"))
          and _whole(rec.get("groups", 1)) and isinstance(rec.get("bias"), bool))
    if not ok:
        raise ValueError(f"sizes[{name!r}] is not a valid record: {rec!r}")


def resize(module: nn.Module, sizes: dict[str, dict]) -> nn.Module:
    """Replace, in place, each module whose sizes differ from the record ``sizes`` (as from
    :func:`module_sizes` of a pruned copy) by one of the recorded sizes; returns ``module``.

    ``ValueError`` when the record and the model do not name the same ``Conv2d`` /
    ``Linear`` / batch norm modules, a kind differs, or a record is malformed.
    """
    have = module_sizes(module)
    if set(have) != set(sizes):
        missing, extra = sorted(set(have) - set(sizes)), sorted(set(sizes) - set(have))
        raise ValueError(f"sizes do not describe this model: missing {missing}, "
                         f"unknown {extra}")
    new = {}
    for name, rec in sizes.items():
        _check_record(name, rec)
        if rec["kind"] != have[name]["kind"]:
            raise ValueError(f"{name}: recorded as {rec['kind']}, the model has a "
                             f"{have[name]['kind']}")
        if rec == have[name]:
            continue
        m = module.get_submodule(name)
        try:
            new[m] = rebuilt(m, rec["in"], rec["out"], rec["bias"], rec.get("groups", 1))
        except (ValueError, RuntimeError) as e:
            raise ValueError(f"{name}: cannot build {rec}: {e}") from None
    replace_modules(module, new)
    return module


def swappable(m: nn.Module) -> bool:
    """Whether ``m`` becomes a Bayesian layer (:func:`pbc.bayesianize`): exactly an
    ``nn.Linear``, or exactly an ``nn.Conv2d`` with ``groups = 1`` and ``padding_mode =
    "zeros"``.

    A subclass (whose forward may differ, or whose owner reads its ``weight`` directly, as
    ``nn.MultiheadAttention`` does its ``out_proj``), a depthwise or grouped convolution and a
    convolution with another padding mode stay deterministic.
    """
    return type(m) is nn.Linear or (type(m) is nn.Conv2d and m.groups == 1
                                    and m.padding_mode == "zeros")


def with_biases(module: nn.Module) -> nn.Module:
    """Give every :func:`swappable` layer of ``module`` without a bias a zero one, in place
    (the outputs do not change); returns ``module``.  These are the layers that become
    Bayesian, and a Bayesian layer always carries a bias: a plain copy of a Bayesian network
    loads its means only with these biases."""
    for m in module.modules():
        if swappable(m) and m.bias is None:
            w = m.weight
            m.bias = nn.Parameter(torch.zeros(w.shape[0], device=w.device, dtype=w.dtype))
    return module


@contextlib.contextmanager
def _working_directory_importable():
    """Let the import see the working directory's modules, as ``python -m`` does (a console
    script's ``sys.path`` lacks it)."""
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def import_factory(spec: str) -> Callable:
    """The callable named ``"package.module:attribute"`` (the attribute may be dotted).

    ``package.module`` is looked up on ``sys.path`` and in the working directory.  This
    imports it, i.e. runs its code: pass only a string you trust (typed by the user, or
    their own run's record), never one from a file handed over.  ``ValueError`` with a
    one-line message for a malformed string, a module that does not import, a missing
    attribute or a value that is not callable.
    """
    mod_name, sep, attr = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if not sep or not _DOTTED.match(mod_name) or not _DOTTED.match(attr):
        raise ValueError(f"factory {spec!r} is not of the form 'package.module:callable'")
    try:
        with _working_directory_importable():
            obj = importlib.import_module(mod_name)
    except Exception as e:  # noqa: BLE001 - any failure of the import is reported alike
        first = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(f"factory {spec!r}: cannot import {mod_name!r} "
                         f"({type(e).__name__}: {first})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"factory {spec!r}: {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"factory {spec!r}: {attr!r} is a {type(obj).__name__}, "
                         f"not callable")
    return obj
