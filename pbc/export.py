"""The ``export`` stage: a compressed run written in a deployment format.

``pbc export RUN --format int8`` reads the quantised network (``quantised.pt``), runs the
layers whose weights fit in 8 bits on integer kernels (:mod:`pbc.compression.lowbit`) and
writes it as ``model.int8.pt`` (:func:`pbc.compression.export.save_int8`; it loads with
``torch.load(weights_only=True)`` through :func:`pbc.compression.export.load_compressed`).
The record returned holds the test errors of the float32 quantised network and of the
int8 one as read back from the file, side by side, and both files' sizes.
"""

from __future__ import annotations

from pathlib import Path

from pbc.compression import lowbit
from pbc.compression.export import load_export, read_export, save_int8
from pbc.io import StageError
from pbc.nets import classification_error
from pbc.rundir import INT8, QUANTISED, RunDir, load_trained, run_splits

FORMATS = ("int8",)


def export(run_dir, fmt: str = "int8", out=None) -> dict:
    """Write the run's quantised network in format ``fmt`` (to ``out``, default
    ``RUN/model.int8.pt``); returns what was written and the test errors."""
    if fmt not in FORMATS:
        raise StageError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    run = RunDir(run_dir)
    run.require(QUANTISED, "compress")
    out = Path(out) if out else run / INT8
    with run.writing("pbc export"):
        config = load_trained(run.path).config
        arch, quantised = read_export(run / QUANTISED)
        names = lowbit.int8_layer_names(quantised)
        if not names:
            raise StageError(f"{run}: no layer's weights fit in 8 bits (each has more than "
                             f"{lowbit.MAX_CODES} distinct values); nothing to export as int8")
        save_int8(out, arch, lowbit.lowbit_network(load_export(run / QUANTISED), names))
    _, data = run_splits(config)
    weighted = [n for n, m in quantised.named_children() if hasattr(m, "weight")]
    return {"path": str(out), "format": fmt, "int8_layers": names,
            "float_layers": [n for n in weighted if n not in names],
            "int8_kernels": lowbit.int8_kernels("cpu"),
            "bytes": out.stat().st_size, "quantised_bytes": (run / QUANTISED).stat().st_size,
            "test_error": {
                "quantised": classification_error(quantised, data.test_x, data.test_y),
                "int8": classification_error(load_export(out), data.test_x, data.test_y)}}
