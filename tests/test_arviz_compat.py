"""ArviZ 0.x (Python < 3.12) and 1.x (Python ≥ 3.12) behind pbc's adapter: ``posterior.nc``
written under either line opens under the other, and the summary table is the same.

``tests/data/posterior-arviz0.nc`` and ``posterior-arviz1.nc`` were written by
:func:`write_sample` under each line (``python tests/test_arviz_compat.py`` rewrites the running
line's). CI runs this module under both lines, so each reads the other's file, and each checks
that what it writes now has the layout of both stored files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import h5netcdf
import numpy as np
import pytest
import xarray as xr

from pbc.analysis.inference_data import (
    SUMMARY_COLUMNS,
    arviz_major,
    read_posterior,
    summary,
    to_inference_data,
    write_netcdf,
)

SAMPLES = Path(__file__).parent / "data"
LINES = (0, 1)
GROUPS = ("posterior", "posterior_moments")


def sample_path(line: int) -> Path:
    return SAMPLES / f"posterior-arviz{line}.nc"


def sample_posterior():
    """A GHS layer ``fc`` of three groups, as the analyse stage hands it to the adapter."""
    rng = np.random.default_rng(0)
    posterior = {"fc.z": rng.lognormal(size=(2, 50, 3)), "fc.s": rng.lognormal(size=(2, 50))}
    moments = {"fc.w_mean": (["fc_out", "fc_in"], rng.normal(size=(2, 3))),
               "fc.w_var": (["fc_out", "fc_in"], rng.uniform(0.01, 0.1, size=(2, 3))),
               "fc.score": (["fc_group"], np.array([-4.0, 3.5, -1.0])),
               "fc.kept": (["fc_group"], np.array([1, 0, 1], dtype=np.int8))}
    dims = {"fc.z": ["fc_group"]}
    attrs = {"prior": "ghs", "model": "lenet300", "data": "fashion-mnist", "score": "log_alpha"}
    return posterior, moments, dims, attrs


def write_sample(path: Path) -> None:
    write_netcdf(to_inference_data(*sample_posterior()), path)


def check_posterior(data) -> None:
    """What pbc and its users read from ``posterior.nc``: the ``posterior`` and
    ``posterior_moments`` groups by name, their variables, dims, values and pbc's attributes."""
    posterior, moments, _, attrs = sample_posterior()
    post = data.posterior
    for name, values in posterior.items():
        np.testing.assert_array_equal(post[name].values, values)
    assert post["fc.z"].dims == ("chain", "draw", "fc_group")
    assert post["fc.s"].dims == ("chain", "draw")
    assert {k: post.attrs[k] for k in attrs} == attrs
    extra = data.posterior_moments
    for name, (dims, values) in moments.items():
        assert extra[name].dims == tuple(dims)
        np.testing.assert_array_equal(extra[name].values, values)
    assert {k: extra.attrs[k] for k in attrs} == attrs


def layout(path: Path) -> dict:
    """The groups of a netCDF file, each as variable → (dims, dtype), read without ArviZ."""
    with h5netcdf.File(path, "r") as f:
        groups = sorted(f.groups)
    out = {}
    for group in groups:
        with xr.open_dataset(path, group=group, engine="h5netcdf") as ds:
            out[group] = {name: (v.dims, v.dtype.str) for name, v in ds.variables.items()}
    return out


def test_running_line_matches_the_python_version():
    assert arviz_major() == (1 if sys.version_info >= (3, 12) else 0)


def test_round_trip_under_the_running_line(tmp_path):
    write_sample(tmp_path / "posterior.nc")
    check_posterior(read_posterior(tmp_path / "posterior.nc"))


@pytest.mark.parametrize("line", LINES)
def test_reads_the_file_written_under_each_line(line):
    check_posterior(read_posterior(sample_path(line)))


@pytest.mark.parametrize("line", LINES)
def test_writes_the_layout_of_each_line(tmp_path, line):
    write_sample(tmp_path / "posterior.nc")
    written = layout(tmp_path / "posterior.nc")
    assert sorted(written) == list(GROUPS)
    assert written == layout(sample_path(line))


@pytest.mark.parametrize("line", LINES)
def test_summary_is_the_same_table_under_each_line(line):
    table = summary(read_posterior(sample_path(line)), var_names=["fc.z"])
    assert tuple(table.columns) == SUMMARY_COLUMNS
    assert list(table.index) == ["fc.z[0]", "fc.z[1]", "fc.z[2]"]
    assert all(dtype == np.float64 for dtype in table.dtypes)
    draws = sample_posterior()[0]["fc.z"].reshape(-1, 3)
    np.testing.assert_allclose(table["mean"], draws.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(table["sd"], draws.std(axis=0, ddof=1), rtol=1e-12)
    assert (table["hdi_3%"] >= draws.min(axis=0)).all()
    assert (table["hdi_97%"] <= draws.max(axis=0)).all()
    assert (table["hdi_3%"] < table["mean"]).all() and (table["mean"] < table["hdi_97%"]).all()
    assert (table["ess_bulk"] > 20).all() and (abs(table["r_hat"] - 1) < 0.1).all()


if __name__ == "__main__":
    SAMPLES.mkdir(exist_ok=True)
    write_sample(sample_path(arviz_major()))
    print(f"wrote {sample_path(arviz_major())}")
