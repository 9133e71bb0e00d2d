"""The posterior predictive and its calibration: ``predictive.json``.

For a trained :class:`~pbc.bayes.net.BayesNet` with variational posterior ``q(θ)`` the
posterior predictive of a class is estimated by Monte Carlo over ``S`` networks drawn from
``q``::

    θ_s ~ q(θ),   s = 1 … S                (one draw of every z, w, b: one network)
    p(y = c | x) ≈ 1/S Σ_s softmax(f(x; θ_s))_c

:func:`predictive_probs` returns the ``S`` probability tensors, :func:`calibration` scores
class probabilities (error, negative log-likelihood, expected calibration error and the
reliability diagram's bins), and :func:`evaluate_predictive` does both for a run directory,
beside the posterior-mean network, and writes ``predictive.json``.

Drawing whole networks, not local reparameterisation
----------------------------------------------------
The guide marks its sites ``z``, ``w`` and ``b`` with
:data:`~pbc.bayes.handlers.DEFERRED`; only the
:class:`~pbc.bayes.handlers.LocalReparameterization` handler reads that mark (training
and the ELBO run under it, so no weight is ever drawn there).  Outside that handler the
mark is inert and ``net.guide`` is an ordinary Pyro guide that draws every weight, so
:class:`pyro.infer.Predictive` needs no other handler.  Pyro's ``Predictive(model,
guide=…)`` runs in two steps: ``S`` draws of the guide's sites, then the model conditioned
on each draw.  Here the two steps are taken separately — ``Predictive(net.guide,
num_samples=k)`` for the draws, then ``Predictive(model, posterior_samples=draws,
return_sites=["probs"])`` on each batch of examples — so that one draw is one network for
every example of the data set: the same weights in every batch, never the per-example
noise of local reparameterisation.  At most ``chunk`` draws are held at a time.
"""

from __future__ import annotations

import functools

import numpy as np
import pyro
import torch
from pyro.infer import Predictive

from pbc.io import StageError, write_json
from pbc.rundir import PREDICTIVE, RunDir, load_trained, run_splits

#: what ``predictive.json`` records as ``"predictive"``: averaged posterior draws, or the
#: method's single network (a method without a posterior)
MONTE_CARLO, POINT_ESTIMATE = "monte carlo", "point estimate"
#: weight draws held at once by :func:`predictive_probs`, in guide elements (float32: 256 MiB,
#: twice that while ``Predictive`` stacks them)
DRAW_ELEMENTS = 1 << 26
#: the smallest probability the log-likelihood reads: float32's smallest normal number, so a
#: probability that underflowed to 0 costs ``−log(1.2e-38) ≈ 87.3`` nats, not infinity
MIN_PROB = float(np.finfo(np.float32).tiny)
SPLITS = ("test", "val")


def _probs_model(net, x: torch.Tensor) -> torch.Tensor:
    """``net``'s model sites (``L.z``, ``L.w``, ``L.b``), then the class probabilities as the
    deterministic site ``probs``, ``(N, classes)``."""
    logits = net(x)
    # plate dim -1: the examples of x
    with pyro.plate("data", x.shape[0]):
        return pyro.deterministic("probs", torch.softmax(logits, dim=-1), event_dim=1)


def _guide_elements(net) -> int:
    """Elements of one draw of every guide site (weights, biases, scales)."""
    return sum(p.numel() for layer in net.bayes_layers() for p in (layer.w_loc, layer.b_loc))


