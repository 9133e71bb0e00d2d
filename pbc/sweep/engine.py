"""Running a sweep: the runs of a plan on Ray (locally or on a cluster) or one after another
in this process, then the summary.

:func:`run_sweep` holds the sweep directory's lock (:func:`pbc.lock.locked`: a second sweep
writing there is refused), records the plan in ``sweep.json`` (a rerun may add runs, and
refuses one whose settings changed under an existing directory), skips the runs whose
artefacts are complete, and hands the others to an engine as soon as the plain net they start
from is trained.  On Ray each run is a task asking for ``cpus_per_run`` CPUs and
``gpus_per_run`` GPUs (fractions allowed); a task whose worker or node dies is retried up to
``retries`` times and continues from its checkpoint (:func:`pbc.sweep.pipeline.run_one`).  A
run that fails (a diverged loss, a data error) is reported and the others go on.  Each
finished run prints one line — configuration, errors, rates, seconds — with the count of runs
done, running and left; the summary files (:mod:`pbc.sweep.summary`) are written at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pbc.io import ArtefactError, write_json
from pbc.lock import locked
from pbc.sweep.pipeline import attempts, is_finished, logged_seconds, outcome, run_one
from pbc.sweep.spec import PlannedRun, SweepPlan
from pbc.sweep.summary import SWEEP_FILE, planned_runs, summarise, sweep_record

ENGINES = ("auto", "ray", "local")


class SweepError(ArtefactError):
    """A sweep that cannot start or go on (one line)."""


@dataclass
class SweepResult:
    """What :func:`run_sweep` did: runs finished now, finished before, failed (id → reason),
    the engine used (``None``: nothing to run) and the summary table."""

    root: Path
    engine: str | None
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    summary: pd.DataFrame | None = None


def run_sweep(plan: SweepPlan, out, *, engine: str = "auto", address: str | None = None,
              jobs: int | None = None, cpus_per_run: float = 1.0, gpus_per_run: float = 0.0,
              retries: int = 3, data_dir: str | None = None, say=print) -> SweepResult:
    """Run (or continue) every run of ``plan`` under ``out``; write the summary."""
    if engine not in ENGINES:
        raise SweepError(f"unknown engine {engine!r}; choose from {list(ENGINES)}")
    if not cpus_per_run > 0 or gpus_per_run < 0:
        raise SweepError("a run needs more than 0 CPUs and at least 0 GPUs")
    root = Path(out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    with locked(root, f"pbc sweep {plan.name}"):
        every = _record(root, plan)
        result = SweepResult(root, None)
        todo = []
        total = len(plan.runs)
        say(f"sweep {plan.name}: {total} runs in {len(plan.configurations())} configurations "
            f"→ {root}")
        for run in plan.runs:
            if is_finished(root, run):
                result.skipped.append(run.id)
                before = outcome(root / run.result_path)
                seconds = logged_seconds(root, run.id)
                if seconds is not None:
                    before["seconds"] = seconds
                say(_line(run, before, None, "finished before", _counts(result, 0, total)))
            else:
                todo.append(run)
        if todo:
            backend = _backend(engine, address, jobs, cpus_per_run, gpus_per_run, retries)
            result.engine = backend.name
            say(backend.describe())
            try:
                _schedule(todo, backend, root, result, total, say, data_dir=data_dir,
                          device="cuda" if gpus_per_run > 0 else "cpu",
                          threads=max(1, int(cpus_per_run)))
            finally:
                backend.close()
        result.summary = summarise(root, every, plan.select,
                                   finished=lambda r: is_finished(root, r))
        say(f"summary: {root / 'summary.csv'} ({len(result.summary)} configurations; "
            f"{len(result.done) + len(result.skipped)} of {total} runs finished"
            + (f", {len(result.failed)} failed" if result.failed else "") + ")")
        for row in result.summary.itertuples():
            say(_summary_line(row, plan.select is not None))
    return result


def _summary_line(row, chosen: bool) -> str:
    """A configuration's means ± sd over its seeds, as the end of a sweep prints them."""
    def pm(key: str, fmt) -> str:
        mean, sd = getattr(row, f"{key}_mean"), getattr(row, f"{key}_sd")
        if mean is None or pd.isna(mean):
            return "—"
        return fmt(mean) + ("" if sd is None or pd.isna(sd) else f" ± {fmt(sd)}")

    pct, rate = (lambda v: f"{100 * v:.2f}%"), (lambda v: f"{v:.1f}×")
    head = f"  {row.configuration} ({row.n_seeds} of {row.n_planned} seeds)"
    if not row.n_seeds:
        return f"{head}: no finished run"
    if pd.isna(row.error_packed_mean):
        text = f"test error {pm('test_error_last_epoch', pct)}"
    else:
        text = (f"test error {pm('error_full', pct)} → {pm('error_packed', pct)} packed, "
                f"pruning {pm('pruning', rate)}, fast pred. {pm('fast_prediction', rate)}, "
                f"max compr. {pm('max_compression', rate)}")
    return f"{head}: {text}" + (" (selected)" if chosen and row.selected else "")


