"""The ``train`` stage: SVI (or plain maximum likelihood for ``prior="none"``) with artefacts.

A run directory receives

* ``config.json`` — every :class:`TrainConfig` field, package versions, git commit;
* ``checkpoint.pt`` — parameters, optimiser state, RNG state, completed epochs (atomic);
* ``metrics.jsonl`` — one record per epoch (ELBO terms in nats, KL in bits, ``train_error``
  and ``test_error`` with posterior-mean weights, seconds).

Each epoch shuffles with a generator seeded by ``(seed, epoch)`` and the global RNG state is
checkpointed, so ``resume=True`` continues a killed run to the same numbers as an
uninterrupted one on CPU.
"""

from __future__ import annotations

import dataclasses
import math
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from pbc.data import load_dataset
from pbc.deep_compression import MaskedNetwork
from pbc.infer import LN2, MeanFieldELBO, classification_error
from pbc.io import (
    ArtefactError,
    StageError,
    load_torch,
    read_json,
    read_jsonl,
    save_torch,
    write_json,
    write_jsonl,
)
from pbc.models import ARCHITECTURES, Architecture, BayesNet, build_network, make_architecture
from pbc.priors import PRIORS, make_prior
from pbc.soft_sharing import DEFAULT_TAU as SWS_DEFAULT_TAU
from pbc.soft_sharing import GAMMA_OTHER, GAMMA_ZERO, SoftSharingNet

BASELINES = ("sws", "dc")   # methods trained from a plain network without a Bayesian layer
PRIOR_CHOICES = ("none", *PRIORS, *BASELINES)
LR_SCHEDULES = ("cosine", "constant")
CHECKPOINT, CONFIG, METRICS = "checkpoint.pt", "config.json", "metrics.jsonl"


class TrainingDiverged(RuntimeError):
    """The loss became non-finite; the last good checkpoint is left untouched."""