def predictive_probs(net, x: torch.Tensor, samples: int, batch_size: int = 1000,
                     chunk: int | None = None) -> torch.Tensor:
    """Class probabilities of ``samples`` networks drawn from the variational posterior.

    ``probs[s, n] = softmax(f(x_n; θ_s))`` with ``θ_s ~ q(θ)`` one draw of every guide site
    (see the module docstring): draw ``s`` is the same network for every example and every
    batch.  The draws come from ``pyro.infer.Predictive(net.guide, num_samples=k)``, the
    probabilities from ``Predictive`` of the model conditioned on them.  The network's own
    (module-local) parameters are read; nothing is written to Pyro's param store.

    Parameters
    ----------
    net : BayesNet
        Evaluated in eval mode (restored afterwards).
    x : Tensor, shape ``(N, ...)``
        Inputs, on any device; each batch is moved to the network's.
    samples : int
        ``S ≥ 1`` draws.
    batch_size : int
        Examples per forward pass.
    chunk : int, optional
        Draws held at once (default: as many as fit :data:`DRAW_ELEMENTS`); memory is about
        ``chunk`` networks plus ``chunk × batch_size`` probability rows.  ``Predictive``
        traces the model twice per call for its shapes, so each chunk of draws costs two
        extra forward passes per batch.

    Returns
    -------
    Tensor, shape ``(S, N, classes)``, float32 on the CPU.
    """
    if samples < 1 or batch_size < 1:
        raise ValueError(f"samples and batch_size must be ≥ 1, got {samples}, {batch_size}")
    chunk = chunk or max(1, DRAW_ELEMENTS // max(1, _guide_elements(net)))
    device = next(net.parameters()).device
    model = functools.partial(_probs_model, net)
    was_training = net.training
    net.eval()
    out = []
    try:
        # module-local parameters: the guide reads the net's own, registers none globally
        with pyro.settings.context(module_local_params=True):
            for start in range(0, samples, chunk):
                draws = Predictive(net.guide, num_samples=min(chunk, samples - start))()
                predict = Predictive(model, posterior_samples=draws, return_sites=["probs"])
                out.append(torch.cat(
                    [predict(x[i:i + batch_size].to(device))["probs"].float().cpu()
                     for i in range(0, x.shape[0], batch_size)], dim=1))
    finally:
        net.train(was_training)
    probs = torch.cat(out, dim=0)
    assert probs.shape[:2] == (samples, x.shape[0]), probs.shape
    return probs


@torch.no_grad()
def point_probs(net, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """``softmax(net(x))`` of a deterministic network, ``(N, classes)`` float32 on the CPU
    (eval mode, restored afterwards)."""
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    try:
        probs = torch.cat([torch.softmax(net(x[i:i + batch_size].to(device)), -1).float().cpu()
                           for i in range(0, x.shape[0], batch_size)])
    finally:
        net.train(was_training)
    return probs


def calibration(probs, y, bins: int = 15) -> dict:
    """Error, negative log-likelihood, expected calibration error and reliability bins.

    With confidence ``ĉ_n = max_c p_nc``, prediction ``ŷ_n = argmax_c p_nc`` (the first of
    ties) and ``M`` equal-width bins ``B_m = {n : ĉ_n ∈ ((m−1)/M, m/M]}`` (Guo et al. 2017)::

        error = 1/N Σ_n [ŷ_n ≠ y_n]
        nll   = −1/N Σ_n log max(p_{n, y_n}, MIN_PROB)            (nats)
        acc_m = 1/|B_m| Σ_{n∈B_m} [ŷ_n = y_n],   conf_m = 1/|B_m| Σ_{n∈B_m} ĉ_n
        ece   = Σ_m |B_m|/N · |acc_m − conf_m|

    Parameters
    ----------
    probs : array-like, shape ``(N, C)``
        Class probabilities (rows summing to 1).
    y : array-like of int, shape ``(N,)``
        Labels in ``[0, C)``.
    bins : int
        ``M ≥ 1``.

    Returns
    -------
    dict
        ``error``, ``nll``, ``ece`` (floats) and ``bins``: ``edges`` (``M + 1``), ``count``,
        ``confidence`` and ``accuracy`` (``M`` each; ``None`` for an empty bin).
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y)
    if p.ndim != 2 or y.shape != (p.shape[0],) or p.shape[0] == 0:
        raise ValueError(f"probs must be (N, C) and y (N,) with N ≥ 1, got {p.shape}, {y.shape}")
    if bins < 1:
        raise ValueError(f"bins must be ≥ 1, got {bins}")
    y = y.astype(np.int64)
    n = p.shape[0]
    pred = p.argmax(axis=1)
    conf = p[np.arange(n), pred]
    correct = (pred == y).astype(np.float64)
    nll = -np.log(np.maximum(p[np.arange(n), y], MIN_PROB))
    edges = np.linspace(0.0, 1.0, bins + 1)
    # bin m (0-based) holds edges[m] < ĉ ≤ edges[m + 1]
    which = np.clip(np.digitize(conf, edges, right=True) - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    conf_sum = np.bincount(which, weights=conf, minlength=bins)
    acc_sum = np.bincount(which, weights=correct, minlength=bins)
    filled = count > 0
    conf_m = np.divide(conf_sum, count, out=np.zeros(bins), where=filled)
    acc_m = np.divide(acc_sum, count, out=np.zeros(bins), where=filled)
    ece = float(np.sum(count / n * np.abs(acc_m - conf_m)))

    def per_bin(v):
        return [float(a) if f else None for a, f in zip(v, filled, strict=True)]

    return {"error": float(1.0 - correct.mean()), "nll": float(nll.mean()), "ece": ece,
            "bins": {"edges": edges.tolist(), "count": count.tolist(),
                     "confidence": per_bin(conf_m), "accuracy": per_bin(acc_m)}}


def evaluate_predictive(run_dir, samples: int, split: str = "test", batch_size: int = 1000,
                        seed: int = 0, bins: int = 15) -> dict:
    """Calibration of a trained run's predictive on ``split``; writes ``RUN/predictive.json``.

    For a method with a posterior (:attr:`~pbc.methods.base.Method.has_posterior`) the
    record holds two estimates: ``monte_carlo``, the mean of :func:`predictive_probs` over
    ``samples`` draws, and ``posterior_mean``, the plain network holding the posterior means
    (:meth:`~pbc.methods.base.Method.plain_state`).  Without a posterior the method's plain
    network is the predictive: one estimate, ``point_estimate``, with ``"predictive":
    "point estimate"`` and ``"samples": None``.  It runs on a forked RNG seeded by ``seed``
    (the caller's RNG state is left as it was): the same seed gives the same file.

    Returns
    -------
    dict
        What was written: ``predictive``, ``samples``, ``seed``, ``split``, ``examples``,
        ``classes``, ``epoch``, ``prior`` and ``estimates`` (name → :func:`calibration`).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if samples < 1:
        raise ValueError(f"samples must be ≥ 1, got {samples}")
    with RunDir(run_dir).writing("pbc evaluate --samples"), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        trained = load_trained(run_dir)
        record = _evaluate(trained, samples, split, batch_size, seed, bins)
        write_json(trained.dir / PREDICTIVE, record)
    return record


def _evaluate(trained, samples, split, batch_size, seed, bins) -> dict:
    _, data = run_splits(trained.config)
    x, y = (data.test_x, data.test_y) if split == "test" else (data.val_x, data.val_y)
    if x.shape[0] == 0:
        raise StageError(f"{trained.dir}: the {split} split is empty (--val 0)")
    method, net = trained.method, trained.net
    plain = method.evaluation_network(net, trained.arch)
    estimates = {}
    if method.has_posterior:
        mc = predictive_probs(net, x, samples, batch_size).mean(0)
        estimates["monte_carlo"] = calibration(mc, y, bins)
        estimates["posterior_mean"] = calibration(point_probs(plain, x, batch_size), y, bins)
    else:
        estimates["point_estimate"] = calibration(point_probs(plain, x, batch_size), y, bins)
    return {"predictive": MONTE_CARLO if method.has_posterior else POINT_ESTIMATE,
            "samples": samples if method.has_posterior else None, "seed": seed,
            "split": split, "examples": int(x.shape[0]), "classes": int(data.num_classes),
            "epoch": int(trained.checkpoint["epoch"]), "prior": trained.config.prior,
            "estimates": estimates}
