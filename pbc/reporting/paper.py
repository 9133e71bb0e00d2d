"""The paper's reference numbers (Louizos, Ullrich & Welling 2017, Tables 1 and 2) as plain data.

Sources
-------
``paper_tables.csv`` (next to this module) holds Tables 1 and 2 of Louizos, Ullrich & Welling
(2017), *Bayesian Compression for Deep Learning* (NeurIPS), as printed, on MNIST (LeNet-300-100,
LeNet-5-Caffe) and CIFAR-10 (VGG).  One CSV row per table row, with the columns ::

    table,model,method,architecture,bits,error_pct,nonzero_pct,pruning,fast_prediction,
    max_compression,best_case_guess,note

- Table 1 (``table`` = 1): ``architecture``, kept units per weighted layer (output channels of
  a convolution, input units of a linear layer), and ``bits``, the mean bit precision per
  weighted layer, both ``-``-separated; the original VGG is printed in groups,
  ``(2x64)-(2x128)-(3x256)-(8x512)``, which expands unambiguously to its 15 weighted layers
  (13 convolutions, then the inputs of fc1 and fc2, as in :func:`pbc.nets.vgg16`).
- Table 2 (``table`` = 2): ``error_pct``, test error in % as printed; ``nonzero_pct``,
  ``|w≠0|/|w|`` in %; the compression rates ``pruning`` (``|w| / |w kept|``),
  ``fast_prediction`` (pruning plus the posterior bit precision) and ``max_compression`` (plus
  codebook and Huffman coding, Deep Compression's accounting).  ``best_case_guess`` marks the
  paper's asterisk: "best case guesses" for methods whose own papers did not report the figure.
  ``note`` says, among other things, which error goes with which rate where the paper prints
  more than one.

The Table 1 and Table 2 rows of one (model, method) are merged into one :class:`PaperRow`;
empty cells are ``None`` (the report shows "—").  Table 1 lists GD (Generalized Dropout) and
GL (Group Lasso) only; Table 2 lists DC, DNS and SWS only.

``paper_sws.csv`` is the table of the soft weight-sharing paper (Ullrich, Meeds & Welling 2017),
from which the paper's DC, DNS and SWS rows are taken.  It fills one gap: LeNet-5-Caffe DNS
``|w≠0|/|w|`` (0.9 %, the Guo et al. 2016 row), which is not legible in the source of Table 2;
that row then names ``sws`` among its sources and says so in its note.  The table itself is
:data:`SWS_ROWS`.

Conventions: ``architecture`` lists kept units per weighted layer in order; ``bits`` is the
bit precision per weighted layer; errors are percentages as printed; rates are the paper's
compression factors.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, replace
from importlib import resources

MODEL_NAMES = {"lenet300": "LeNet-300-100", "lenet5": "LeNet-5-Caffe",
               "lenet5-relu": "LeNet-5-Caffe, ReLU after convs", "vgg16": "VGG",
               "pbc.zoo:resnet8": "ResNet-8"}
METHOD_NAMES = {"gnj": "BC-GNJ", "ghs": "BC-GHS", "svd": "Sparse VD", "sws": "SWS",
                "dc": "DC", "none": "dense"}
DATASET = "MNIST (LeNets), CIFAR-10 (VGG)"


@dataclass(frozen=True)
class PaperRow:
    """One method's row of the paper's Tables 1 and 2 for one network (``None``: not printed)."""

    model: str                                  # pbc model name: lenet300, lenet5, vgg16
    method: str                                 # the paper's label: DC, …, BC-GHS, original
    architecture: tuple[int, ...] | None = None  # Table 1: kept units per weighted layer
    bits: tuple[int, ...] | None = None          # Table 1: bit precision per weighted layer
    error_pct: float | None = None               # Table 2: test error %
    nonzero_pct: float | None = None             # Table 2: |w≠0| / |w| %
    pruning: float | None = None                 # Table 2: Pruning
    fast_prediction: float | None = None         # Table 2: Fast prediction
    max_compression: float | None = None         # Table 2: Maximum compression
    sources: tuple[str, ...] = ()                # keys of SOURCES the values came from
    best_case_guess: bool = False                # Table 2: the paper's asterisk
    note: str = ""                               # the tables' note(s), "; "-joined


SOURCES = {
    "table1": "Louizos, Ullrich & Welling 2017, Bayesian Compression for Deep Learning "
              "(NeurIPS), Table 1 (pruned architecture, bit precision)",
    "table2": "Louizos, Ullrich & Welling 2017, Bayesian Compression for Deep Learning "
              "(NeurIPS), Table 2 (error, |w≠0|/|w|, compression rates)",
    "sws": "Ullrich, Meeds & Welling 2017, Soft Weight-Sharing for Neural Network "
           "Compression (ICLR), its results table",
}

# the order of the rows within a model: the original network, then Table 2's order, with
# Table 1's GD and GL before the BC rows; methods not listed here follow in file order
_ORDER = ("original", "DC", "DNS", "SWS", "Sparse VD", "GD", "GL", "BC-GNJ", "BC-GHS")
# the soft weight-sharing table's method labels for the paper's
_SWS_METHODS = {"DC": "Han et al. 2015 (DC)", "DNS": "Guo et al. 2016 (DNS)", "SWS": "SWS"}
_GROUP = re.compile(r"\((\d+)x(\d+)\)")


def _read(name: str) -> list[dict[str, str]]:
    text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO(text)))


def _units(cell: str) -> tuple[int, ...] | None:
    """``784-300-100`` → ``(784, 300, 100)``; ``(2x64)-(2x128)`` → ``(64, 64, 128, 128)``."""
    cell = cell.strip()
    if not cell:
        return None
    out: list[int] = []
    for part in cell.split("-"):
        part = part.strip()
        group = _GROUP.fullmatch(part)
        if group:
            out += [int(group[2])] * int(group[1])
        else:
            out.append(int(part))
    return tuple(out)


def _number(cell: str) -> float | None:
    cell = cell.strip()
    if not cell:
        return None
    value = float(cell)
    return int(value) if value.is_integer() and "." not in cell else value


def _from_csv(rows: list[dict[str, str]]) -> list[PaperRow]:
    """Merge each (model, method)'s Table 1 and Table 2 rows into one :class:`PaperRow`."""
    merged: dict[tuple[str, str], dict] = {}
    for rec in rows:
        key = (rec["model"].strip(), rec["method"].strip())
        row = merged.setdefault(key, {"model": key[0], "method": key[1], "sources": [],
                                      "notes": [], "best_case_guess": False})
        table = rec["table"].strip()
        values = {"architecture": _units(rec["architecture"]), "bits": _units(rec["bits"]),
                  **{f: _number(rec[f]) for f in ("error_pct", "nonzero_pct", "pruning",
                                                   "fast_prediction", "max_compression")}}
        for field, value in values.items():
            if value is not None:
                row[field] = value
        row["best_case_guess"] |= rec["best_case_guess"].strip().lower() in ("yes", "true", "1")
        if rec["note"].strip():
            row["notes"].append(rec["note"].strip())
        row["sources"].append(f"table{table}")
    out = []
    for row in merged.values():
        notes, sources = row.pop("notes"), row.pop("sources")
        out.append(PaperRow(**row, sources=tuple(dict.fromkeys(sources)),
                            note="; ".join(notes)))
    return out


