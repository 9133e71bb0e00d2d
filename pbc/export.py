"""The ``export`` stage: a compressed run written in formats other tools load.

``pbc export RUN --format F`` starts from the run's quantised network (``quantised.pt``: the
pruned network with every weight rounded to its layer's precision, stored as float32) and
writes, by default into ``RUN`` under the name :data:`pbc.defaults.EXPORT_FILES` gives:

* ``int8`` — ``model.int8.pt``: the layers whose weights fit in 8 bits on integer kernels
  (:mod:`pbc.compression.lowbit`; written by :func:`pbc.compression.export.save_int8`, loaded
  by :func:`pbc.compression.export.load_compressed`);
* ``torchscript`` — ``model.torchscript.pt``: the network compiled by ``torch.jit.script``;
  ``torch.jit.load`` runs it without pbc, at any batch size.  The architecture record rides
  along as the archive's extra file ``pbc_arch.json``;
* ``onnx`` — ``model.onnx``: torch's default exporter (``torch.onnx.export`` on
  ``torch.export``, which needs the ``onnx`` extra: onnx and onnxscript; ONNX Runtime reads
  the file back), weights inside the file, one input ``input: (batch, C, H, W)`` float32
  with a dynamic batch dimension and one output ``logits: (batch, classes)``; the architecture
  record is the model's metadata ``pbc.arch``;
* ``state-dict`` — ``model.state_dict.pt``: ``torch.save(net.state_dict())`` (loads with
  ``torch.load(weights_only=True)``), and beside it ``model.state_dict.json``, whose ``arch``
  rebuilds the network: ``build_network(Architecture.from_dict(arch))`` then
  ``load_state_dict(state, strict=True)`` (:func:`load_state_dict_export`).

The record returned holds the test errors of the quantised network in memory and of the file
as read back by its own loader (the int8 loader, ``torch.jit.load``, ONNX Runtime, the
rebuild), side by side, and both files' sizes.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from pbc.compression import lowbit
from pbc.compression.export import load_export, read_export, save_int8
from pbc.defaults import EXPORT_FILES
from pbc.io import (
    ArtefactError,
    Commit,
    StageError,
    atomic_path,
    first_line,
    load_torch,
    read_json,
    save_torch,
    write_json,
)
from pbc.nets import Architecture, build_network, classification_error
from pbc.rundir import QUANTISED, RunDir, calibration_images, load_trained, run_splits

#: the ``format`` field of a state-dict export's JSON file
STATE_DICT_FORMAT = "pbc-state-dict"
#: the packages the ONNX format needs (the ``onnx`` extra), by import name
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
ONNX_INPUT, ONNX_OUTPUT = "input", "logits"
ONNX_ARCH = "pbc.arch"         # the ONNX metadata key of the architecture record
ARCH_FILE = "pbc_arch.json"    # the TorchScript archive's extra file holding it
#: the batch size of the example input the ONNX exporter traces (the batch stays dynamic)
EXAMPLE_BATCH = 2


def export(run_dir, fmt: str = "int8", out=None) -> dict:
    """Write the run's quantised network in format ``fmt`` (to ``out``, default
    ``RUN/<EXPORT_FILES[fmt]>``); returns what was written and the test errors."""
    if fmt not in FORMATS:
        raise StageError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    if fmt == "onnx":
        require_onnx()
    run = RunDir(run_dir)
    run.require(QUANTISED, "compress")
    out = Path(out) if out else run / EXPORT_FILES[fmt]
    with run.writing("pbc export"):
        trained = load_trained(run.path)
        builder = trained.arch.builder           # a network of the user's code: its factory
        arch, quantised = read_export(run / QUANTISED, builder)
        _, data = run_splits(trained.config)
        if fmt == "int8":                        # static activation scales: the val. split
            written = write_int8(out, arch, quantised, calibration_images(data))
        else:
            written = FORMATS[fmt].write(out, arch, quantised)
    back = FORMATS[fmt].read(out, builder)
    return {"path": str(out), "format": fmt, **written, "bytes": out.stat().st_size,
            "quantised_bytes": (run / QUANTISED).stat().st_size,
            "test_error": {
                "quantised": classification_error(quantised, data.test_x, data.test_y),
                fmt: classification_error(back, data.test_x, data.test_y)}}


def write_int8(path, arch: Architecture, net: nn.Module,
               calibration: torch.Tensor | None = None) -> dict:
    """Write ``net`` with the layers whose weights fit in 8 bits on int8 kernels, the
    activations between them ``uint8`` at scales fixed on the ``calibration`` images (the
    export stage gives the validation split; without, each layer quantises its input per
    call); returns which layers run in int8 and which in float32, and the scales.
    StageError when no layer fits."""
    if not isinstance(net, nn.Sequential):
        raise StageError("--format int8 is built for sequential networks only; export your "
                         "own network as torchscript, onnx or state-dict")
    names = lowbit.int8_layer_names(net)
    if not names:
        raise StageError(f"{QUANTISED}: no layer's weights fit in 8 bits (each has more than "
                         f"{lowbit.MAX_CODES} distinct values); nothing to export as int8")
    fast = lowbit.lowbit_network(net, names, calibration)
    save_int8(path, arch, fast)
    weighted = [n for n, m in net.named_children() if hasattr(m, "weight")]
    return {"int8_layers": names, "float_layers": [n for n in weighted if n not in names],
            "uint8_activations": lowbit.code_scales(fast),
            "int8_kernels": lowbit.int8_kernels("cpu")}


# ------------------------------------------------------------------------------- TorchScript
def save_torchscript(path, arch: Architecture, net: nn.Module) -> dict:
    """Write ``net`` compiled by ``torch.jit.script`` (no shape is fixed), with ``arch`` as
    the archive's extra file ``pbc_arch.json``; returns ``{"extra_files": [...]}``.
    StageError when the network cannot be compiled."""
    try:
        scripted = torch.jit.script(copy.deepcopy(net).eval())
    except Exception as e:  # TorchScript's frontend raises many kinds; all mean "cannot"
        raise StageError(f"the network cannot be compiled to TorchScript "
                         f"({type(e).__name__}: {first_line(e)}); try --format onnx or "
                         f"state-dict") from None
    with atomic_path(path) as tmp:
        torch.jit.save(scripted, str(tmp), _extra_files={ARCH_FILE: json.dumps(arch.to_dict())})
    return {"extra_files": [ARCH_FILE]}


def load_torchscript(path, builder=None) -> nn.Module:
    """``torch.jit.load`` of a TorchScript export, on the CPU (``builder`` unused: the file
    holds its code)."""
    return torch.jit.load(str(path), map_location="cpu")


# -------------------------------------------------------------------------------------- ONNX
def require_onnx() -> None:
    """StageError naming the ``onnx`` extra unless its packages are installed."""
    missing = [p for p in ONNX_PACKAGES if importlib.util.find_spec(p) is None]
    if missing:
        raise StageError(f"--format onnx needs {', '.join(missing)}: "
                         f"pip install 'pbc[onnx]'")


def save_onnx(path, arch: Architecture, net: nn.Module) -> dict:
    """Write ``net`` as ONNX through ``torch.onnx.export`` (its default, ``torch.export``-
    based exporter) with a dynamic batch dimension, the weights inside the file and ``arch``
    as the metadata ``pbc.arch``; returns the opset and the input's and output's names."""
    example = torch.zeros(EXAMPLE_BATCH, *arch.input_shape)
    with _quiet_onnx_exporter():
        program = torch.onnx.export(
            copy.deepcopy(net).eval(), (example,), input_names=[ONNX_INPUT],
            output_names=[ONNX_OUTPUT], dynamic_shapes=({0: torch.export.Dim("batch")},),
            verbose=False)
    program.model.metadata_props[ONNX_ARCH] = json.dumps(arch.to_dict())
    with atomic_path(path) as tmp:
        program.save(str(tmp), external_data=False)
    return {"opset": program.model.opset_imports[""], "input": ONNX_INPUT,
            "output": ONNX_OUTPUT}


@contextlib.contextmanager
def _quiet_onnx_exporter():
    """Within the block: no FutureWarnings from torch's internals and no notes that
    torchvision's operators are not registered (the network uses none)."""
    log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        log.setLevel(level)


