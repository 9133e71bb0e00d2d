"""Shared test set-up: Pyro state and seeds reset per test, validation on, tiny generated data."""

from __future__ import annotations

import pyro
import pytest
import torch

from pbc.data import write_synthetic_dataset


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
