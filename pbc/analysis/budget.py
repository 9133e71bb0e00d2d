"""The error-budget rule: the most compression whose pruned and quantised network stays
within a budget of validation error — thresholds on the prune scores, then bit precisions.

Groups are pruned in the order of their prune score (highest ``log α`` first), so a layer's
choice is a number ``k`` of groups pruned, and its threshold lies between the ``k``-th and
``(k+1)``-th highest scores.  With ``e₀`` the validation error of the unpruned posterior-mean
network and ``P`` the budget (a fraction), the rule looks for thresholds with

    error(pruned and quantised network) + √d / n ≤ e₀ + P

pruning as many weights as it can, never all of a layer's units.  ``d`` counts the ``n``
validation examples whose predicted class pruning changed, so ``√d / n`` is one standard
error of the paired difference in error (McNemar's): a trial is accepted on its error's
upper bound, not on a favourable draw of the split — the searches try many settings
and would otherwise keep those that the validation examples happen to flatter, which the
test set then does not.

Two greedy searches run, and the rule keeps the one that prunes more weights (weights count
with their neighbours': a LeNet-5 ``conv2`` channel carries its filter and sixteen ``fc1``
columns):

* by layer — each layer in turn, most weights per group first, a bisection on ``k`` with
  the other layers held, in two passes: the first allows ``e₀ + P/2``, so that the first
  layers do not take the whole budget, the second ``e₀ + P``;
* cheapest first — a move prunes ``s`` more groups of one layer (``s`` starts at an eighth
  of its groups); each round tries one move per layer and takes, among those within
  ``e₀ + P``, the one that removes the most weights per unit of error bound it adds (a rise
  below one example counts as one), so the budget goes where compression is cheapest,
  whichever layer that is; a move that overshoots halves its ``s``, and the search ends
  when every ``s`` is 0.

Neither finds the best setting everywhere: by layer can spend the budget on the layer it
searches first, cheapest first can take a cheap move that blocks a better one.  Each trial
evaluates the network that the compress stage would write (masks propagated, kept weights
rounded to the layer's posterior bit precision) on the validation split: one to two hundred
forward passes in all.

Rounding at the posterior's significand bits ``t₀`` (unit round-off below the mean posterior
variance) moves each weight by up to half a posterior standard deviation, and on a
well-fitted network that alone can change enough predictions to use up a small budget,
leaving none for pruning.  So, when the bits are to be chosen by the budget, the pruning
trials round ``f`` bits finer than the posterior's: the fewest ``f ∈ {0, …, 3}`` at which
the unpruned network, so rounded, stays within half the budget, ``e₀ + P/2``
(``f = 0`` where rounding at ``t₀`` is cheap, as it mostly is).

Then the bit precisions, at the chosen thresholds and within ``e₀ + P``: for each layer in
the order of its kept weights, a bisection on ``t ∈ [1, t₀ + f]`` finds the fewest
significand bits (the coarsest step ``2^−t``) that keep the network within the limit, the
other layers held.  With ``precision="posterior"`` every layer keeps ``t₀`` (the paper's
rule), and the pruning trials round at it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from pbc.bayes.summaries import LayerPosterior
from pbc.compression.masks import structured_masks, surviving_weights, weight_masks
from pbc.compression.quantise import bit_precision, posterior_fixed_point
from pbc.defaults import PRECISIONS
from pbc.nets import Architecture, build_network

PASSES = (0.5, 1.0)   # the share of the budget each pass of the layer-by-layer search uses
FIRST_MOVE = 8        # a layer's first cheapest-first move prunes 1/FIRST_MOVE of its groups
SEARCH = "by-layer+cheapest-first"   # as analysis.json records it (by-layer alone: no record)
MAX_FINER = 3         # the most bits finer than the posterior's that pruning trials round to


@dataclass
class BudgetResult:
    """The chosen thresholds and what the search saw (errors as fractions)."""

    thresholds: dict[str, float]
    significand_bits: dict[str, int]   # per layer: the precision the compress stage rounds to
    unpruned_error: float       # e₀: unpruned posterior-mean network, unquantised
    error: float                # pruned and quantised at the chosen thresholds
    changed: int                # validation examples whose predicted class pruning changed
    evaluations: int
    finer_bits: int = 0         # f: how many bits finer than the posterior's trials rounded


def pruned_quantised_state(arch: Architecture, state: dict[str, torch.Tensor],
                           posts: dict[str, LayerPosterior], thresholds: dict[str, float],
                           significand: dict[str, int] | None = None
                           ) -> dict[str, torch.Tensor]:
    """``state`` (posterior means) with the weights the thresholds prune set to 0 and the
    kept ones rounded to fixed point at their layer's bit precision (the posterior's, or
    ``significand[layer]`` bits) — the function of the compress stage's quantised network,
    in the original shapes."""
    return _quantised_state(state, posts, _survivors(arch, posts, thresholds), significand)


def _survivors(arch, posts, thresholds) -> dict[str, np.ndarray]:
    masks = structured_masks(arch, posts, thresholds)
    return surviving_weights(posts, masks, weight_masks(posts, thresholds))


def _posterior_bits(posts, keeps, finer: int = 0) -> dict[str, int]:
    """Per layer, the kept weights' posterior significand bits ``t₀``, plus ``finer``."""
    return {n: bit_precision(p.w_mean[keeps[n]], p.w_var[keeps[n]])["significand_bits"]
            + finer for n, p in posts.items()}