@dataclass
class TrainConfig:
    """Every setting of a training run (``pbc train`` flags map one-to-one onto these)."""

    out: str
    model: str = "lenet300"
    prior: str = "gnj"
    data: str = "fashion-mnist"
    data_dir: str | None = None
    download: bool = False
    epochs: int = 30
    batch_size: int = 100
    lr: float = 1e-3
    lr_schedule: str = "cosine"
    seed: int = 0
    device: str = "cpu"
    subset: int | None = None
    init_from: str | None = None
    resume: bool = False
    tau0: float = 1e-5
    max_weight_var: float | None = None   # None: the prior's default, see effective_max_weight_var
    kl_warmup: int = 0
    sws_tau: float = SWS_DEFAULT_TAU
    sws_zero_rate: float = GAMMA_ZERO[1]   # rates of the mixture's precision hyperpriors
    sws_rate: float = GAMMA_OTHER[1]
    dc_keep: dict[str, float] | None = None   # per-layer keep fractions (dc); None: Han et al.
    threads: int | None = None
    progress: bool = True

    def validate(self) -> None:
        """Raise ``ValueError`` with a one-line reason for an impossible setting."""
        if self.model not in ARCHITECTURES:
            raise ValueError(f"unknown model {self.model!r}; choose from {sorted(ARCHITECTURES)}")
        if self.prior not in PRIOR_CHOICES:
            raise ValueError(f"unknown prior {self.prior!r}; choose from {list(PRIOR_CHOICES)}")
        for field in ("epochs", "batch_size"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be at least 1, got {getattr(self, field)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr schedule {self.lr_schedule!r}; choose from "
                             f"{list(LR_SCHEDULES)}")
        if self.kl_warmup < 0:
            raise ValueError(f"kl_warmup must be ≥ 0, got {self.kl_warmup}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.subset is not None and self.subset < 1:
            raise ValueError(f"subset must be at least 1, got {self.subset}")
        if not self.tau0 > 0:
            raise ValueError(f"tau0 must be positive, got {self.tau0}")
        if self.prior in BASELINES and not self.init_from and not self.resume:
            raise ValueError(f"--prior {self.prior} retrains a trained plain network: pass "
                             f"--init-from RUN (from `pbc pretrain`)")
        if not self.sws_tau > 0:
            raise ValueError(f"sws_tau must be positive, got {self.sws_tau}")
        for field in ("sws_zero_rate", "sws_rate"):
            if not getattr(self, field) > 0:
                raise ValueError(f"{field} must be positive, got {getattr(self, field)}")
        if self.max_weight_var is not None and not self.max_weight_var > 0:
            raise ValueError(f"max_weight_var must be positive, got {self.max_weight_var}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but CUDA is not available")


@dataclass
class TrainResult:
    """What :func:`train` returns: the run directory, the metrics, the trained network."""

    out: Path
    metrics: list[dict]
    net: torch.nn.Module
    arch: Architecture


def environment() -> dict:
    """Package versions and git commit, recorded in ``config.json``."""
    import pbc

    try:
        def git(*args):
            return subprocess.run(["git", *args], capture_output=True, text=True,
                                  cwd=Path(__file__).parent, timeout=5).stdout.strip()

        commit = git("rev-parse", "HEAD") or None
        # uncommitted changes to the package mean the commit alone does not name the code
        dirty = bool(git("status", "--porcelain", "--", str(Path(__file__).parent))) \
            if commit else None
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"python": platform.python_version(), "torch": torch.__version__,
            "pyro": pyro.__version__, "pbc": pbc.__version__, "git_commit": commit,
            "git_dirty": dirty}


# Bound on Var[w̃] when --max-weight-var is not given: Louizos et al.'s clip_var, for BC-GNJ
# and for BC-GHS trained from scratch (its scale starts at 1 and w̃ = w, so an unbounded
# σ² → 1 would drown the weights in noise).  BC-GHS from a pretrained net gets none: its
# scale starts at the weight scale, and its groups prune when w̃ returns to its N(0, 1) prior
# and z shrinks, which a bound far below 1 forbids (with 0.04, 30 epochs pruned nothing).
CLIP_VAR = 0.04


def effective_max_weight_var(config: TrainConfig) -> float | None:
    """The bound in force: ``config.max_weight_var`` or the prior's default (see above)."""
    if config.max_weight_var is not None:
        return config.max_weight_var
    if config.prior == "gnj" or (config.prior == "ghs" and not config.init_from):
        return CLIP_VAR
    return None


def build(config: TrainConfig, arch: Architecture) -> torch.nn.Module:
    """The network a config trains: plain for ``prior="none"``, a :class:`BayesNet` for the
    Bayesian priors, the baselines' own networks for ``sws`` and ``dc``."""
    if config.prior == "none":
        return build_network(arch)
    if config.prior == "dc":
        return MaskedNetwork(arch, config.dc_keep)
    if config.prior == "sws":
        return SoftSharingNet(arch, zero_rate=config.sws_zero_rate, rate=config.sws_rate)
    return BayesNet(arch, make_prior(config.prior, tau0=config.tau0),
                    pretrained=bool(config.init_from))


def posterior_mean_network(net: torch.nn.Module, arch: Architecture) -> torch.nn.Module:
    """A plain network holding ``E[w]`` (the point estimates for SWS, the masked weights for
    DC; ``net`` itself when it is already plain)."""
    if not hasattr(net, "posterior_mean_state_dict"):
        return net
    plain = build_network(arch).to(next(net.parameters()).device)
    plain.load_state_dict(net.posterior_mean_state_dict())
    return plain


def load_run(run_dir) -> tuple[TrainConfig, Architecture, torch.nn.Module, dict]:
    """Rebuild a trained run: its config, architecture, network (eval mode) and checkpoint."""
    run = Path(run_dir)
    if not run.is_dir():
        raise StageError(f"{run}: no such run directory")
    if not (run / CONFIG).is_file() or not (run / CHECKPOINT).is_file():
        raise StageError(f"{run}: no trained run here (no {CONFIG} and {CHECKPOINT}); "
                         f"run `pbc train --out {run}` first")
    saved = read_json(run / CONFIG)
    ckpt = load_torch(run / CHECKPOINT)
    try:
        config = TrainConfig(**saved["config"])
        arch = Architecture.from_dict(saved["arch"])
        net = build(config, arch)
        net.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, RuntimeError) as e:
        raise ArtefactError(f"{run}: config.json and checkpoint.pt do not match "
                            f"({type(e).__name__}: {str(e).splitlines()[0]})") from None
    return config, arch, net.eval(), ckpt


