"""A run directory: every artefact's name, its reading and writing, and loading a run.

One directory holds one run; each stage writes its artefacts there and reads the earlier
stages' (so any stage can be rerun alone):

========================  ==========  ==================================================
artefact                  stage       content
========================  ==========  ==================================================
``config.json``           train       every setting, architecture, data set, environment
``checkpoint.pt``         train       parameters, optimiser and RNG state, epochs done
``metrics.jsonl``         train       one record per epoch
``posterior.nc``          analyse     ArviZ draws of ``z`` and per-weight moments
``groups.csv``            analyse     one row per group
``layers.csv``            analyse     one row per layer
``analysis.json``         analyse     thresholds and score histograms
``figures/``              analyse     diagnostic plots (PNG)
``pruned.pt``             compress    the structured export (plain torch)
``quantised.pt``          compress    the same with quantised weights
``model.pbcz``            compress    the packed quantised network
``compression.json``      compress    sizes, bits, errors, rates
``bench.json``            bench       timings (and GPU energy)
``report.pdf``            report      the run's report
========================  ==========  ==================================================

:func:`load_trained` rebuilds the trained network (through its method) from
``config.json`` and ``checkpoint.pt``; :func:`read_run` reads whatever artefacts are there
without building anything (the report's view).
"""

from __future__ import annotations

import dataclasses
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyro
import torch

from pbc import __version__, methods
from pbc.config import LEGACY_SETTINGS, TrainConfig
from pbc.data import Splits, default_val_size, load_dataset, split
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
from pbc.methods import Method
from pbc.nets import Architecture

CONFIG, CHECKPOINT, METRICS = "config.json", "checkpoint.pt", "metrics.jsonl"
POSTERIOR, GROUPS, LAYERS, ANALYSIS = "posterior.nc", "groups.csv", "layers.csv", "analysis.json"
FIGURES = "figures"
PRUNED, QUANTISED, PACKED, COMPRESSION = "pruned.pt", "quantised.pt", "model.pbcz", \
    "compression.json"
BENCH, BENCH_FIGURE, REPORT = "bench.json", "bench.png", "report.pdf"
#: the artefacts a report reads
SUMMARY_ARTEFACTS = (CONFIG, METRICS, LAYERS, ANALYSIS, COMPRESSION, BENCH)


class MissingStage(StageError):
    """A stage's input artefact is absent (e.g. ``compress`` before ``analyse``)."""


class RunDir:
    """The artefacts of one run directory, by name (see the module docstring)."""

    def __init__(self, path):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)

    def has(self, name: str) -> bool:
        return (self.path / name).is_file()

    def require(self, name: str, stage: str) -> Path:
        """The artefact's path; :class:`MissingStage` naming the stage that writes it."""
        if not self.has(name):
            raise MissingStage(f"{self.path}: no {name}; run `pbc {stage} {self.path}` first")
        return self.path / name

    # -- train ---------------------------------------------------------------------------------
    def saved_config(self) -> dict:
        """``config.json`` as written: ``config``, ``arch``, ``dataset``, ``environment``."""
        return read_json(self.path / CONFIG)

    def write_config(self, config: TrainConfig, arch: Architecture, dataset: dict) -> None:
        write_json(self.path / CONFIG, {"config": dataclasses.asdict(config),
                                        "arch": arch.to_dict(), "dataset": dataset,
                                        "environment": environment()})

    def checkpoint(self) -> dict:
        return load_torch(self.path / CHECKPOINT)

    def write_checkpoint(self, state: dict) -> None:
        save_torch(self.path / CHECKPOINT, state)

    def metrics(self) -> list[dict]:
        return read_jsonl(self.path / METRICS)

    def write_metrics(self, records: list[dict]) -> None:
        write_jsonl(self.path / METRICS, records)

    def epochs_done(self) -> int:
        """Epochs recorded by a checkpointed run (0 without a checkpoint)."""
        return len(self.metrics()) if self.has(CHECKPOINT) and self.has(METRICS) else 0

    # -- later stages ----------------------------------------------------------------------------
    def analysis(self) -> dict:
        return read_json(self.require(ANALYSIS, "analyse"))

    def compression(self) -> dict:
        return read_json(self.require(COMPRESSION, "compress"))


@dataclass
class TrainedRun:
    """A trained run rebuilt: its config, architecture, method, network (eval mode) and
    checkpoint."""

    dir: RunDir
    config: TrainConfig
    arch: Architecture
    method: Method
    net: torch.nn.Module
    checkpoint: dict


def _require_run_dir(run: Path) -> None:
    if not run.is_dir():
        raise StageError(f"{run}: no such run directory")


def load_trained(path) -> TrainedRun:
    """Rebuild a trained run from ``config.json`` and ``checkpoint.pt``."""
    run = RunDir(path)
    _require_run_dir(run.path)
    if not run.has(CONFIG) or not run.has(CHECKPOINT):
        raise StageError(f"{run}: no trained run here (no {CONFIG} and {CHECKPOINT}); "
                         f"run `pbc train --out {run}` first")
    saved = run.saved_config()
    ckpt = run.checkpoint()
    try:
        config = TrainConfig(**{**LEGACY_SETTINGS, **saved["config"]})
        arch = Architecture.from_dict(saved["arch"])
        method = methods.get(config.prior)
        net = method.build(config, arch)
        net.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, RuntimeError, ValueError) as e:
        raise ArtefactError(f"{run}: config.json and checkpoint.pt do not match "
                            f"({type(e).__name__}: {str(e).splitlines()[0]})") from None
    return TrainedRun(run, config, arch, method, net.eval(), ckpt)