def _quantised_state(state, posts, keeps, significand=None) -> dict[str, torch.Tensor]:
    significand = significand or {}
    out = dict(state)
    for name, post in posts.items():
        keep = keeps[name]
        w = state[f"{name}.weight"].detach().cpu().numpy() * keep
        q = posterior_fixed_point(w, post.w_mean[keep], post.w_var[keep],
                                  significand.get(name))
        out[f"{name}.weight"] = torch.from_numpy(q.codebook[q.codes])
    return out


def kept_weights(arch: Architecture, posts: dict[str, LayerPosterior],
                 thresholds: dict[str, float]) -> int:
    """The number of weights the thresholds keep, masks propagated (a group's own weights and
    those it feeds or is fed by in the neighbouring layers)."""
    return sum(int(k.sum()) for k in _survivors(arch, posts, thresholds).values())


def _thresholds_for(scores: np.ndarray) -> Callable[[int], float]:
    """``k ↦`` the threshold that prunes the ``k`` highest of ``scores`` (ties go together)."""
    desc = np.sort(np.asarray(scores, np.float64).ravel())[::-1]

    def threshold(k: int) -> float:
        if k <= 0:
            return float(desc[0]) + 1.0
        return float(0.5 * (desc[k - 1] + desc[k]))

    return threshold