def _fill_from_sws(rows: list[PaperRow], sws: list[dict[str, str]]) -> list[PaperRow]:
    """Fill a missing ``|w≠0|/|w|`` of a DC, DNS or SWS row from the SWS paper's table."""
    by_key = {(r["model"].strip(), r["method"].strip()): r for r in sws}
    out = []
    for row in rows:
        rec = by_key.get((row.model, _SWS_METHODS.get(row.method, "")))
        value = _number(rec["nonzero_pct"]) if rec else None
        if row.nonzero_pct is None and value is not None:
            note = (f"|w≠0|/|w| {value:g} % from the soft weight-sharing paper's table "
                    f"(row {rec['method'].strip()})")
            row = replace(row, nonzero_pct=value, sources=(*row.sources, "sws"),
                          note="; ".join(filter(None, [row.note, note])))
        out.append(row)
    return out


def _sorted(rows: list[PaperRow]) -> list[PaperRow]:
    models = list(dict.fromkeys(r.model for r in rows))

    def key(item):
        i, r = item
        rank = _ORDER.index(r.method) if r.method in _ORDER else len(_ORDER)
        return models.index(r.model), rank, i

    return [r for _, r in sorted(enumerate(rows), key=key)]


SWS_ROWS: tuple[dict, ...] = tuple(
    {k.strip(): (v.strip() if k.strip() in ("model", "method") else _number(v))
     for k, v in rec.items()} for rec in _read("paper_sws.csv"))
"""The soft weight-sharing paper's table: ``model``, ``method``, ``error_before_pct``,
``error_after_pct``, ``delta_pct``, ``weights_millions``, ``nonzero_pct``,
``compression_rate``."""

ROWS: tuple[PaperRow, ...] = tuple(_sorted(_fill_from_sws(_from_csv(_read("paper_tables.csv")),
                                                          _read("paper_sws.csv"))))


def rows_for(model: str) -> list[PaperRow]:
    """The paper's rows for a pbc model name, ``original`` first (empty for unknown models)."""
    return [r for r in ROWS if r.model == model]


def model_name(model: str) -> str:
    return MODEL_NAMES.get(model, model)


def method_name(prior: str) -> str:
    """The paper's label for a pbc prior name (``gnj`` → ``BC-GNJ``); unknown names as given."""
    return METHOD_NAMES.get(prior, prior)
