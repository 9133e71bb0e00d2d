"""pbc — Bayesian compression of neural networks (Louizos, Ullrich & Welling 2017) on Pyro.

``pbc.bayesianize`` (:func:`pbc.bayes.bayesianize.bayesianize`) makes any ``nn.Module``
Bayesian; it is imported on first use, so that ``import pbc`` loads neither torch nor Pyro.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pbc.bayes.bayesianize import bayesianize

__version__ = "0.1.0"
__all__ = ["bayesianize"]


def __getattr__(name: str):
    """The lazily imported names of :data:`__all__` (PEP 562)."""
    if name == "bayesianize":
        return importlib.import_module("pbc.bayes.bayesianize").bayesianize
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
