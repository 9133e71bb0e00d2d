"""The ArviZ adapter: posterior draws and moments → InferenceData (ArviZ 0.x) or DataTree
(ArviZ 1.x), netCDF in and out, summaries.  Needs neither torch nor Pyro.

ArviZ is imported where it is first used, not at module import: it is slow to import and
announces its 1.x refactor with a warning that this module silences.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from pbc.io import atomic_path


def arviz():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # 0.x announces the 1.x refactor
        import arviz as az
    return az


def arviz_major() -> int:
    return int(arviz().__version__.split(".")[0])


def to_inference_data(posterior: dict[str, np.ndarray], moments: dict[str, tuple], dims: dict,
                      attrs: dict, coords: dict | None = None):
    """Build InferenceData (ArviZ 0.x) or a DataTree (ArviZ 1.x) with ``from_dict``.

    ``posterior``: name → array ``(chains, draws, *shape)``; ``moments``: name →
    ``(dims, array)`` for the ``posterior_moments`` group (left out when empty); ``dims``:
    posterior var → dims; ``coords``: dim → labels.  Under both lines the groups are
    ``posterior`` and ``posterior_moments`` and ``attrs`` are set on each of them (0.x's
    ``from_dict(attrs=...)`` would put them on the file's root instead).
    """
    import xarray as xr

    az = arviz()
    moments_ds = xr.Dataset({k: (d, v) for k, (d, v) in moments.items()}, attrs=attrs)
    if arviz_major() >= 1:
        tree = az.from_dict({"posterior": posterior}, dims=dims, coords=coords)
        if moments:
            tree["posterior_moments"] = xr.DataTree(moments_ds)
        tree["posterior"].attrs.update(attrs)
        return tree
    idata = az.from_dict(posterior=posterior, dims=dims, coords=coords)
    idata.posterior.attrs.update(attrs)
    if moments:
        idata.add_groups({"posterior_moments": moments_ds})
    return idata


def write_netcdf(data, path: Path) -> None:
    """Write InferenceData / DataTree to netCDF through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        data.to_netcdf(str(tmp))


def write_moments_netcdf(moments: dict[str, tuple], attrs: dict, path: Path) -> None:
    """A per-weight posterior (Sparse VD) has no draws: write its moments as a dataset."""
    import xarray as xr

    ds = xr.Dataset({k: (d, v) for k, (d, v) in moments.items()}, attrs=attrs)
    with atomic_path(path) as tmp:
        ds.to_netcdf(str(tmp), group="posterior_moments")


def read_posterior(path):
    """Open ``posterior.nc`` with plain ArviZ."""
    return arviz().from_netcdf(str(path))


#: probability of the highest-density interval in :func:`summary`
HDI_PROB = 0.94
#: the columns of :func:`summary`, in order, under either ArviZ line
SUMMARY_COLUMNS = ("mean", "sd", "hdi_3%", "hdi_97%", "mcse_mean", "mcse_sd", "ess_bulk",
                   "ess_tail", "r_hat")


def summary(data, var_names=None) -> pd.DataFrame:
    """``az.summary`` of the posterior draws, one row per scalar (``fc2.z[0]``, …), as the same
    table under ArviZ 0.x and 1.x: unrounded floats in :data:`SUMMARY_COLUMNS` — mean, sd, the
    bounds of the 94% highest-density interval (0.x's names), Monte Carlo standard errors,
    bulk and tail ESS, R-hat.

    By default ArviZ 1.x gives an 89% equal-tailed interval (``eti89_lb``/``eti89_ub``) and
    rounds the numbers into text; here it is asked for the 94% HDI, unrounded, and the
    interval's columns are renamed.
    """
    az = arviz()
    lower, upper = SUMMARY_COLUMNS[2:4]
    if arviz_major() >= 1:
        table = az.summary(data, var_names=var_names, ci_kind="hdi", ci_prob=HDI_PROB,
                           round_to="none")
        table = table.rename(columns=lambda c: lower if c.endswith("_lb")
                             else upper if c.endswith("_ub") else c)
    else:
        table = az.summary(data, var_names=var_names, hdi_prob=HDI_PROB, round_to="none")
    return pd.DataFrame(table[list(SUMMARY_COLUMNS)], dtype=float)
