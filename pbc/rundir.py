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
``predictive.json``       evaluate    calibration of the posterior predictive (``--samples``)
``model.int8.pt`` …       export      for other tools (:data:`pbc.defaults.EXPORT_FILES`)
``report.pdf``            report      the run's report
========================  ==========  ==================================================

A stage writes under the directory's lock (:meth:`RunDir.writing`); ``analyse`` and
``compress`` commit their files together (:class:`pbc.io.Commit`), and ``analysis.json`` /
``compression.json`` record the SHA-256 of the files they describe, which the readers here
check.

:func:`load_trained` rebuilds the trained network (through its method) from
``config.json`` and ``checkpoint.pt``; :func:`read_run` reads whatever artefacts are there
without building anything (the report's view).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import platform
import subprocess
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyro
import torch

from pbc import __version__, methods
from pbc.config import LEGACY_SETTINGS, TrainConfig
from pbc.data import Splits, default_val_size, load_dataset, split
from pbc.graph.rebuild import import_factory
from pbc.io import (
    ArtefactError,
    StageError,
    load_torch,
    pending_commit,
    read_json,
    read_jsonl,
    recover,
    save_torch,
    sha256_file,
    sweep_temporaries,
    write_json,
    write_jsonl,
)
from pbc.lock import Locked, locked
from pbc.methods import Method
from pbc.nets import Architecture
from pbc.schema import (
    calibration_records,
    check_checkpoint,
    check_fields,
    check_png,
    is_int,
    is_number,
    numbers,
    object_of_objects,
    objects,
)

CONFIG, CHECKPOINT, METRICS = "config.json", "checkpoint.pt", "metrics.jsonl"
POSTERIOR, GROUPS, LAYERS, ANALYSIS = "posterior.nc", "groups.csv", "layers.csv", "analysis.json"
FIGURES = "figures"
PRUNED, QUANTISED, PACKED, COMPRESSION = "pruned.pt", "quantised.pt", "model.pbcz", \
    "compression.json"
BENCH, BENCH_FIGURE, REPORT = "bench.json", "bench.png", "report.pdf"
PREDICTIVE = "predictive.json"
FRONTIER = "frontier.csv"
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

    @contextlib.contextmanager
    def writing(self, command: str):
        """Hold the directory's write lock (:func:`pbc.lock.locked`) while a stage writes;
        on taking it, finish a multi-file commit that a kill interrupted and sweep the
        temporary files killed processes left behind.  StageError if the directory does
        not exist."""
        _require_run_dir(self.path)
        with locked(self.path, command):
            recover(self.path)
            sweep_temporaries(self.path)
            yield self

    def settle(self) -> None:
        """Before reading: finish a multi-file commit that a kill interrupted, unless another
        process is writing here (it has finished it)."""
        if pending_commit(self.path):
            with contextlib.suppress(Locked), locked(self.path, "pbc (finishing a commit)"):
                recover(self.path)

    # -- train ---------------------------------------------------------------------------------
    def saved_config(self) -> dict:
        """``config.json`` as written: ``config``, ``arch``, ``dataset``, ``environment``."""
        saved = read_json(self.path / CONFIG)
        if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
            raise ArtefactError(f"{self.path / CONFIG}: not a pbc run configuration (no "
                                f"'config' object)")
        return saved

    def write_config(self, config: TrainConfig, arch: Architecture, dataset: dict) -> None:
        write_json(self.path / CONFIG, {"config": dataclasses.asdict(config),
                                        "arch": arch.to_dict(), "dataset": dataset,
                                        "environment": environment()})

    def checkpoint(self, resume: bool = False) -> dict:
        """``checkpoint.pt``, its container verified and its content checked
        (:func:`check_checkpoint`)."""
        return check_checkpoint(load_torch(self.path / CHECKPOINT), self.path / CHECKPOINT,
                                resume)

    def write_checkpoint(self, state: dict) -> None:
        save_torch(self.path / CHECKPOINT, state)

    def metrics(self) -> list[dict]:
        """``metrics.jsonl``: one object per epoch, each with a whole-number ``epoch`` (and the
    fields of :data:`_FIELDS` of the right types)."""
        records = read_jsonl(self.path / METRICS)
        for i, r in enumerate(records, 1):
            if not is_int(r.get("epoch")) or r["epoch"] < 1:
                raise ArtefactError(f"{self.path / METRICS}: record {i} has no whole-number "
                                    f"'epoch' ≥ 1")
            check_fields(r, f"{self.path / METRICS}: record {i}", _FIELDS[METRICS])
        return records

    def write_metrics(self, records: list[dict]) -> None:
        write_jsonl(self.path / METRICS, records)

    def epochs_done(self) -> int:
        """Epochs recorded by a checkpointed run (0 without a checkpoint)."""
        return len(self.metrics()) if self.has(CHECKPOINT) and self.has(METRICS) else 0

    # -- later stages ----------------------------------------------------------------------------
    def analysis(self) -> dict:
        """``analysis.json``, checked: an object whose ``thresholds`` map layer names to
        numbers, and whose recorded SHA-256 digests match the files beside it."""
        path = self.require(ANALYSIS, "analyse")
        record = check_fields(read_json(path), path, _FIELDS[ANALYSIS])
        thresholds = record.get("thresholds")
        if not isinstance(thresholds, dict):
            raise ArtefactError(f"{path}: no 'thresholds' object; rerun `pbc analyse {self}`")
        for name, value in thresholds.items():
            if not is_number(value) or math.isnan(value):
                raise ArtefactError(f"{path}: threshold of {name!r} is {value!r}, not a number")
        self.verify_digests(record, ANALYSIS)
        return record

    def thresholds(self, layers) -> dict[str, float]:
        """``analysis.json``'s threshold of each of ``layers``; ArtefactError naming any it
        lacks."""
        thresholds = self.analysis()["thresholds"]
        missing = [n for n in layers if n not in thresholds]
        if missing:
            raise ArtefactError(f"{self / ANALYSIS}: no threshold for {', '.join(missing)}; "
                                f"rerun `pbc analyse {self}`")
        return {n: float(thresholds[n]) for n in layers}

    def significand_bits(self) -> dict[str, int]:
        """``analysis.json``'s significand bits per layer (empty for an analysis written
        before they were recorded: the compress stage then uses the posterior's)."""
        return {n: int(t) for n, t in self.analysis().get("significand_bits", {}).items()}

    def compression(self) -> dict:
        """``compression.json``, checked: an object whose recorded SHA-256 digests match the
        files beside it."""
        path = self.require(COMPRESSION, "compress")
        record = check_fields(read_json(path), path, _FIELDS[COMPRESSION])
        self.verify_digests(record, COMPRESSION)
        return record

    def predictive(self) -> dict:
        """``predictive.json``, checked: an object with ``estimates`` mapping names to
        calibration records (:func:`pbc.schema.calibration_record`)."""
        path = self.require(PREDICTIVE, "evaluate --samples 30")
        record = check_fields(read_json(path), path, _FIELDS[PREDICTIVE])
        if "estimates" not in record:
            raise ArtefactError(f"{path}: no 'estimates' object")
        return record

    def verify_digests(self, record: dict, name: str, only: tuple[str, ...] | None = None
                       ) -> None:
        """Check the files that ``record`` (the artefact ``name``) lists under ``sha256``
        against their digests; a file that is absent is not checked.  ArtefactError when one
        differs: the pair is out of step (a file replaced or damaged since)."""
        digests = record.get("sha256")
        if digests is None:
            return                                   # written before digests were recorded
        if not isinstance(digests, dict):
            raise ArtefactError(f"{self / name}: 'sha256' is not an object")
        for file, digest in digests.items():
            if only is not None and file not in only:
                continue
            target = self.path / str(file)
            if "/" in str(file) or file.startswith(".") or not target.is_file():
                continue
            if sha256_file(target) != digest:
                raise ArtefactError(f"{target}: does not match {name} (SHA-256 differs: the "
                                    f"file was replaced or damaged); rerun the stage that "
                                    f"writes them")


def verify_recorded(path) -> None:
    """If the run directory holding ``path`` records the file's digest (in
    ``compression.json`` or ``analysis.json``), check it."""
    path = Path(path)
    run = RunDir(path.parent)
    run.settle()
    for record_name in (COMPRESSION, ANALYSIS):
        if run.has(record_name):
            record = read_json(run / record_name)
            if isinstance(record, dict):
                run.verify_digests(record, record_name, only=(path.name,))


# the fields a reader of each artefact relies on: name → (check, what it must be)
_FIELDS = {
    COMPRESSION: {"layers": (objects, "a list of objects"),
                  "error": (numbers, "an object of numbers"),
                  "val_error": (lambda v: v is None or numbers(v), "an object of numbers"),
                  "rates": (numbers, "an object of numbers"),
                  "size_parts": (object_of_objects, "an object of objects"),
                  "packed_bytes": (is_int, "a whole number")},
    ANALYSIS: {"selection": (lambda v: isinstance(v, dict), "an object"),
               "histograms": (object_of_objects, "an object of objects"),
               "kl_bits": (numbers, "an object of numbers"),
               "figures": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
                           "a list of file names")},
    BENCH: {"variants": (objects, "a list of objects")},
    PREDICTIVE: {"predictive": (lambda v: isinstance(v, str), "a string"),
                 "samples": (lambda v: v is None or (is_int(v) and v >= 1),
                             "a whole number ≥ 1"),
                 "estimates": (calibration_records, "an object of calibration records")},
    METRICS: {k: (lambda v: v is None or is_number(v), "a number")
              for k in ("train_error", "val_error", "test_error", "elbo", "kl",
                        "expected_loglik", "cross_entropy", "seconds")},
}


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