def budget_thresholds(arch: Architecture, state: dict[str, torch.Tensor],
                      posts: dict[str, LayerPosterior], x: torch.Tensor, y: torch.Tensor,
                      budget: float, fixed: dict[str, float] | None = None,
                      precision: str = "budget") -> BudgetResult:
    """Per-layer thresholds and significand bits by the error-budget rule (see the module
    docstring).

    ``state``: the plain network's state dict holding posterior means; ``x: (N, ...)``,
    ``y: (N,)``: the validation split; ``budget``: the error allowed above ``e₀``, a fraction
    (0.005 is half a point); ``fixed``: layers whose thresholds are given, left as they are;
    ``precision``: ``"budget"`` (the fewest bits within the budget) or ``"posterior"``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision rule {precision!r}; choose from {PRECISIONS}")
    if x.shape[0] == 0:
        raise ValueError("the error-budget rule needs a validation split (train with --val N)")
    fixed = dict(fixed or {})
    net = build_network(arch).eval()
    count = 0

    def predict() -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([net(x[i:i + 5000]).argmax(-1) for i in range(0, len(x), 5000)])

    def trial(thresholds: dict[str, float],
              significand: dict[str, int] | None = None) -> tuple[float, int]:
        """``(error, examples changed)`` of the network the thresholds (and the layers'
        significand bits, the posterior's plus ``finer`` where not given) give."""
        nonlocal count
        count += 1
        masks = structured_masks(arch, posts, thresholds)
        if any(not m.any() for pair in masks.values() for m in pair):
            return math.inf, n_val           # a layer left without units: a constant network
        keeps = surviving_weights(posts, masks, weight_masks(posts, thresholds))
        if significand is None and finer:
            significand = _posterior_bits(posts, keeps, finer)
        net.load_state_dict(_quantised_state(state, posts, keeps, significand))
        pred = predict()
        return (pred != y).sum().item() / n_val, int((pred != pred0).sum())

    def upper_bound(thresholds: dict[str, float],
                    significand: dict[str, int] | None = None) -> float:
        """The trial's error plus one standard error of its change, ``e + √d / n``."""
        err, changed = trial(thresholds, significand)
        return err + math.sqrt(changed) / n_val

    n_val = x.shape[0]
    net.load_state_dict({k: v.detach().cpu() for k, v in state.items()})
    pred0 = predict()
    e0 = (pred0 != y).sum().item() / n_val
    layers = [n for n in posts if n not in fixed]
    rules = {n: _thresholds_for(posts[n].open_scores) for n in layers}
    sizes = {n: int(posts[n].open_scores.size) for n in layers}
    start = {**fixed, **{n: rules[n](0) for n in layers}}
    finer = 0
    if precision == "budget":
        while finer < MAX_FINER and upper_bound(start) > e0 + PASSES[0] * budget:
            finer += 1
    limit = e0 + budget

    def by_layer() -> dict[str, float]:
        """Each layer in turn (most weights per group first), a bisection on its number of
        groups pruned, the others held; twice, to ``e₀ + P/2`` and then to ``e₀ + P``."""
        chosen, pruned = dict(start), dict.fromkeys(layers, 0)
        keep_all = kept_weights(arch, posts, chosen)
        order = sorted(layers, key=lambda n: keep_all - kept_weights(
            arch, posts, {**chosen, n: rules[n](1)}), reverse=True)
        for share in PASSES:
            for name in order:
                lo, hi = pruned[name], sizes[name] - 1      # at least one group stays
                while lo < hi:
                    mid = (lo + hi + 1) // 2
                    if upper_bound({**chosen, name: rules[name](mid)}) <= e0 + share * budget:
                        lo = mid
                    else:
                        hi = mid - 1
                pruned[name], chosen[name] = lo, rules[name](lo)
        return chosen

    def cheapest_first() -> dict[str, float]:
        """Rounds of one move per layer; the move within ``e₀ + P`` that removes the most
        weights per unit of error bound added is taken; a move that overshoots halves."""
        chosen, pruned = dict(start), dict.fromkeys(layers, 0)
        now, kept = upper_bound(chosen), kept_weights(arch, posts, chosen)
        step = {n: max(1, sizes[n] // FIRST_MOVE) for n in layers}
        while any(step.values()):
            moves = []
            for name in layers:
                k = min(pruned[name] + step[name], sizes[name] - 1)  # at least one group stays
                if k == pruned[name]:
                    step[name] = 0
                    continue
                candidate = {**chosen, name: rules[name](k)}
                bound = upper_bound(candidate)
                if bound > limit:
                    step[name] //= 2
                    continue
                removed = kept - kept_weights(arch, posts, candidate)
                moves.append((removed / max(bound - now, 1 / n_val), name, k, bound, removed))
            if moves:
                _, name, k, now, removed = max(moves)
                pruned[name], chosen[name] = k, rules[name](k)
                kept -= removed
        return chosen

    found = [search() for search in (by_layer, cheapest_first)]
    current = min(found, key=lambda t: kept_weights(arch, posts, t))   # ties: by_layer
    keeps = _survivors(arch, posts, current)
    bits = _posterior_bits(posts, keeps, finer)          # t₀ + f
    if precision == "budget" and upper_bound(current, bits) <= limit:
        for name in sorted(bits, key=lambda n: int(keeps[n].sum()), reverse=True):
            lo, hi = 1, bits[name]                       # hi: within the limit
            while lo < hi:
                mid = (lo + hi) // 2
                if upper_bound(current, {**bits, name: mid}) <= limit:
                    hi = mid
                else:
                    lo = mid + 1
            bits[name] = hi
    err, changed = trial(current, bits)
    return BudgetResult(current, bits, e0, err, changed, count, finer)
