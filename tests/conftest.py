"""Shared test set-up: Pyro state and seeds reset per test, validation on, tiny generated data."""

from __future__ import annotations

import numpy as np
import pyro
import pytest
import torch

from pbc.data import write_idx


@pytest.fixture(autouse=True)
def _fresh_pyro_state():
    """Each test starts with a clear param store, fixed seeds and Pyro's validation on."""
    pyro.clear_param_store()
    pyro.settings.set(module_local_params=True)
    pyro.set_rng_seed(0)
    with pyro.validation_enabled(True):
        yield


def make_idx_dataset(directory, n_train: int = 200, n_test: int = 100, seed: int = 0):
    """Write a tiny learnable IDX dataset (class k lights a k-dependent block) to ``directory``."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        images = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
        for i, k in enumerate(labels):
            r, c = divmod(int(k), 5)
            images[i, 4 + 10 * r: 12 + 10 * r, 2 + 5 * c: 6 + 5 * c] = 250
        write_idx(directory / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(directory / f"{split}-labels-idx1-ubyte.gz", labels)
    return directory


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