def run_builder(run: RunDir, saved: dict | None = None):
    """The factory of a run of the user's own network (``None`` for a named architecture):
    the callable its ``config.json`` names, imported — the run's own record of what its
    owner trained, unlike a compressed file handed over on its own."""
    factory = (saved or run.saved_config()).get("arch", {}).get("factory")
    if factory is None:
        return None
    try:
        return import_factory(factory)
    except ValueError as e:
        raise ArtefactError(f"{run}: {e} (the run's network is built by {factory}: run from "
                            f"the directory that holds it, or install it)") from None


def load_trained(path) -> TrainedRun:
    """Rebuild a trained run from ``config.json`` and ``checkpoint.pt``."""
    run = RunDir(path)
    _require_run_dir(run.path)
    run.settle()
    if not run.has(CONFIG) or not run.has(CHECKPOINT):
        raise StageError(f"{run}: no trained run here (no {CONFIG} and {CHECKPOINT}); "
                         f"run `pbc train --out {run}` first")
    saved = run.saved_config()
    ckpt = run.checkpoint()
    builder = run_builder(run, saved)
    try:
        config = TrainConfig(**{**LEGACY_SETTINGS, **saved["config"]})
        arch = Architecture.from_dict(saved["arch"], builder)
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


def calibration_images(data: Splits, n: int = 5000) -> torch.Tensor:
    """The images static int8 activation scales are fixed on: the validation split (all of
    it), else the first ``n`` training images when the run holds none out."""
    return data.val_x if data.val_x.shape[0] else data.train_x[:n]


