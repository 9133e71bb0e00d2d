"""Sweeps: a grid of runs (models × methods × seeds × settings) from a TOML spec, run on Ray
locally or on a cluster, summarised as mean ± sd over seeds.

The pieces, in the order they act:

* :mod:`pbc.sweep.spec` — the spec → the planned runs (pure, no Ray);
* :mod:`pbc.sweep.pipeline` — one run's stages (train or resume → analyse → compress →
  bench), the body of a Ray task;
* :mod:`pbc.sweep.engine` — the driver: lock, skip finished runs, schedule on Ray or in this
  process, one progress line per run;
* :mod:`pbc.sweep.summary` — ``runs.csv``, ``summary.csv`` and the per-layer and bench
  summaries that ``pbc report SWEEP_DIR`` reads.

Ray is an optional extra (``pip install 'pbc[sweep]'``), imported only when the Ray engine
starts.
"""

from pbc.sweep.engine import SweepError, SweepResult, run_sweep
from pbc.sweep.spec import PlannedRun, SpecError, SweepPlan, expand, load_spec, parse_value
from pbc.sweep.summary import SweepSummary, is_sweep_dir, read_summary

__all__ = ["PlannedRun", "SpecError", "SweepError", "SweepPlan", "SweepResult",
           "SweepSummary", "expand", "is_sweep_dir", "load_spec", "parse_value",
           "read_summary", "run_sweep"]
