"""The ``train`` stage: the training loop over a method's hooks, with artefacts.

A run directory receives

* ``config.json`` — every :class:`~pbc.config.TrainConfig` field, package versions, git commit;
* ``checkpoint.pt`` — parameters, optimiser state, RNG state, completed epochs (atomic);
* ``metrics.jsonl`` — one record per epoch (ELBO terms in nats, KL in bits, ``train_error``
  on the first 10,000 training examples, ``val_error`` and ``test_error`` of the method's plain
  network, seconds).

The method (:mod:`pbc.methods`) builds the network and supplies the loss; the loop shuffles,
steps Adam under the learning-rate schedule, and evaluates.  Each epoch shuffles with a
generator seeded by ``(seed, epoch)`` and the global RNG state is checkpointed, so
``resume=True`` continues a killed run to the same numbers as an uninterrupted one on CPU.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import pyro
import torch
from tqdm.auto import tqdm

from pbc import methods
from pbc.bayes.elbo import MeanFieldELBO
from pbc.config import TrainConfig, saved_setting
from pbc.defaults import COOLDOWN
from pbc.finetune import start_from_analysed
from pbc.io import ArtefactError
from pbc.methods import Method
from pbc.nets import Architecture, classification_error, make_architecture
from pbc.rundir import CHECKPOINT, METRICS, RunDir, load_point_estimate, run_splits

# the settings a resumed run must share with the run it continues
RESUME_KEYS = ("model", "prior", "data", "batch_size", "seed", "subset", "val", "tau0", "lr",
               "lr_schedule", "scale_var_lr", "max_weight_var", "sws_tau", "sws_zero_rate",
               "sws_rate", "dc_keep", "finetune_from")


class TrainingDiverged(RuntimeError):
    """The loss became non-finite; the last good checkpoint is left untouched."""


@dataclass
class TrainResult:
    """What :func:`train` returns: the run directory, the metrics, the trained network."""

    out: Path
    metrics: list[dict]
    net: torch.nn.Module
    arch: Architecture


# Training error is tracked on the first this many training examples: enough to see over- or
# under-fitting, at a fifth of the cost of a pass over 55,000 images.
TRAIN_ERROR_EXAMPLES = 10_000


def check_config(config: TrainConfig) -> Method:
    """Validate ``config`` (its fields, then its method's settings); return the method.
    ``ValueError`` with a one-line reason."""
    config.validate()
    method = methods.get(config.prior)
    method.validate(config)
    return method


def kl_weight(config: TrainConfig, epoch: int, step: int, steps: int) -> float:
    """Linear KL annealing from 0 to 1 over ``kl_warmup`` epochs (1 when it is 0)."""
    if config.kl_warmup == 0:
        return 1.0
    return min(1.0, (epoch + (step + 1) / steps) / config.kl_warmup)


def learning_rate(config: TrainConfig, epoch: int, step: int, steps: int) -> float:
    """The rate at a step, with ``p`` the progress through the run (0 → 1): ``lr``
    (constant), ``lr·½(1 + cos(πp))`` (cosine), or ``lr`` until ``p = 1 − c`` and then
    ``lr·(1 − p)/c``, a linear decay to 0 over the last share ``c`` of the run (cooldown,
    ``c = COOLDOWN``)."""
    if config.lr_schedule == "constant":
        return config.lr
    progress = (epoch + step / steps) / config.epochs
    if config.lr_schedule == "cooldown":
        return config.lr * min(1.0, (1.0 - progress) / COOLDOWN)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def _start(config: TrainConfig, run: RunDir, saved: dict | None, earlier: dict, net,
           optim) -> tuple[int, list[dict]]:
    """Restore a checkpoint when resuming (``saved``: the run's saved config; ``earlier``:
    what a ``None`` there meant); return (completed epochs, metrics so far)."""
    if not config.resume:
        return 0, []
    ckpt = run.checkpoint(resume=True)
    for key in RESUME_KEYS:
        was = saved_setting(saved, key, earlier)
        if was != getattr(config, key):
            raise ArtefactError(f"{run}: cannot resume: {key} was {was!r}, "
                                f"now {getattr(config, key)!r}")
    if bool(saved.get("init_from")) != bool(config.init_from):
        raise ArtefactError(f"{run}: cannot resume: the run started from "
                            f"{saved.get('init_from') or 'scratch'}, now from "
                            f"{config.init_from or 'scratch'} (the start sets GHS's defaults)")
    if config.lr_schedule != "constant" and saved.get("epochs") != config.epochs:
        raise ArtefactError(f"{run}: cannot resume: the {config.lr_schedule} schedule was "
                            f"planned for {saved.get('epochs')} epochs, now {config.epochs}")
    try:
        net.load_state_dict(ckpt["model"])
        optim.load_state_dict(ckpt["optim"])
        torch.set_rng_state(ckpt["rng"])
        if ckpt.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
        raise ArtefactError(f"{run / CHECKPOINT}: does not fit this run's network "
                            f"({type(e).__name__}: {str(e).splitlines()[0]})") from None
    epoch = ckpt["epoch"]
    metrics = [m for m in run.metrics() if m["epoch"] <= epoch]
    if len(metrics) != epoch:
        raise ArtefactError(f"{run / METRICS}: {len(metrics)} records for the checkpoint's "
                            f"{epoch} epochs")
    return epoch, metrics


def _batches(n: int, batch_size: int, seed: int, epoch: int):
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=gen)
    return [perm[i:i + batch_size] for i in range(0, n, batch_size)]


def train(config: TrainConfig) -> TrainResult:
    """Run (or resume) training; write the run's artefacts; return a :class:`TrainResult`.

    The run directory is locked while training (a second writer is refused); a run that
    fails before its directory holds anything leaves no directory behind."""
    method = check_config(config)
    run = RunDir(config.out)
    created = not run.path.exists()
    run.path.mkdir(parents=True, exist_ok=True)
    try:
        with run.writing("pbc train"):
            return _train(config, method, run)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                run.path.rmdir()           # only when empty: nothing of the run is lost
        raise


def _train(config: TrainConfig, method: Method, run: RunDir) -> TrainResult:
    if config.threads:
        torch.set_num_threads(config.threads)
    pyro.settings.set(module_local_params=True)
    if not config.resume:
        torch.manual_seed(config.seed)

    config, data = run_splits(config)
    device = torch.device(config.device)
    train_x, train_y = data.train_x.to(device), data.train_y.to(device)
    arch = make_architecture(config.model, data.input_shape, data.num_classes)

    net = method.build(config, arch)
    optim_state = None
    if config.finetune_from and not config.resume:
        optim_state = start_from_analysed(config.finetune_from, net, arch)
    elif config.init_from and not config.resume:
        state = load_point_estimate(config.init_from, arch)
        try:
            method.load_point_estimate(net, state)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
            raise ArtefactError(f"{config.init_from}: --init-from does not fit a {config.model} "
                                f"on {config.data} ({type(e).__name__}: "
                                f"{str(e).splitlines()[0]})") from None
    saved = run.saved_config()["config"] if config.resume else None
    config = method.settle(config, net, saved)
    net.to(device)
    optim = torch.optim.Adam(method.param_groups(net, config), lr=config.lr)
    if optim_state is not None:
        optim.load_state_dict(optim_state)
    start, metrics = _start(config, run, saved, method.earlier_settings(config), net, optim)
    run.write_config(config, arch, {"name": data.name, "source": data.source,
                                    "train": int(train_x.shape[0]),
                                    "val": int(data.val_x.shape[0]),
                                    "test": int(data.test_x.shape[0])})
    elbo = MeanFieldELBO()
    for epoch in range(start, config.epochs):
        # Pyro's argument checks cost ~20% of a step; the tests run with them on.
        with pyro.validation_enabled(False):
            record = _train_epoch(config, method, net, elbo, optim, train_x, train_y, epoch)
        t0 = time.perf_counter()
        plain = method.evaluation_network(net, arch)
        n_err = TRAIN_ERROR_EXAMPLES
        record["train_error"] = classification_error(plain, train_x[:n_err], train_y[:n_err],
                                                     device=device)
        if config.val:
            record["val_error"] = classification_error(plain, data.val_x, data.val_y,
                                                       device=device)
        record["test_error"] = classification_error(plain, data.test_x, data.test_y,
                                                    device=device)
        record["eval_seconds"] = time.perf_counter() - t0
        metrics.append(record)
        run.write_metrics(metrics)
        run.write_checkpoint({"epoch": epoch + 1, "prior": config.prior,
                              "model": net.state_dict(), "optim": optim.state_dict(),
                              "rng": torch.get_rng_state(),
                              "cuda_rng": (torch.cuda.get_rng_state_all()
                                           if device.type == "cuda" else None)})
        if config.progress:
            tqdm.write(_summary(record))
    return TrainResult(run.path, metrics, net, arch)


def _train_epoch(config: TrainConfig, method: Method, net, elbo, optim, x, y, epoch) -> dict:
    """One pass over the shuffled training set; returns the epoch's metrics record."""
    n = x.shape[0]
    batches = _batches(n, config.batch_size, config.seed, epoch)
    method.before_epoch(net, epoch, config)
    complexity = method.complexity_scale(config)
    sums: dict[str, float] = {}
    net.train()
    t0 = time.perf_counter()
    bar = tqdm(batches, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
               disable=None if config.progress else True, unit="step")   # None: TTY only
    for step, idx in enumerate(bar):
        idx_dev = idx.to(x.device)
        xb, yb = x[idx_dev], y[idx_dev]
        optim.zero_grad(set_to_none=True)
        lr = learning_rate(config, epoch, step, len(batches))
        for group in optim.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        kl_scale = complexity * kl_weight(config, epoch, step, len(batches))
        loss, parts = method.loss(net, elbo, xb, yb, idx_dev, n, kl_scale)
        if not torch.isfinite(loss):
            kept = (f"the last good checkpoint (epoch {epoch}) is kept in {config.out}"
                    if epoch > 0 else "no checkpoint was written")
            raise TrainingDiverged(
                f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, step {step + 1}; "
                f"{kept}")
        loss.backward()
        optim.step()
        method.after_step(net, config)
        for key, value in (("loss", loss.item()), *parts.items()):
            sums[key] = sums.get(key, 0.0) + value
    record = {"epoch": epoch + 1, "seconds": time.perf_counter() - t0,
              **method.epoch_metrics(net)}
    record.update(method.loss_metrics(sums, len(batches), kl_scale))
    return record


def _summary(r: dict) -> str:
    parts = [f"epoch {r['epoch']}", f"{r['seconds']:.1f}s"]
    if "elbo" in r:
        parts += [f"elbo {r['elbo']:.4g}", f"kl {r['kl']:.4g}"]
    else:
        parts.append(f"ce {r['cross_entropy']:.4f}")
    parts.append(f"train err {r['train_error']:.4f}")
    if "val_error" in r:
        parts.append(f"val err {r['val_error']:.4f}")
    parts.append(f"test err {r['test_error']:.4f}")
    return " | ".join(parts)