def load_point_estimate(path: str, arch: Architecture | None = None) -> dict[str, torch.Tensor]:
    """The plain state dict that ``--init-from`` names: of a ``prior="none"`` run (a run
    directory or its checkpoint), a ``state_dict`` saved with ``torch.save``, or a TorchScript
    file.  With ``arch``, a linear or conv layer of ``arch`` that the file holds without a
    bias gets a zero one (the networks pbc trains have a bias in every such layer)."""
    p = Path(path)
    file = p / CHECKPOINT if p.is_dir() else p
    if _is_torchscript(file):
        try:
            state = dict(torch.jit.load(str(file), map_location="cpu").state_dict())
        except (RuntimeError, ValueError) as e:
            raise ArtefactError(f"{path}: unreadable TorchScript file ({type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else ''})") from None
    else:
        obj = load_torch(file)
        if isinstance(obj, dict) and "prior" in obj and "model" in obj:
            ckpt = check_checkpoint(obj, file)
            if ckpt.get("prior") != "none":
                raise ArtefactError(f"{path}: --init-from needs a deterministic run (prior "
                                    f"'none'), this one has prior {ckpt.get('prior')!r}")
            state = ckpt["model"]
        elif isinstance(obj, dict) and obj and all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            state = dict(obj)
        else:
            raise ArtefactError(f"{path}: --init-from takes a plain run, a state_dict file "
                                f"(names → tensors) or a TorchScript file")
    for s in arch.weighted_layers() if arch is not None else ():
        if f"{s.name}.weight" in state and f"{s.name}.bias" not in state:
            state[f"{s.name}.bias"] = torch.zeros(s.out_size)
    return state


