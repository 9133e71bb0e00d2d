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
    posterior var → dims; ``coords``: dim → labels.
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
    idata = az.from_dict(posterior=posterior, dims=dims, coords=coords, attrs=attrs)
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


def summary(data, var_names=None) -> pd.DataFrame:
    """``az.summary`` of the posterior draws (mean, sd, intervals, ESS, R-hat)."""
    return arviz().summary(data, var_names=var_names)