def _record(root: Path, plan: SweepPlan) -> list[PlannedRun]:
    """Merge the plan into ``sweep.json``; return every run recorded there."""
    old = planned_runs(root) if (root / SWEEP_FILE).is_file() else []
    new = plan.by_id()
    for r in old:
        n = new.get(r.id)
        if n is not None and n.settings() != r.settings() and (root / r.path).exists():
            raise SweepError(f"{root}: run {r.id} exists with other settings "
                             f"({_difference(r.settings(), n.settings())}); use another "
                             f"--out, or remove {root / r.path}")
    seen = {r.id for r in old}
    every = [new.get(r.id, r) for r in old] + [r for r in plan.runs if r.id not in seen]
    write_json(root / SWEEP_FILE, sweep_record(every, plan.name, plan.select))
    return every


def _difference(a: dict, b: dict, prefix: str = "") -> str:
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            if x != y:
                return _difference(x, y, f"{prefix}{key}.")
        elif x != y:
            return f"{prefix}{key} was {x!r}, now {y!r}"
    return "same"


def _schedule(todo: list[PlannedRun], backend, root: Path, result: SweepResult, total: int,
              say, **kw) -> None:
    """Submit each run once its plain net is finished, at most ``backend.jobs`` at a time."""
    finished = set(result.skipped)
    pending = list(todo)
    inflight: dict = {}
    try:
        while pending or inflight:
            for run in [r for r in pending if r.pretrain in result.failed]:
                pending.remove(run)
                result.failed[run.id] = f"its plain net {run.pretrain} failed"
                say(_line(run, None, result.failed[run.id], None,
                          _counts(result, len(inflight), total)))
            ready = [r for r in pending if r.pretrain is None or r.pretrain in finished]
            for run in ready[:max(0, backend.jobs - len(inflight))]:
                pending.remove(run)
                inflight[backend.submit(run, root, **kw)] = run
            if not inflight:
                break
            handle, value, error = backend.wait(list(inflight))
            run = inflight.pop(handle)
            if error is None:
                finished.add(run.id)
                result.done.append(run.id)
                note = _attempt_note(root, run, value)
            else:
                result.failed[run.id] = error
                note = None
            say(_line(run, value, error, note, _counts(result, len(inflight), total)))
    except BaseException:
        backend.cancel(list(inflight))
        raise


def _attempt_note(root: Path, run: PlannedRun, value: dict) -> str | None:
    n = len(attempts(root, run.id))
    if n <= 1 and not value.get("epochs_at_start"):
        return None
    words = [f"attempt {n}"] if n > 1 else []
    if value.get("epochs_at_start"):
        words.append(f"resumed at epoch {value['epochs_at_start']}")
    return ", ".join(words)


def _counts(result: SweepResult, running: int, total: int) -> str:
    done = len(result.done) + len(result.skipped)
    left = total - done - len(result.failed) - running
    failed = f" · {len(result.failed)} failed" if result.failed else ""
    return f"[{done}/{total} done · {running} running · {left} left{failed}]"


def _pct(x) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}%"


def _line(run: PlannedRun, value: dict | None, error: str | None, note: str | None,
          counts: str) -> str:
    """One finished (or failed) run, as the progress shows it."""
    head = f"{counts} {run.configuration} seed {run.seed}"
    if error is not None:
        return f"{head}: FAILED: {error}"
    if value.get("rates"):
        r = value["rates"]
        text = (f"test error {_pct(value['error_full'])} → {_pct(value['error'])} packed "
                f"(val. {_pct(value['val_error'])}), pruning {r['pruning']:.1f}×, fast pred. "
                f"{r['fast_prediction']:.1f}×, max compr. {r['max_compression']:.1f}×")
    else:
        text = f"test error {_pct(value['error'])} (val. {_pct(value['val_error'])})"
    if "seconds" in value:
        text += f", {value['seconds']:.0f} s"
    if note:
        text += f" ({note})"
    return f"{head}: {text}"


