"""What each ``pbc`` command does once its arguments are parsed: one handler per command.

:mod:`pbc.cli` parses (without torch) and imports this module only when a command runs.  A
handler builds the stage's arguments, turns the library's argument errors into
:class:`UsageError`, calls the stage and prints its record; it returns the exit status.
No logic of the stages lives here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from pbc.analysis import ThresholdError, analyse, parse_thresholds
from pbc.analysis.frontier import FRONTIER, frontier
from pbc.analysis.predictive import evaluate_predictive
from pbc.bench import bench
from pbc.compress import compress
from pbc.compression.export import load_compressed
from pbc.config import SettingError, TrainConfig
from pbc.data import DataError, load_dataset
from pbc.demo import run_demo
from pbc.export import export
from pbc.finetune import finetune_config, kept_counts
from pbc.graph.rebuild import import_factory
from pbc.io import ArtefactError, StageError, first_line
from pbc.nets import classification_error, parse_layer_values
from pbc.reporting.pdf import build_report
from pbc.rundir import PACKED, PREDICTIVE, RunDir, load_trained, run_splits, verify_recorded
from pbc.sweep import SpecError, is_sweep_dir, load_spec, parse_value, read_summary, run_sweep
from pbc.train import TrainingDiverged, check_config, train


class UsageError(Exception):
    """A bad argument combination found after parsing: exit status 2."""


#: library errors that mean "wrong arguments or stage order": exit status 2
USAGE_ERRORS = (UsageError, StageError)
#: errors that mean a data or artefact problem or a diverged run: exit status 1, one line
FAILURES = (DataError, ArtefactError, TrainingDiverged)


def _layer_values(text: str | None, flag: str) -> dict[str, float] | None:
    """``--dc-keep fc1=0.12,fc2=0.1`` as ``{"fc1": 0.12, "fc2": 0.1}`` (None when absent)."""
    if text is None:
        return None
    try:
        return parse_layer_values(text, flag)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _weight_var_bound(text: str | None) -> float | dict[str, float] | None:
    """``--max-weight-var 0.04`` (every layer), ``fc1=0.04,…`` (those layers only) or ``none``
    (no layer: ``{}``); absent: ``None``, the method's default."""
    if text is not None and text.strip().lower() == "none":
        return {}
    if text is None or "=" in text:
        return _layer_values(text, "--max-weight-var")
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"bad --max-weight-var {text!r}; expected a number, "
                         f"LAYER=NUMBER,... or none") from None


def train_config(args, prior: str) -> TrainConfig:
    """The :class:`TrainConfig` that ``pbc train`` (or ``pretrain``: ``prior="none"``) flags
    describe; UsageError for a ``--dc-keep`` or ``--max-weight-var`` that does not parse."""
    return TrainConfig(
        out=args.out, model=args.model, prior=prior, data=args.data, data_dir=args.data_dir,
        download=args.download, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        lr_schedule=args.lr_schedule, scale_var_lr=args.scale_var_lr,
        seed=args.seed, device=args.device, subset=args.subset, val=args.val,
        init_from=args.init_from,
        resume=args.resume, tau0=args.tau0, kl_warmup=args.kl_warmup, sws_tau=args.sws_tau,
        sws_zero_rate=args.sws_zero_rate, sws_rate=args.sws_rate,
        dc_keep=_layer_values(args.dc_keep, "--dc-keep"),
        max_weight_var=_weight_var_bound(args.max_weight_var), threads=args.threads,
        progress=not args.no_progress)


def _train(args) -> int:
    config = train_config(args, "none" if args.command == "pretrain" else args.prior)
    try:
        check_config(config)
    except ValueError as e:
        raise UsageError(str(e)) from None
    try:
        result = train(config)
    except SettingError as e:           # a layer name the network does not have
        raise UsageError(str(e)) from None
    last = result.metrics[-1] if result.metrics else {}
    print(f"{result.out}: {len(result.metrics)} epochs, "
          f"test error {last.get('test_error', float('nan')):.4f}")
    return 0


def _finetune(args) -> int:
    config = finetune_config(args.run_dir, args.out, args.epochs, args.lr, args.lr_schedule,
                             device=args.device, threads=args.threads, resume=args.resume,
                             progress=not args.no_progress)
    result = train(config)
    kept = ", ".join(f"{name} {k}/{n}" for name, (k, n) in kept_counts(result.net).items())
    last = result.metrics[-1]
    print(f"{result.out}: {len(result.metrics)} epochs on the kept groups ({kept}), "
          f"validation error {last.get('val_error', float('nan')):.4f}, "
          f"test error {last['test_error']:.4f}; next: pbc analyse {result.out}")
    return 0


