"""Pruning thresholds on prune scores.

:func:`find_threshold` splits a bimodal sample at the widest empty run between its modes
(Otsu split, then the middle of the widest gap between the two class means).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class Threshold:
    value: float           # prune when score > value
    method: str            # how it was chosen
    separation: float      # Ashman's D between the two modes (nan when not computed)


def find_threshold(scores: np.ndarray, min_separation: float = 3.0,
                   min_gap: float = 0.5, min_log_gap: float = 0.5) -> Threshold:
    """Split a bimodal sample of prune scores at the gap between its modes.

    Otsu's split (maximum between-class variance over the sorted sample) names two classes.
    The sample counts as bimodal when the classes are well separated — Ashman's
    ``D = √2·|m1 − m2| / √(s1² + s2²) ≥ min_separation`` (a Gaussian split this way gives
    D ≈ 2.7) — *and* the widest empty run between consecutive sorted values lying between
    the class means is at least ``min_gap`` pooled class standard deviations (a uniform
    sample has D ≈ 3.5 but no empty run) *and* at least ``min_log_gap`` in absolute terms:
    the scores are log dropout rates, and two groups less than ``e^0.5`` apart are not a
    keep/prune decision however few groups there are (a 20-filter layer can look "bimodal"
    by chance).  The threshold is the middle of that run.  A sample that is not
    bimodal keeps everything (threshold above its maximum).
    """
    x = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    n = x.size
    if n < 4 or x[-1] - x[0] < 1e-12:
        return Threshold(float(x[-1]) + 1.0 if n else math.inf, "unimodal", math.nan)
    keep_all = float(x[-1]) + 1.0
    csum = np.cumsum(x)
    k = np.arange(1, n)                       # left class = x[:k]
    m1 = csum[:-1] / k
    m2 = (csum[-1] - csum[:-1]) / (n - k)
    kk = int(np.argmax(k * (n - k) * (m1 - m2) ** 2)) + 1
    left, right = x[:kk], x[kk:]
    pooled = math.sqrt(0.5 * (left.var() + right.var()))
    d = abs(right.mean() - left.mean()) / pooled if pooled > 0 else math.inf
    lo, hi = np.searchsorted(x, left.mean()), np.searchsorted(x, right.mean(), side="right")
    seg = x[max(lo - 1, 0):hi]
    gaps = np.diff(seg)
    j = int(np.argmax(gaps))
    if d < min_separation or gaps[j] < max(min_gap * pooled, min_log_gap):
        return Threshold(keep_all, "unimodal", d)
    return Threshold(float(0.5 * (seg[j] + seg[j + 1])), "otsu+widest-gap", d)