# ------------------------------------------------------------------------------------ engines
def _backend(engine, address, jobs, cpus_per_run, gpus_per_run, retries):
    if engine == "local":
        if address:
            raise SweepError("--address needs --engine ray (the local engine runs in this "
                             "process)")
        return LocalEngine("--engine local")
    try:
        import ray  # noqa: F401
    except ImportError:
        if engine == "ray" or address:
            raise SweepError("Ray is not installed: pip install 'pbc[sweep]' (or run the "
                             "grid in this process with --engine local)") from None
        return LocalEngine("Ray is not installed")
    return RayEngine(address, jobs, cpus_per_run, gpus_per_run, retries)


class LocalEngine:
    """The runs one after another in this process."""

    name = "local"
    jobs = 1

    def __init__(self, why: str):
        self.why = why
        self._queue: list = []

    def describe(self) -> str:
        return (f"engine: local ({self.why}): the runs one after another in this process; "
                f"`pip install 'pbc[sweep]'` runs them in parallel on Ray")

    def submit(self, run: PlannedRun, root: Path, **kw):
        handle = len(self._queue)
        self._queue.append((run, root, kw))
        return handle

    def wait(self, handles):
        handle = handles[0]
        run, root, kw = self._queue[handle]
        try:
            return handle, run_one(run.to_dict(), str(root), **kw), None
        except Exception as e:   # the run failed; the sweep goes on
            return handle, None, _one_line(e)

    def cancel(self, handles) -> None:
        pass

    def close(self) -> None:
        pass


class RayEngine:
    """Each run a Ray task; a local Ray instance unless ``address`` names a cluster."""

    name = "ray"

    def __init__(self, address, jobs, cpus_per_run, gpus_per_run, retries):
        import ray

        self.ray = ray
        self.started = False
        if not ray.is_initialized():
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                # "local": a new instance even where `ray start` runs a cluster here
                ray.init(address="local",
                         num_cpus=math.ceil(jobs * cpus_per_run) if jobs else None,
                         include_dashboard=False, log_to_driver=False)
            self.started = True
        res = ray.cluster_resources()
        self.cpus, self.gpus = res.get("CPU", 0.0), res.get("GPU", 0.0)
        if cpus_per_run > self.cpus or gpus_per_run > self.gpus:
            self.close()
            raise SweepError(f"a run asks for {cpus_per_run:g} CPUs and {gpus_per_run:g} GPUs; "
                             f"the Ray cluster has {self.cpus:g} CPUs and {self.gpus:g} GPUs")
        fits = math.floor(self.cpus / cpus_per_run + 1e-9)
        if gpus_per_run:
            fits = min(fits, math.floor(self.gpus / gpus_per_run + 1e-9))
        self.jobs = jobs or max(1, fits)
        self.address = address
        self.per_run = (cpus_per_run, gpus_per_run)
        self.task = ray.remote(run_one)
        self.options = {"num_cpus": cpus_per_run, "num_gpus": gpus_per_run,
                        "max_retries": retries, "retry_exceptions": False}

    def describe(self) -> str:
        where = f"cluster at {self.address}" if self.address else "this machine"
        cpus, gpus = self.per_run
        return (f"engine: Ray {self.ray.__version__} on {where} ({self.cpus:g} CPUs, "
                f"{self.gpus:g} GPUs); up to {self.jobs} runs at once, each asking for "
                f"{cpus:g} CPU{'s' if cpus != 1 else ''}"
                + (f" and {gpus:g} GPU" if gpus else "") + f" ({max(1, int(cpus))} torch "
                f"thread{'s' if int(cpus) > 1 else ''}, device {'cuda' if gpus else 'cpu'})")

    def submit(self, run: PlannedRun, root: Path, **kw):
        return self.task.options(name=f"pbc-sweep {run.id}", **self.options).remote(
            run.to_dict(), str(root), **kw)

    def wait(self, handles):
        ready, _ = self.ray.wait(handles, num_returns=1)
        ref = ready[0]
        try:
            return ref, self.ray.get(ref), None
        except self.ray.exceptions.RayTaskError as e:    # the run's own exception
            cause = getattr(e, "cause", None)
            return ref, None, _one_line(cause) if cause is not None else _one_line(e)
        except self.ray.exceptions.RayError as e:         # worker or node lost, retries spent
            return ref, None, f"{type(e).__name__} (after the retries): {_one_line(e)}"

    def cancel(self, handles) -> None:
        for ref in handles:
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - best effort while stopping
                pass

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()
            self.started = False


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")