def _analyse(args) -> int:
    if args.draws % 4:
        raise UsageError(f"--draws must be a multiple of 4 (4 chains), got {args.draws}")
    try:
        result = analyse(args.run_dir, draws=args.draws,
                         thresholds=parse_thresholds(args.thresholds),
                         figures=not args.no_figures, rule=args.threshold_rule,
                         error_budget=args.error_budget, precision=args.precision)
    except ThresholdError as e:
        raise UsageError(str(e)) from None
    for r in result.values():
        row = r.row
        print(f"{row['layer']}: {row['groups_kept']}/{row['groups_total']} groups, "
              f"{row['weights_kept']}/{row['weights_total']} weights, "
              f"{row['bits']} bits (t={row['significand_bits']}, "
              f"e={row['exponent_bits']}), threshold {row['threshold']:.3g} "
              f"({row['threshold_method']})")
    sel = RunDir(args.run_dir).analysis()["selection"]
    if "val_error_unpruned" in sel:
        print(f"validation error: unpruned {sel['val_error_unpruned']:.4f}, pruned and "
              f"quantised {sel['val_error_pruned_quantised']:.4f} (budget "
              f"{sel['error_budget_points']} points, {sel['evaluations']} evaluations"
              + (f", pruning trials {sel['trial_finer_bits']} bit(s) finer than the posterior's"
                 if sel.get("trial_finer_bits") else "") + ")")
    return 0


def _compress(args) -> int:
    r = compress(args.run_dir)
    e, rates = r["error"], r["rates"]
    for row in r["layers"]:
        print(f"{row['name']}: {row['in_kept']}→{row['out_kept']} units, "
              f"{row['weights_kept']}/{row['weights_total']} weights, {row['bits']} bits")
    print(f"error: full {e['full']:.4f}, pruned {e['pruned']:.4f}, "
          f"quantised {e['quantised']:.4f}, packed {e['packed']:.4f}")
    print(f"rates: pruning {rates['pruning']:.1f}x, fast prediction "
          f"{rates['fast_prediction']:.1f}x, max compression {rates['max_compression']:.1f}x;"
          f" packed file {r['packed_bytes']} bytes")
    return 0


def _frontier(args) -> int:
    def show(row):
        print(f"budget {row['budget_points']:g}: validation {row['val_error_unpruned']:.4f} → "
              f"{row['val_error_pruned_quantised']:.4f}, test {row['test_error_full']:.4f} → "
              f"{row['test_error_packed']:.4f} packed; groups {row['groups_kept']}, bits "
              f"{row['bits']}; pruning {row['pruning']:.1f}x, fast prediction "
              f"{row['fast_prediction']:.1f}x, max compression "
              f"{row['max_compression']:.1f}x", flush=True)

    frontier(args.run_dir, args.budgets, args.precision, progress=show)
    print(f"wrote {Path(args.run_dir) / FRONTIER}")
    return 0


def _evaluate(args) -> int:
    if Path(args.model).is_dir():
        return _evaluate_run(args)
    if args.samples:
        raise UsageError("--samples draws from a run's posterior: pass the run directory")
    if not Path(args.model).is_file():
        raise UsageError(f"{args.model}: no such file or run directory")
    verify_recorded(args.model)
    builder = _factory(args.factory) if args.factory else None
    try:
        net = load_compressed(args.model, builder)
    except (RuntimeError, IndexError) as e:       # the header's state does not fit
        raise ArtefactError(f"{args.model}: inconsistent network ({first_line(e)})") \
            from None
    data = load_dataset(args.data, args.data_dir, train=False)
    try:
        error = classification_error(net, data.test_x, data.test_y)
    except (RuntimeError, IndexError) as e:
        raise ArtefactError(f"{args.model}: the network does not run on {data.name}'s "
                            f"{tuple(data.test_x.shape[1:])} images ({first_line(e)})") \
            from None
    print(f"{args.model}: test error {error:.4f} on {data.name} "
          f"({data.test_x.shape[0]} images)")
    return 0


def _factory(name: str):
    try:
        return import_factory(name)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _evaluate_run(args) -> int:
    """A run: its packed network's test error, or with ``--samples`` the predictive."""
    run = RunDir(args.model)
    if not args.samples:
        run.require(PACKED, "compress")
        trained = load_trained(run.path)
        net = load_compressed(run / PACKED, trained.arch.builder)
        _, data = run_splits(trained.config)
        error = classification_error(net, data.test_x, data.test_y)
        print(f"{run / PACKED}: test error {error:.4f} ({data.test_x.shape[0]} images)")
        return 0
    record = evaluate_predictive(run.path, args.samples, seed=args.seed)
    for name, est in record["estimates"].items():
        print(f"{name.replace('_', ' ')}: error {est['error']:.4f}, NLL {est['nll']:.4f} "
              f"nats, ECE {est['ece']:.4f}")
    print(f"{run / PREDICTIVE}: {record['predictive']} "
          f"({record['samples'] or 1} draw(s), {record['examples']} {record['split']} images)")
    return 0