def _is_torchscript(file: Path) -> bool:
    """Whether ``file`` is a TorchScript archive (a zip holding compiled code)."""
    try:
        with zipfile.ZipFile(file) as z:
            return any(n.split("/", 1)[-1].startswith("code/") for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


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
    predictive: dict | None = None
    frontier: pd.DataFrame | None = None        # frontier.csv (pbc frontier)
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
    :class:`ArtefactError` for an artefact that cannot be read, is not a JSON object, or
    does not match the digests its stage recorded.
    """
    run = RunDir(path)
    _require_run_dir(run.path)
    run.settle()
    if not run.has(CONFIG):
        raise StageError(f"{run}: not a run directory (no {CONFIG}); "
                         f"give directories written by `pbc train`")
    saved = run.saved_config()
    cfg = saved["config"]
    if not isinstance(cfg.get("model"), str) or not isinstance(cfg.get("prior"), str):
        raise ArtefactError(f"{run / CONFIG}: no config.model / config.prior")
    for key in ("arch", "dataset", "environment"):
        if not isinstance(saved.get(key, {}), dict):
            raise ArtefactError(f"{run / CONFIG}: '{key}' is not an object")
    r = RunRecord(path=run.path, label=run.path.resolve().name, saved=saved)
    r.missing = [name for name in SUMMARY_ARTEFACTS if not run.has(name)]
    r.metrics = run.metrics()
    if run.has(ANALYSIS):
        r.analysis = run.analysis()
    if run.has(COMPRESSION):
        r.compression = run.compression()
    if run.has(BENCH):
        r.bench = check_fields(read_json(run / BENCH), run / BENCH, _FIELDS[BENCH])
    if run.has(PREDICTIVE):
        r.predictive = run.predictive()
    if run.has(LAYERS):
        r.layers = _read_csv(run / LAYERS)
    if run.has(FRONTIER):
        r.frontier = _read_csv(run / FRONTIER)
    r.figures = _analysis_figures(run.path, r.analysis)
    return r


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ArtefactError(f"{path}: not a readable CSV ({e})") from None


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
    less the bench stage's chart and hidden files (temporaries); each checked by
    :func:`check_figure`."""
    if analysis and isinstance(analysis.get("figures"), list):
        paths = [run / p for p in analysis["figures"] if isinstance(p, str)]
        paths = [p for p in paths if p.suffix.lower() == ".png" and p.is_file()]
    else:
        paths = sorted(p for p in (run / FIGURES).glob("*.png")
                       if p.name != BENCH_FIGURE and not p.name.startswith("."))
    return [check_figure(run, p) for p in paths]


def check_figure(run: Path, path: Path) -> Path:
    """``path`` if it lies inside the run directory ``run`` and is a PNG of sane size
    (:func:`pbc.schema.check_png`); ArtefactError otherwise."""
    if not path.resolve().is_relative_to(run.resolve()):
        raise ArtefactError(f"{run / ANALYSIS}: figure {path} lies outside the run directory")
    return check_png(path)