def run_splits(config: TrainConfig) -> tuple[TrainConfig, Splits]:
    """The run's data: training set (its first ``subset``), less ``val`` examples held out
    for validation (:func:`pbc.data.split`), and the test set.  Returns the config with
    ``val`` resolved (``None`` → :func:`pbc.data.default_val_size`) and the splits."""
    data = load_dataset(config.data, config.data_dir, download=config.download)
    n = data.train_x.shape[0] if not config.subset else min(config.subset, data.train_x.shape[0])
    if config.val is None:
        config = dataclasses.replace(config, val=default_val_size(n))
    try:
        return config, split(data, config.val, config.seed, config.subset)
    except ValueError as e:
        raise StageError(str(e)) from None


def load_point_estimate(path: str) -> dict[str, torch.Tensor]:
    """The plain state dict of a ``prior="none"`` run (a run directory or its checkpoint)."""
    p = Path(path)
    ckpt = load_torch(p / CHECKPOINT if p.is_dir() else p)
    if ckpt.get("prior") != "none":
        raise ArtefactError(f"{path}: --init-from needs a deterministic run (prior 'none'), "
                            f"this one has prior {ckpt.get('prior')!r}")
    return ckpt["model"]


def environment() -> dict:
    """Package versions and git commit, recorded in ``config.json``."""
    package = Path(__file__).parent
    try:
        def git(*args):
            return subprocess.run(["git", *args], capture_output=True, text=True,
                                  cwd=package, timeout=5).stdout.strip()

        commit = git("rev-parse", "HEAD") or None
        # uncommitted changes to the package mean the commit alone does not name the code
        dirty = bool(git("status", "--porcelain", "--", str(package))) if commit else None
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"python": platform.python_version(), "torch": torch.__version__,
            "pyro": pyro.__version__, "pbc": __version__, "git_commit": commit,
            "git_dirty": dirty}


# ------------------------------------------------------------------------ the report's view
@dataclass
class RunRecord:
    """One run directory's summary artefacts, as read (``None``: the file is absent)."""

    path: Path
    label: str                                  # short unique name: the directory's name
    saved: dict                                 # config.json: config, arch, dataset, environment
    metrics: list[dict] = field(default_factory=list)
    layers: pd.DataFrame | None = None
    analysis: dict | None = None
    compression: dict | None = None
    bench: dict | None = None
    figures: list[Path] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def config(self) -> dict:
        return self.saved["config"]

    @property
    def model(self) -> str:
        return self.config["model"]

    @property
    def prior(self) -> str:
        return self.config["prior"]

    @property
    def data(self) -> str:
        return self.config.get("data", "")

    @property
    def git_commit(self) -> str | None:
        return self.saved.get("environment", {}).get("git_commit")

    def weighted_layers(self) -> list[dict]:
        """config.json's weighted layers (``linear``/``conv``) in order: name, kind, sizes."""
        return [s for s in self.saved.get("arch", {}).get("layers", [])
                if s.get("kind") in ("linear", "conv")]


def read_run(path) -> RunRecord:
    """Read every summary artefact of a run directory that is there; needs ``config.json``.

    Raises :class:`StageError` for a path that is not a run directory and
    :class:`ArtefactError` for an artefact that cannot be read.
    """
    run = RunDir(path)
    _require_run_dir(run.path)
    if not run.has(CONFIG):
        raise StageError(f"{run}: not a run directory (no {CONFIG}); "
                         f"give directories written by `pbc train`")
    saved = run.saved_config()
    cfg = saved.get("config") if isinstance(saved, dict) else None
    if not isinstance(cfg, dict) or "model" not in cfg or "prior" not in cfg:
        raise ArtefactError(f"{run / CONFIG}: no config.model / config.prior")
    r = RunRecord(path=run.path, label=run.path.resolve().name, saved=saved)
    r.missing = [name for name in SUMMARY_ARTEFACTS if not run.has(name)]
    r.metrics = run.metrics()
    if run.has(LAYERS):
        try:
            r.layers = pd.read_csv(run / LAYERS)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise ArtefactError(f"{run / LAYERS}: not a readable CSV ({e})") from None
    for name, attr in ((ANALYSIS, "analysis"), (COMPRESSION, "compression"), (BENCH, "bench")):
        if run.has(name):
            setattr(r, attr, read_json(run / name))
    r.figures = _analysis_figures(run.path, r.analysis)
    return r


def read_runs(paths) -> list[RunRecord]:
    """:func:`read_run` for each path; labels made unique (``name``, ``name#2``, …)."""
    runs = [read_run(p) for p in paths]
    seen: dict[str, int] = {}
    for r in runs:
        seen[r.label] = seen.get(r.label, 0) + 1
        if seen[r.label] > 1:
            r.label = f"{r.label}#{seen[r.label]}"
    return runs


def _analysis_figures(run: Path, analysis: dict | None) -> list[Path]:
    """The analyse stage's PNGs: ``analysis.json["figures"]`` if listed, else figures/*.png
    less the bench stage's chart."""
    if analysis and isinstance(analysis.get("figures"), list):
        paths = [run / p for p in analysis["figures"]]
        return [p for p in paths if p.suffix.lower() == ".png" and p.is_file()]
    return sorted(p for p in (run / FIGURES).glob("*.png") if p.name != BENCH_FIGURE)