def load_point_estimate(path: str) -> dict[str, torch.Tensor]:
    """The plain state dict of a ``prior="none"`` run (a run directory or its checkpoint)."""
    p = Path(path)
    ckpt = load_torch(p / CHECKPOINT if p.is_dir() else p)
    if ckpt.get("prior") != "none":
        raise ArtefactError(f"{path}: --init-from needs a deterministic run (prior 'none'), "
                            f"this one has prior {ckpt.get('prior')!r}")
    return ckpt["model"]


def kl_weight(config: TrainConfig, epoch: int, step: int, steps: int) -> float:
    """Linear KL annealing from 0 to 1 over ``kl_warmup`` epochs (1 when it is 0)."""
    if config.kl_warmup == 0:
        return 1.0
    return min(1.0, (epoch + (step + 1) / steps) / config.kl_warmup)


def learning_rate(config: TrainConfig, epoch: int, step: int, steps: int) -> float:
    """``lr`` (constant) or ``lr·½(1 + cos(π·progress))`` over the whole run (cosine)."""
    if config.lr_schedule == "constant":
        return config.lr
    progress = (epoch + step / steps) / config.epochs
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def _start(config: TrainConfig, out: Path, net, optim) -> tuple[int, list[dict]]:
    """Restore a checkpoint when resuming; return (completed epochs, metrics so far)."""
    if not config.resume:
        return 0, []
    ckpt = load_torch(out / CHECKPOINT)
    saved = read_json(out / CONFIG)["config"]
    for key in ("model", "prior", "data", "batch_size", "seed", "subset", "tau0", "lr",
                "lr_schedule", "max_weight_var", "sws_tau", "sws_zero_rate",
                "sws_rate", "dc_keep"):
        # a setting added after the run was made has its default there
        if saved.get(key, TrainConfig.__dataclass_fields__[key].default) != getattr(config, key):
            raise ArtefactError(f"{out}: cannot resume: {key} was {saved.get(key)!r}, "
                                f"now {getattr(config, key)!r}")
    if bool(saved.get("init_from")) != bool(config.init_from):
        raise ArtefactError(f"{out}: cannot resume: the run started from "
                            f"{saved.get('init_from') or 'scratch'}, now from "
                            f"{config.init_from or 'scratch'} (the start sets GHS's defaults)")
    if config.lr_schedule == "cosine" and saved.get("epochs") != config.epochs:
        raise ArtefactError(f"{out}: cannot resume: the cosine schedule was planned for "
                            f"{saved.get('epochs')} epochs, now {config.epochs}")
    net.load_state_dict(ckpt["model"])
    optim.load_state_dict(ckpt["optim"])
    torch.set_rng_state(ckpt["rng"])
    if ckpt.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
    epoch = int(ckpt["epoch"])
    return epoch, [m for m in read_jsonl(out / METRICS) if m["epoch"] <= epoch]


def _batches(n: int, batch_size: int, seed: int, epoch: int):
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=gen)
    return [perm[i:i + batch_size] for i in range(0, n, batch_size)]


def train(config: TrainConfig) -> TrainResult:
    """Run (or resume) training; write the run's artefacts; return a :class:`TrainResult`."""
    config.validate()
    if config.threads:
        torch.set_num_threads(config.threads)
    pyro.settings.set(module_local_params=True)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    if not config.resume:
        torch.manual_seed(config.seed)

    data = load_dataset(config.data, config.data_dir, download=config.download)
    train_x, train_y = data.train_x, data.train_y
    if config.subset:
        train_x, train_y = train_x[:config.subset], train_y[:config.subset]
    device = torch.device(config.device)
    train_x, train_y = train_x.to(device), train_y.to(device)
    arch = make_architecture(config.model, data.input_shape, data.num_classes)

    net = build(config, arch)
    if config.init_from and not config.resume:
        state = load_point_estimate(config.init_from)
        if hasattr(net, "load_point_estimate"):
            net.load_point_estimate(state)
        else:
            net.load_state_dict(state)
    net.to(device)
    params = net.param_groups() if hasattr(net, "param_groups") else net.parameters()
    optim = torch.optim.Adam(params, lr=config.lr)
    start, metrics = _start(config, out, net, optim)
    write_json(out / CONFIG, {"config": dataclasses.asdict(config), "arch": arch.to_dict(),
                              "dataset": {"name": data.name, "source": data.source,
                                          "train": int(train_x.shape[0]),
                                          "test": int(data.test_x.shape[0])},
                              "environment": environment()})
    elbo = MeanFieldELBO()
    n = train_x.shape[0]
    for epoch in range(start, config.epochs):
        # Pyro's argument checks cost ~20% of a step; the tests run with them on.
        with pyro.validation_enabled(False):
            record = _train_epoch(config, net, elbo, optim, train_x, train_y, n, epoch)
        t0 = time.perf_counter()
        plain = posterior_mean_network(net, arch)
        record["train_error"] = classification_error(plain, train_x, train_y, device=device)
        record["test_error"] = classification_error(plain, data.test_x, data.test_y,
                                                    device=device)
        record["eval_seconds"] = time.perf_counter() - t0
        metrics.append(record)
        write_jsonl(out / METRICS, metrics)
        save_torch(out / CHECKPOINT, {"epoch": epoch + 1, "prior": config.prior,
                                      "model": net.state_dict(), "optim": optim.state_dict(),
                                      "rng": torch.get_rng_state(),
                                      "cuda_rng": (torch.cuda.get_rng_state_all()
                                                   if device.type == "cuda" else None)})
        if config.progress:
            tqdm.write(_summary(record))
    return TrainResult(out, metrics, net, arch)


