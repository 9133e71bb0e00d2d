"""Shared test set-up: Pyro state and seeds reset per test, validation on, tiny generated data,
and tiny trained runs built once per session (copied into a test that writes into one)."""

from __future__ import annotations

import contextlib
import shutil
import tracemalloc
import types
from pathlib import Path

import pyro
import pytest
import torch

from pbc.analysis.stage import analyse
from pbc.compress import compress
from pbc.config import TrainConfig
from pbc.data import write_synthetic_dataset
from pbc.nets import Architecture, LayerSpec
from pbc.train import train


def _reset_pyro():
    pyro.clear_param_store()
    pyro.settings.set(module_local_params=True)
    pyro.set_rng_seed(0)


@pytest.fixture(autouse=True)
def _fresh_pyro_state():
    """Each test starts with a clear param store, fixed seeds and Pyro's validation on."""
    _reset_pyro()
    with pyro.validation_enabled(True):
        yield


def make_idx_dataset(directory, n_train: int = 200, n_test: int = 100, seed: int = 0):
    """Write a tiny learnable IDX dataset (class k lights a k-dependent block) to ``directory``."""
    return write_synthetic_dataset(directory, "fashion-mnist", n_train, n_test, seed)


@pytest.fixture
def idx_dir(tmp_path):
    """A directory holding a tiny generated Fashion-MNIST-shaped IDX dataset."""
    return make_idx_dataset(tmp_path / "data")


@pytest.fixture
def cpu_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ----------------------------------------------------------------------------- trained runs
#: the settings of every shared tiny run (``pbc train`` flags: ``tiny_train_args``)
TINY = dict(data="fashion-mnist", epochs=1, batch_size=30, subset=60, progress=False,
            threads=1)


def tiny_config(out, data_dir, model="lenet300", prior="gnj", **kw):
    """The :class:`TrainConfig` of a shared tiny run (``kw`` overrides)."""
    return TrainConfig(out=str(out), model=model, prior=prior, data_dir=str(data_dir),
                       **{**TINY, **kw})


def tiny_train_args(data_dir, out, *extra, model="lenet300", prior="gnj"):
    """``pbc train`` arguments with the settings of :func:`tiny_config`."""
    return ["train", "--model", model, "--prior", prior, "--data", TINY["data"],
            "--data-dir", str(data_dir), "--subset", str(TINY["subset"]), "--batch-size",
            str(TINY["batch_size"]), "--epochs", str(TINY["epochs"]), "--threads", "1",
            "--no-progress", "--out", str(out), *extra]


def fresh_train(config):
    """``pbc.train.train(config)`` from a clear Pyro state with validation on, leaving the
    caller's state as a fresh test finds it (and torch's thread count as it was)."""
    threads = torch.get_num_threads()
    _reset_pyro()
    try:
        with pyro.validation_enabled(True):
            return train(config)
    finally:
        torch.set_num_threads(threads)
        _reset_pyro()


class TrainedRuns:
    """Tiny runs (:func:`tiny_config`) trained on first use and kept for the session.

    :meth:`path` is the shared run: read it, never write into it; :meth:`copy` gives a test
    its own copy to write into.  ``stage`` is how far the run has gone: ``"trained"``,
    ``"analysed"`` (``analyse(draws=8, figures=False)``) or ``"compressed"``.
    """

    STAGES = ("trained", "analysed", "compressed")

    def __init__(self, root: Path, data: Path):
        self.root, self.data = root, data
        self._done: dict[tuple, Path] = {}

    def path(self, model: str = "lenet300", prior: str = "gnj", stage: str = "trained",
             **kw) -> Path:
        key = (model, prior, stage, *sorted(kw.items()))
        if key in self._done:
            return self._done[key]
        out = self.root / "-".join(str(p) for p in (model, prior, stage,
                                                     *(f"{k}{v}" for k, v in sorted(kw.items()))))
        i = self.STAGES.index(stage)
        if i == 0:
            fresh_train(tiny_config(out, self.data, model, prior, **kw))
        else:
            shutil.copytree(self.path(model, prior, self.STAGES[i - 1], **kw), out)
            if stage == "analysed":
                analyse(out, draws=8, figures=False)
            else:
                compress(out)
            _reset_pyro()
        self._done[key] = out
        return out

    def copy(self, dst, model: str = "lenet300", prior: str = "gnj", stage: str = "trained",
             **kw) -> Path:
        """A copy of the shared run at ``dst`` (a fresh path), for a test that writes into it."""
        return Path(shutil.copytree(self.path(model, prior, stage, **kw), dst))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """The session's tiny generated Fashion-MNIST-shaped IDX dataset (never modify it)."""
    return make_idx_dataset(tmp_path_factory.mktemp("tiny") / "data")


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory, tiny_data) -> TrainedRuns:
    """The session's shared tiny runs, on ``tiny_data`` (see :class:`TrainedRuns`)."""
    return TrainedRuns(tmp_path_factory.mktemp("trained"), tiny_data)


@contextlib.contextmanager
def peak_memory():
    """Trace Python's allocations inside the block; the yielded record's ``bytes`` holds
    their peak once the block has run."""
    record = types.SimpleNamespace(bytes=None)
    tracemalloc.start()
    try:
        yield record
        record.bytes = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ----------------------------------------------------------------------------- command line
def one_line_error(err: str, *needles: str) -> str:
    """``err`` is exactly one ``pbc: error: ...`` line holding every needle; returns it."""
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    line = lines[0]
    assert line.startswith("pbc: error:"), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def tiny_arch():
    """conv 1→2 (k=2) on 3×3 → flatten 8 → fc 8→5 → ReLU → fc 5→3: a network with every
    kind of Bayesian layer, small enough for exact checks."""
    return Architecture("tiny", (1, 3, 3), (
        LayerSpec("conv", "conv1", 1, 2, 2),
        LayerSpec("flatten", "flatten"),
        LayerSpec("linear", "fc1", 8, 5), LayerSpec("relu", "relu1"),
        LayerSpec("linear", "fc2", 5, 3),
    ))