def _export(args) -> int:
    r = export(args.run_dir, args.format, args.out)
    e = r["test_error"]
    if args.format == "int8":
        print(f"{r['path']}: {r['bytes']} bytes ({r['quantised_bytes']} float32); int8 layers "
              f"{', '.join(r['int8_layers'])}; float32 {', '.join(r['float_layers']) or '-'}")
        codes = r["uint8_activations"]
        print("uint8 activations after " + (", ".join(f"{k} (scale {v:.3g})"
                                                    for k, v in codes.items()) or "no layer"))
    else:
        beside = f" (architecture: {r['arch_path']})" if "arch_path" in r else ""
        print(f"{r['path']}: {r['bytes']} bytes, {args.format}{beside}; quantised.pt "
              f"{r['quantised_bytes']} bytes")
    print(f"test error: quantised (float32) {e['quantised']:.4f}, {args.format} "
          f"{e[args.format]:.4f}")
    return 0


def _bench(args) -> int:
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError("device 'cuda' requested but CUDA is not available")
    # before the first parallel operation: the intra-op threads inherit it when they start
    torch.set_flush_denormal(True)
    with RunDir(args.run_dir).writing("pbc bench"):
        r = bench(args.run_dir, batch=args.batch, device=args.device,
                  threads=args.threads, repeats=args.repeats, warmup=args.warmup)
    print(f"{r['device_name']} ({r['device']}, {r['threads']} threads), batch {r['batch']}:")
    for v in r["variants"]:
        energy = f", {v['energy_j']:.3f} J" if v["energy_j"] is not None else ""
        err = f", test error {v['test_error']:.4f}" if v.get("test_error") is not None else ""
        print(f"  {v['name']:>12}: {v['median_s'] * 1e3:8.2f} ms  speed-up "
              f"{v['speedup']:.2f}x (ideal {v['ideal_speedup']:.2f}x){energy}{err}")
    return 0


def _report(args) -> int:
    if is_sweep_dir(args.run_dirs[0]):   # mean ± sd over seeds, then any single runs
        r = build_report(args.run_dirs[1:], args.out, sweep=read_summary(args.run_dirs[0]))
    else:
        r = build_report(args.run_dirs, args.out)
    print(f"{r.pdf}: {len(r.pages)} pages from {len(r.runs)} runs; tables "
          f"{', '.join(str(p) for p in r.csv.values())}")
    return 0


def _key_value(text: str, flag: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"{flag} expects KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def _sweep(args) -> int:
    try:
        overrides = dict(_key_value(t, "--set") for t in args.set)
        plan = load_spec(args.spec, {k: parse_value(v) for k, v in overrides.items()})
        only = {}
        for text in args.only:
            key, values = _key_value(text, "--only")
            only[key] = [parse_value(v) for v in values.split(",")]
        if only:
            plan = plan.only(only)
    except SpecError as e:
        raise UsageError(str(e)) from None
    if args.list:
        for r in plan.runs:
            what = "plain net" if r.plain else \
                f"{r.train['prior']}, from {r.pretrain or 'scratch'}"
            rounds = f"{r.finetune_rounds} × " if r.finetune_rounds > 1 else ""
            tuned = f" + {rounds}{r.finetune} fine-tuning" if r.finetune else ""
            print(f"{r.id}: {r.train['model']} {what}, {r.train['epochs']} epochs{tuned}")
        print(f"{len(plan.runs)} runs in {len(plan.configurations())} configurations")
        return 0
    result = run_sweep(plan, args.out, engine=args.engine, address=args.address,
                       jobs=args.jobs, cpus_per_run=args.cpus_per_run,
                       gpus_per_run=args.gpus_per_run, retries=args.retries,
                       data_dir=args.data_dir, say=lambda line: print(line, flush=True))
    if result.failed:
        print(f"pbc: error: {len(result.failed)} runs failed: "
              f"{', '.join(sorted(result.failed))}", file=sys.stderr)
        return 1
    return 0


def _demo(args) -> int:
    run_demo(args.out, data_dir=args.data_dir, epochs=args.epochs,
             pretrain_epochs=args.pretrain_epochs, threads=args.threads)
    return 0


COMMANDS = {"train": _train, "pretrain": _train, "finetune": _finetune, "analyse": _analyse,
            "compress": _compress,
            "frontier": _frontier,
            "evaluate": _evaluate, "export": _export, "bench": _bench, "report": _report,
            "sweep": _sweep, "demo": _demo}


def run(args) -> int:
    """Run the parsed command; its exit status."""
    if args.command not in COMMANDS:
        raise UsageError(f"unknown command {args.command!r}")
    return COMMANDS[args.command](args)
