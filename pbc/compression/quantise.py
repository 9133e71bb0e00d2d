"""Quantisation of one layer's kept weights: bit precision from the posterior, fixed-point
codes, and k-means weight sharing.

* :func:`bit_precision` — significand bits ``t``: the fewest whose unit round-off ``2^−t``
  lies below the layer's mean posterior variance of the kept weights (the paper's rule), or
  fewer where the error-budget rule chose a coarser step;
  bits per weight of the narrower dense format at that precision (a float with exponent bits
  for the kept weights' range and one sign bit, or a fixed-point integer of step ``2^−t``);
* :func:`fixed_point_codes` — round to multiples of ``2^−t`` and index a codebook;
* :func:`kmeans_codes` — Deep Compression's per-layer k-means codebook (linear init).

A :class:`Quantised` record holds one layer's result: ``codebook[codes]`` are its weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pbc.compression import codec


@dataclass
class Quantised:
    """One layer's quantisation: ``codebook[codes]`` are its weights; ``bits`` the record's
    bit fields (``bits`` = bits per weight of the dense fast-prediction format)."""

    codes: np.ndarray
    codebook: np.ndarray
    bits: dict


MAX_SIGNIFICAND_BITS = 23  # float32


def significand_bits(spread: float) -> int:
    """Fewest significand bits ``t`` whose unit round-off ``2^−t`` lies below ``spread``."""
    if not spread > 0:
        return MAX_SIGNIFICAND_BITS
    t = math.floor(-math.log2(spread)) + 1
    return int(min(max(t, 1), MAX_SIGNIFICAND_BITS))


def exponent_bits(weights: np.ndarray, t: int) -> int:
    """Bits to index the binary exponents ``⌊log2|w|⌋`` of the weights that remain nonzero at
    significand precision ``t`` (``|w| ≥ 2^−t``); at least 1.  Defined for any magnitude."""
    w = np.abs(np.asarray(weights, dtype=np.float64).ravel())
    w = w[w >= 2.0 ** -t]
    if w.size == 0:
        return 1
    e = np.floor(np.log2(w))
    span = int(e.max() - e.min()) + 1
    return max(1, math.ceil(math.log2(span))) if span > 1 else 1


def fixed_point_bits(weights: np.ndarray, t: int) -> int:
    """Bits of a sign-magnitude integer that holds every weight rounded to a multiple of
    ``2^−t``: one sign bit and ``⌈log2(M + 1)⌉`` (at least 1) for the largest magnitude
    ``M = round(|w|·2^t)``."""
    w = np.abs(np.asarray(weights, dtype=np.float64).ravel())
    m = int(np.floor(w.max() * 2.0**t + 0.5)) if w.size else 0
    return 1 + max(1, math.ceil(math.log2(m + 1)))


def bit_precision(w_mean_kept: np.ndarray, w_var_kept: np.ndarray,
                  significand: int | None = None) -> dict:
    """Significand bits ``t`` from the layer's mean posterior variance (the paper's rule;
    ``posterior_significand_bits``), or ``significand`` where a coarser precision was chosen
    (:mod:`pbc.analysis.budget`), and the bits per weight of the dense format that holds the
    weights at that precision: the narrower of a float (one sign bit, exponent bits for the
    range of binary exponents, ``t`` significand bits) and a fixed-point integer of step
    ``2^−t`` (:func:`fixed_point_bits`)."""
    mean_var = float(np.mean(w_var_kept)) if w_var_kept.size else math.nan
    t_posterior = significand_bits(mean_var)
    t = t_posterior if significand is None else int(significand)
    e = exponent_bits(w_mean_kept, t)
    fixed = fixed_point_bits(w_mean_kept, t)
    return {"mean_var_kept": mean_var, "posterior_significand_bits": t_posterior,
            "significand_bits": t, "exponent_bits": e, "fixed_point_bits": fixed,
            "bits": min(1 + e + t, fixed)}


def posterior_fixed_point(w: np.ndarray, w_mean_kept: np.ndarray, w_var_kept: np.ndarray,
                          significand: int | None = None) -> Quantised:
    """``w`` rounded to fixed point at the bit precision of the kept weights' posterior
    (:func:`bit_precision` of their means and variances, or ``significand`` bits where
    given; :func:`fixed_point_codes`)."""
    bits = bit_precision(w_mean_kept, w_var_kept, significand)
    codes, codebook, t_used = fixed_point_codes(w, bits["significand_bits"])
    return Quantised(codes, codebook, {**bits, "codebook_significand_bits": t_used})


def fixed_point_codes(w: np.ndarray, t: int,
                      max_codes: int = codec.MAX_K) -> tuple[np.ndarray, np.ndarray, int]:
    """Round ``w`` to multiples of ``δ = 2^−t``; return ``(codes, codebook, t)``.

    ``codebook[0] = 0`` and ``codebook[codes] == round(w/δ)·δ`` exactly (float32).  When a
    near-deterministic posterior asks for so many bits that the codebook would exceed
    ``max_codes`` entries (the packed format's limit), ``t`` is lowered until it fits; the
    returned ``t`` is the one used.
    """
    w64 = w.astype(np.float64)
    while True:
        step = 2.0 ** -t
        q = (np.floor(w64 / step + 0.5) * step).astype(np.float32)
        values = np.unique(q[q != 0])
        if values.size < max_codes or t <= 1:
            break
        t -= 1
    codebook = np.concatenate([[0.0], values]).astype(np.float32)
    codes = np.zeros(q.shape, np.int64)
    nz = q != 0
    codes[nz] = np.searchsorted(values, q[nz]) + 1
    return codes, codebook, t


def kmeans_1d(x: np.ndarray, k: int, iters: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means on scalars, linear initialisation between ``min`` and ``max`` (Deep
    Compression's choice); returns ``(centroids ascending, labels)``.

    In one dimension the clusters are runs of the sorted values, cut at the midpoints of
    consecutive centroids: after one sort, an iteration is ``k`` binary searches and prefix
    sums, ``O(k log n)`` instead of ``O(nk)``.  An empty cluster keeps its centroid.
    """
    x = np.asarray(x, np.float64).ravel()
    xs = np.sort(x)
    prefix = np.concatenate([[0.0], np.cumsum(xs)])
    centroids = np.linspace(xs[0], xs[-1], k)
    for _ in range(iters):
        mids = 0.5 * (centroids[1:] + centroids[:-1])
        # a value equal to a midpoint goes to the lower cluster, as in the labels below
        cuts = np.concatenate([[0], np.searchsorted(xs, mids, side="right"), [xs.size]])
        counts = np.diff(cuts)
        sums = np.diff(prefix[cuts])
        new = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        if np.array_equal(new, centroids):
            break
        centroids = new
    labels = np.searchsorted(0.5 * (centroids[1:] + centroids[:-1]), x)
    return centroids, labels


def kmeans_codes(w: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer k-means weight sharing: ``2^bits`` centroids (:func:`kmeans_1d`) over the
    nonzero weights; exact zeros keep code 0."""
    flat = w.astype(np.float64).ravel()
    nz = flat != 0
    if nz.sum() == 0:
        return np.zeros(w.shape, np.int64), np.zeros(1, np.float32)
    k = int(min(2**bits, np.unique(flat[nz]).size))
    centroids, labels = kmeans_1d(flat[nz], k)
    codes = np.zeros(flat.shape, np.int64)
    codes[nz] = labels + 1
    codebook = np.concatenate([[0.0], centroids]).astype(np.float32)
    return codes.reshape(w.shape), codebook
