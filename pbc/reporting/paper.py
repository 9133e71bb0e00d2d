"""The paper's reference numbers (Louizos, Ullrich & Welling 2017, Tables 1 and 2) as plain data.

Sources
-------
Each value below comes verbatim from one of these texts (none from memory):

``readme``
    The authors' code release, GitHub ``KarenUllrich/Tutorial_BayesianCompressionForDL``,
    ``README.md`` (commit 7bb140f2e4f0…), section *Results*: a table with the columns
    ``Model | Method | Error [%] | Compression after pruning | Compression after precision
    reduction`` and the rows ::

        LeNet-5-Caffe  DC         0.7    6*   -
                       DNS        0.9   55*   -
                       SWS        1.0  100*   -
                       Sparse VD  1.0   63*  228
                       BC-GNJ     1.0  108*  361
                       BC-GHS     1.0  156*  419
        VGG            BC-GNJ     8.6   14*   56
                       BC-GHS     9.0   18*   59

    These are the paper's Table 2 columns *Error %*, *Pruning* and *Fast prediction*
    (compression after structured pruning, and after pruning plus precision reduction).  The
    README puts ``*`` after every pruning number without saying what it means, so the mark is
    not carried here; ``-`` (not reported) becomes ``None``.

``flops_paper``
    A later paper's text that quotes the paper's Table 1 for LeNet-5-Caffe (the text of
    Tang, Adhikari & Lin 2018, "FLOPs as a direct optimization objective for learning sparse
    neural networks", as stored in a public repository, flattened): ::

        BC-GNJ BID5 8-13-88-13 1.0% 290K BC-GHS BID5 5-10-76-16 1.0% 158K

    i.e. the pruned architecture (conv1 out – conv2 out – fc1 in – fc2 in), the error and the
    FLOPs of the BC-GNJ and BC-GHS LeNet-5-Caffe networks.

``architecture``
    The original layer sizes in the paper's convention, which are the architectures
    themselves (:mod:`pbc.nets`): LeNet-300-100 ``784-300-100`` (the inputs of fc1, fc2,
    fc3), LeNet-5-Caffe ``20-50-800-500`` (conv1 and conv2 output channels, fc1 and fc2
    inputs).

Everything else in the two tables (all of LeNet-300-100, every bit precision, the
``|w≠0|/|w|`` and *Maximum compression* columns, the original networks' errors, the VGG
architecture) is in none of these texts and is ``None``: the report shows "—".

Conventions: ``architecture`` lists kept units per weighted layer in order, output channels for
a convolution and input units for a linear layer; ``bits`` is the bit precision per weighted
layer; errors are percentages as printed; rates are the paper's compression factors.
"""

from __future__ import annotations

from dataclasses import dataclass

MODEL_NAMES = {"lenet300": "LeNet-300-100", "lenet5": "LeNet-5-Caffe", "vgg16": "VGG"}
METHOD_NAMES = {"gnj": "BC-GNJ", "ghs": "BC-GHS", "svd": "Sparse VD", "sws": "SWS",
                "dc": "DC", "none": "dense"}
DATASET = "MNIST (LeNets), CIFAR-10 (VGG)"


@dataclass(frozen=True)
class PaperRow:
    """One method's row of the paper's Tables 1 and 2 for one network (``None``: not read)."""

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


SOURCES = {
    "readme": "KarenUllrich/Tutorial_BayesianCompressionForDL README.md, 'Results' table",
    "flops_paper": "Tang, Adhikari & Lin 2018 (FLOPs objective), quoting Table 1",
    "architecture": "the original architecture (pbc.nets)",
}

_METHODS = ("DC", "DNS", "SWS", "Sparse VD", "BC-GNJ", "BC-GHS")

ROWS: tuple[PaperRow, ...] = (
    PaperRow("lenet300", "original", architecture=(784, 300, 100), sources=("architecture",)),
    *(PaperRow("lenet300", m) for m in _METHODS),
    PaperRow("lenet5", "original", architecture=(20, 50, 800, 500), sources=("architecture",)),
    PaperRow("lenet5", "DC", error_pct=0.7, pruning=6, sources=("readme",)),
    PaperRow("lenet5", "DNS", error_pct=0.9, pruning=55, sources=("readme",)),
    PaperRow("lenet5", "SWS", error_pct=1.0, pruning=100, sources=("readme",)),
    PaperRow("lenet5", "Sparse VD", error_pct=1.0, pruning=63, fast_prediction=228,
             sources=("readme",)),
    PaperRow("lenet5", "BC-GNJ", architecture=(8, 13, 88, 13), error_pct=1.0, pruning=108,
             fast_prediction=361, sources=("readme", "flops_paper")),
    PaperRow("lenet5", "BC-GHS", architecture=(5, 10, 76, 16), error_pct=1.0, pruning=156,
             fast_prediction=419, sources=("readme", "flops_paper")),
    PaperRow("vgg16", "original"),
    PaperRow("vgg16", "BC-GNJ", error_pct=8.6, pruning=14, fast_prediction=56,
             sources=("readme",)),
    PaperRow("vgg16", "BC-GHS", error_pct=9.0, pruning=18, fast_prediction=59,
             sources=("readme",)),
)


def rows_for(model: str) -> list[PaperRow]:
    """The paper's rows for a pbc model name, ``original`` first (empty for unknown models)."""
    return [r for r in ROWS if r.model == model]


def model_name(model: str) -> str:
    return MODEL_NAMES.get(model, model)


def method_name(prior: str) -> str:
    """The paper's label for a pbc prior name (``gnj`` → ``BC-GNJ``); unknown names as given."""
    return METHOD_NAMES.get(prior, prior)