def _train_epoch(config, net, elbo, optim, x, y, n, epoch) -> dict:
    """One pass over the shuffled training set; returns the epoch's metrics record."""
    batches = _batches(n, config.batch_size, config.seed, epoch)
    max_var = effective_max_weight_var(config)
    svi = hasattr(net, "model")       # BayesNet and SoftSharingNet: the (MAP-)ELBO
    if hasattr(net, "before_epoch"):  # Deep Compression's pruning schedule
        net.before_epoch(epoch, config.epochs)
    # SWS weighs its complexity by τ against the full-data log-likelihood
    kl_scale = config.sws_tau if config.prior == "sws" else 1.0
    sums = {"loss": 0.0, "expected_loglik": 0.0, "kl": 0.0}
    net.train()
    t0 = time.perf_counter()
    bar = tqdm(batches, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
               disable=not config.progress, unit="step")
    for step, idx in enumerate(bar):
        idx_dev = idx.to(x.device)
        xb, yb = x[idx_dev], y[idx_dev]
        optim.zero_grad(set_to_none=True)
        lr = learning_rate(config, epoch, step, len(batches))
        for group in optim.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        if svi:
            beta = kl_scale * kl_weight(config, epoch, step, len(batches))
            terms = elbo(net.model, net.guide, xb, yb, subsample=idx_dev, size=n, kl_weight=beta)
            loss = terms.loss
        else:
            loss = F.cross_entropy(net(xb), yb)
        if not torch.isfinite(loss):
            kept = (f"the last good checkpoint (epoch {epoch}) is kept in {config.out}"
                    if epoch > 0 else "no checkpoint was written")
            raise TrainingDiverged(
                f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, step {step + 1}; "
                f"{kept}")
        loss.backward()
        optim.step()
        if isinstance(net, BayesNet):
            net.clip_variances(max_var)
        if hasattr(net, "after_step"):   # Deep Compression: pruned weights stay 0
            net.after_step()
        sums["loss"] += loss.item()
        if svi:
            sums["expected_loglik"] += terms.expected_loglik.item()
            sums["kl"] += terms.kl.item()
    seconds = time.perf_counter() - t0
    steps = len(batches)
    record = {"epoch": epoch + 1, "seconds": seconds}
    if hasattr(net, "before_epoch"):
        record["kept_fraction"] = net.kept_fraction()
    if svi:
        record.update({"elbo": -sums["loss"] / steps, "expected_loglik":
                       sums["expected_loglik"] / steps, "kl": sums["kl"] / steps,
                       "kl_bits": sums["kl"] / steps / LN2, "kl_weight": beta})
    else:
        record["cross_entropy"] = sums["loss"] / steps
    return record


def _summary(r: dict) -> str:
    parts = [f"epoch {r['epoch']}", f"{r['seconds']:.1f}s"]
    if "elbo" in r:
        parts += [f"elbo {r['elbo']:.4g}", f"kl {r['kl']:.4g}"]
    else:
        parts.append(f"ce {r['cross_entropy']:.4f}")
    parts += [f"train err {r['train_error']:.4f}", f"test err {r['test_error']:.4f}"]
    return " | ".join(parts)
