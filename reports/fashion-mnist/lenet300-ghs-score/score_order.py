"""Analyse, compress and trace the frontier of a trained BC run with another prune score.

The score every stage reads is ``LayerPosterior.score`` (``log α`` of the group scales);
this harness replaces it, in this process only, by one of

* ``snr`` — the group's weights' noise to signal, ``log(Σ Var[w] / Σ E[w]²)`` over the
  weights of the group (an input's column of a linear layer, an output channel of a conv);
* ``magnitude`` — ``−log Σ E[w]²`` over the same weights;

highest pruned first, as for ``log α``.  Per-weight posteriors (Sparse VD) keep ``log α``.

    python score_order.py TRAINED_RUN OUT_DIR {snr,magnitude,log_alpha} [frontier]

copies ``config.json``, ``checkpoint.pt`` and ``metrics.jsonl`` of ``TRAINED_RUN`` into
``OUT_DIR`` and runs ``pbc analyse`` (figures off), ``pbc compress`` and, with ``frontier``,
``pbc frontier --budgets 0.25,0.5,0.75,1,1.5,2`` there.
"""

import shutil
import sys
from pathlib import Path

import numpy as np

from pbc.bayes.summaries import LayerPosterior, prune_score
from pbc.cli import main


def _group_sums(post: LayerPosterior, values: np.ndarray) -> np.ndarray:
    if post.kind == "linear":               # groups are inputs: a weight column each
        return values.sum(axis=0)
    return values.reshape(values.shape[0], -1).sum(axis=1)   # conv: output channels


def noise_to_signal(post: LayerPosterior) -> np.ndarray:
    if post.per_weight:
        return post.log_alpha
    return np.log(_group_sums(post, post.w_var)) - np.log(_group_sums(post, post.w_mean ** 2))


def small_magnitude(post: LayerPosterior) -> np.ndarray:
    if post.per_weight:
        return post.log_alpha
    return -np.log(_group_sums(post, post.w_mean ** 2))


SCORES = {"log_alpha": prune_score, "snr": noise_to_signal, "magnitude": small_magnitude}


def run(src: Path, dst: Path, score: str, frontier: bool) -> None:
    LayerPosterior.score = property(SCORES[score])
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "checkpoint.pt", "metrics.jsonl"):
        shutil.copy2(src / name, dst / name)
    assert main(["analyse", str(dst), "--no-figures"]) == 0
    assert main(["compress", str(dst)]) == 0
    if frontier:
        assert main(["frontier", str(dst), "--budgets", "0.25,0.5,0.75,1,1.5,2"]) == 0


if __name__ == "__main__":
    run(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], "frontier" in sys.argv[4:])
