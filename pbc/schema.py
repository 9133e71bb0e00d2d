"""Checks of what is read back: artefact fields, checkpoints, figure headers.

Each check takes the parsed value and the path it came from and returns the value, or raises
:class:`~pbc.io.ArtefactError` with one line naming the file and what is wrong.  Nothing is
trusted for being pbc's own: a file may be damaged, hand-edited or hostile.
"""

from __future__ import annotations

import struct
from pathlib import Path

import torch

from pbc.io import ArtefactError

#: the largest magnitude a parameter of a checkpoint may have (a trained network's are
#: a few units; far larger ones overflow the forward pass)
MAX_ABS_PARAMETER = 1e6
#: the most pixels an analyse-stage figure may have (the report decodes it to float RGBA)
MAX_FIGURE_PIXELS = 16_000_000
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# predicates on parsed JSON values (a bool is not a number here)
def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def numbers(v) -> bool:
    return isinstance(v, dict) and all(is_number(x) or x is None for x in v.values())


def objects(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, dict) for x in v)


def object_of_objects(v) -> bool:
    return isinstance(v, dict) and all(isinstance(x, dict) for x in v.values())


def calibration_record(v) -> bool:
    """A calibration record (``predictive.json``): numbers ``error``, ``nll``, ``ece`` and
    ``bins`` with ``M ≥ 1`` whole-number counts, ``M + 1`` numeric edges and ``M``
    confidences and accuracies (numbers, or ``None`` for an empty bin)."""
    if not isinstance(v, dict) or not all(is_number(v.get(k)) for k in ("error", "nll", "ece")):
        return False
    b = v.get("bins")
    if not isinstance(b, dict):
        return False
    edges, count, conf, acc = (b.get(k) for k in ("edges", "count", "confidence", "accuracy"))
    if not all(isinstance(a, list) for a in (edges, count, conf, acc)):
        return False
    m = len(count)
    return (m >= 1 and len(edges) == m + 1 and len(conf) == len(acc) == m
            and all(is_number(e) for e in edges) and all(is_int(c) and c >= 0 for c in count)
            and all(a is None or is_number(a) for a in conf + acc))


def calibration_records(v) -> bool:
    """A non-empty object whose values are :func:`calibration_record` s."""
    return isinstance(v, dict) and bool(v) and all(calibration_record(x) for x in v.values())


def check_fields(record, path, fields: dict) -> dict:
    """``record`` if it is a JSON object whose fields have the types the readers rely on
    (``fields``: name → ``(check, what it must be)``; an absent field is not checked, older
    artefacts lack some); ArtefactError naming ``path`` otherwise."""
    if not isinstance(record, dict):
        raise ArtefactError(f"{path}: a JSON {type(record).__name__}, not an object")
    for key, (ok, what) in fields.items():
        if key in record and not ok(record[key]):
            raise ArtefactError(f"{path}: '{key}' is not {what}")
    return record


def check_checkpoint(ckpt, path, resume: bool = False) -> dict:
    """Check a loaded checkpoint: a dict with a whole-number ``epoch`` ≥ 0 and a ``model``
    state dict of tensors whose floating values are finite and at most
    :data:`MAX_ABS_PARAMETER` in magnitude; for ``resume`` also ``optim`` (a dict) and
    ``rng`` (a byte tensor).  Returns it; ArtefactError naming ``path`` otherwise."""
    if not isinstance(ckpt, dict):
        raise ArtefactError(f"{path}: a {type(ckpt).__name__}, not a pbc checkpoint")
    need = ("epoch", "model", "optim", "rng") if resume else ("epoch", "model")
    missing = [k for k in need if k not in ckpt]
    if missing:
        raise ArtefactError(f"{path}: not a complete checkpoint (no {', '.join(missing)})")
    if not is_int(ckpt["epoch"]) or ckpt["epoch"] < 0:
        raise ArtefactError(f"{path}: 'epoch' is {ckpt['epoch']!r}, not a whole number ≥ 0")
    model = ckpt["model"]
    if not isinstance(model, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in model.items()):
        raise ArtefactError(f"{path}: 'model' is not a state dict of tensors")
    for key, t in model.items():
        if t.is_floating_point() and t.numel():
            if not bool(torch.isfinite(t).all()):
                raise ArtefactError(f"{path}: non-finite values in {key}")
            if float(t.abs().max()) > MAX_ABS_PARAMETER:
                raise ArtefactError(f"{path}: {key} holds a value of magnitude "
                                    f"{float(t.abs().max()):.3g}, beyond "
                                    f"{MAX_ABS_PARAMETER:g}")
    if resume:
        if not isinstance(ckpt["optim"], dict):
            raise ArtefactError(f"{path}: 'optim' is not an optimiser state")
        rng = ckpt["rng"]
        if not isinstance(rng, torch.Tensor) or rng.dtype != torch.uint8:
            raise ArtefactError(f"{path}: 'rng' is not a random-number generator state")
    return ckpt


def check_png(path: Path) -> Path:
    """``path`` if its header is a PNG's of at most :data:`MAX_FIGURE_PIXELS` pixels (read
    before any pixel is decoded); ArtefactError otherwise."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError as e:
        raise ArtefactError(f"{path}: cannot read ({e.strerror})") from None
    if len(head) < 24 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise ArtefactError(f"{path}: not a PNG file")
    width, height = struct.unpack(">II", head[16:24])
    if width * height > MAX_FIGURE_PIXELS:
        raise ArtefactError(f"{path}: {width}x{height} pixels, more than the "
                            f"{MAX_FIGURE_PIXELS} a report figure may have")
    return path