class OnnxNetwork(nn.Module):
    """An ONNX file run by ONNX Runtime on the CPU (as many threads as torch uses), as a
    module: ``(N, C, H, W)`` float32 → ``(N, classes)`` logits."""

    def __init__(self, path):
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        self.session = ort.InferenceSession(str(path), options,
                                            providers=["CPUExecutionProvider"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feed = {ONNX_INPUT: x.detach().cpu().to(torch.float32).numpy()}
        return torch.from_numpy(self.session.run([ONNX_OUTPUT], feed)[0])


# -------------------------------------------------------------------------------- state dict
def arch_path(path) -> Path:
    """The JSON file beside a state-dict export: its name with ``.json`` for the last
    suffix (``model.state_dict.pt`` → ``model.state_dict.json``)."""
    return Path(path).with_suffix(".json")


def save_state_dict(path, arch: Architecture, net: nn.Module) -> dict:
    """Write ``net.state_dict()`` to ``path`` and ``{"format", "arch", "state_dict"}`` (the
    weights file's name) to :func:`arch_path`, together; returns ``{"arch_path": ...}``."""
    path = Path(path)
    meta = arch_path(path)
    if meta == path:
        raise StageError(f"{path}: a state-dict export needs a file name whose suffix is not "
                         f".json (its architecture goes to a .json beside it)")
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    with Commit(path.parent) as c:
        save_torch(c.path(path.name), state)
        write_json(c.path(meta.name), {"format": STATE_DICT_FORMAT, "arch": arch.to_dict(),
                                       "state_dict": path.name})
    return {"arch_path": str(meta)}


def load_state_dict_export(path, builder=None) -> nn.Module:
    """Rebuild a state-dict export: :func:`pbc.nets.build_network` of the architecture in
    :func:`arch_path` (``builder``: the factory of a network of the user's code), holding the
    weights of ``path`` (``strict=True``), in eval mode."""
    meta = read_json(arch_path(path))
    if not isinstance(meta, dict) or meta.get("format") != STATE_DICT_FORMAT:
        raise ArtefactError(f"{arch_path(path)}: not a pbc state-dict export's architecture")
    try:
        net = build_network(Architecture.from_dict(meta["arch"], builder))
        net.load_state_dict(load_torch(path), strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ArtefactError(f"{path}: architecture and weights do not match "
                            f"({type(e).__name__}: {first_line(e)})") from None
    return net.eval()


class Format(NamedTuple):
    """How a format is written and read back."""

    write: Callable[[Path, Architecture, nn.Module], dict]   # → the record's own fields
    read: Callable[..., nn.Module]          # (file, builder) → the file as a module


FORMATS: dict[str, Format] = {
    "int8": Format(write_int8, load_export),
    "torchscript": Format(save_torchscript, load_torchscript),
    "onnx": Format(save_onnx, lambda path, builder=None: OnnxNetwork(path)),
    "state-dict": Format(save_state_dict, load_state_dict_export),
}
