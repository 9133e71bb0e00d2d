"""``pbc`` command line: parse, build a config, call the library.  No logic lives here.

Exit status: 0 success; 1 a data or artefact problem, a directory another command is
writing in, a full or read-only disk, or a diverged run (one line on stderr); 2 bad arguments
(one line); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

from pbc import methods
from pbc.analysis import ThresholdError, analyse, parse_thresholds
from pbc.analysis.stage import DEFAULT_ERROR_BUDGET, RULES
from pbc.bayes.mixture import GAMMA_OTHER, GAMMA_ZERO
from pbc.bench import bench
from pbc.compress import compress
from pbc.compression.export import load_compressed
from pbc.config import SWS_DEFAULT_TAU, TrainConfig
from pbc.data import DATASETS, DataError, load_dataset
from pbc.demo import run_demo
from pbc.export import FORMATS as EXPORT_FORMATS
from pbc.export import export
from pbc.io import ArtefactError, StageError, describe_os_error
from pbc.methods.sws import RATE_HELP, ZERO_RATE_HELP
from pbc.nets import ARCHITECTURES, classification_error, parse_layer_values
from pbc.reporting.pdf import build_report
from pbc.rundir import RunDir, verify_recorded
from pbc.sweep import SpecError, is_sweep_dir, load_spec, parse_value, read_summary, run_sweep
from pbc.train import TrainingDiverged, check_config, train


class UsageError(Exception):
    """A bad argument combination found after parsing: exit status 2."""


# library errors that mean "wrong arguments or stage order": exit status 2
USAGE_ERRORS = (UsageError, StageError)


# the largest count any flag accepts unless it says otherwise: far beyond any real run,
# small enough that no size computed from it overflows
MAX_COUNT = 10_000_000


def _int_at_least(minimum: int, maximum: int = MAX_COUNT):
    """An argparse type: a whole number in ``[minimum, maximum]``, else a one-line reason."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {v}")
        if v > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {v}")
        return v

    return parse


_positive_int = _int_at_least(1)
_nonnegative_int = _int_at_least(0)
_seed = _int_at_least(0, 2**32 - 1)
_threads = _int_at_least(1, 1024)


def _device(text: str) -> str:
    """An argparse type: ``cpu``, ``cuda`` or ``cuda:N``."""
    if not re.fullmatch(r"cpu|cuda(:\d{1,3})?", text):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    return text


def _out_path(text: str) -> str:
    """An argparse type: a non-empty path whose existing part is made of directories."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a directory, got an empty path")
    path = Path(text)
    for p in (path, *path.parents):
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                raise argparse.ArgumentTypeError(
                    f"{p} is {'a file' if p.is_file() else 'not a directory'}"
                    f"{'' if p == path else f', so {text!r} cannot be a directory'}")
            break
    return text


def _pdf_path(text: str) -> str:
    """An argparse type: a ``.pdf`` file name that is not a directory."""
    if Path(text).suffix.lower() != ".pdf" or not Path(text).stem:
        raise argparse.ArgumentTypeError(f"must name a .pdf file, got {text!r}")
    if Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory, not a .pdf file")
    _out_path(str(Path(text).parent))
    return text


def _finite_float(accept, condition: str):
    """An argparse type: a finite number for which ``accept(v)`` holds, else a one-line reason
    naming ``condition``."""

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (accept(v) and v < float("inf")):
            raise argparse.ArgumentTypeError(f"must be {condition}, got {text}")
        return v

    return parse


_positive_float = _finite_float(lambda v: v > 0, "a positive number")
_nonnegative_float = _finite_float(lambda v: v >= 0, "a number ≥ 0")


def _layer_values(text: str) -> dict[str, float]:
    try:
        return parse_layer_values(text, "--dc-keep")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_train_args(p: argparse.ArgumentParser, with_prior: bool) -> None:
    p.add_argument("--model", choices=sorted(ARCHITECTURES), default="lenet300")
    if with_prior:
        p.add_argument("--prior", choices=methods.names(), default="gnj",
                       help="gnj, ghs: Bayesian compression; svd: Sparse VD; sws: soft "
                            "weight-sharing; dc: Deep Compression (sws and dc need "
                            "--init-from); none: a plain deterministic net")
    p.add_argument("--data", choices=DATASETS, default="fashion-mnist")
    p.add_argument("--data-dir", help="directory holding the dataset files")
    p.add_argument("--download", action="store_true", help="download missing data (online)")
    p.add_argument("--epochs", type=_int_at_least(1, 100_000), default=30)
    p.add_argument("--batch-size", type=_int_at_least(1, 1_000_000), default=100)
    p.add_argument("--lr", type=_positive_float, default=1e-3)
    p.add_argument("--lr-schedule", choices=("cosine", "constant"), default="cosine",
                   help="cosine: decay the learning rate to 0 over the run")
    p.add_argument("--scale-var-lr", type=_positive_float, default=10.0,
                   help="gnj, ghs: learning-rate multiplier for the log-variances of the group "
                        "scales, which set the dropout rates log α")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--device", type=_device, default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--subset", type=_positive_int, help="train on the first N examples only")
    p.add_argument("--val", type=_nonnegative_int,
                   help="examples held out of the training set for validation, drawn from "
                        "--seed (default 5000 of a 60,000-image set, else 10%%; 0: none); "
                        "thresholds and settings are chosen on them")
    p.add_argument("--init-from", help="start the means from a deterministic run (dir or .pt)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--tau0", type=_positive_float, default=1e-5, help="horseshoe global scale")
    p.add_argument("--max-weight-var", type=_positive_float,
                   help="upper bound on the posterior variance of w̃ (Louizos et al.'s "
                        "clip_var); default 0.04 for gnj and for ghs from scratch, none for "
                        "ghs with --init-from")
    p.add_argument("--kl-warmup", type=_int_at_least(0, 100_000), default=0,
                   help="epochs of linear KL annealing (0: none)")
    p.add_argument("--sws-tau", type=_positive_float, default=SWS_DEFAULT_TAU,
                   help="sws: weight of the mixture prior against the log-likelihood")
    p.add_argument("--sws-zero-rate", type=_positive_float, default=GAMMA_ZERO[1],
                   help="sws: " + ZERO_RATE_HELP)
    p.add_argument("--sws-rate", type=_positive_float, default=GAMMA_OTHER[1],
                   help="sws: " + RATE_HELP)
    p.add_argument("--dc-keep", type=_layer_values,
                   help="dc: per-layer keep fractions, e.g. fc1=0.12,fc2=0.1 "
                        "(default: Han et al.'s)")
    p.add_argument("--threads", type=_threads, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--out", type=_out_path, required=True, help="run directory")


def _command(sub, name: str, help: str) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` starts with its one-line description and shows every
    option's default."""
    return sub.add_parser(name, help=help, description=help,
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pbc", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train_args(_command(sub, "train", help="train a Bayesian (or plain) network"), True)
    _add_train_args(_command(sub, "pretrain", help="train a plain network (= --prior none)"),
                    False)
    an = _command(sub, "analyse", help="posterior analysis of a trained run (ArviZ)")
    an.add_argument("run_dir")
    an.add_argument("--draws", type=_int_at_least(1, 100_000), default=1000,
                    help="posterior draws of z: a multiple of 4 (split into 4 chains)")
    an.add_argument("--thresholds", help="per-layer thresholds, e.g. fc1=3,fc2=2.5 (the rule "
                                         "chooses the other layers)")
    an.add_argument("--threshold-rule", choices=RULES, default="budget",
                    help="budget: the most compression within --error-budget of the unpruned "
                         "net's validation error; gap: the gap between two modes of the scores")
    an.add_argument("--error-budget", type=_nonnegative_float, default=DEFAULT_ERROR_BUDGET,
                    help="points of validation error the pruned and quantised net may lose "
                         "(default %(default)s)")
    an.add_argument("--no-figures", action="store_true")
    co = _command(sub, "compress", help="prune, quantise and pack an analysed run")
    co.add_argument("run_dir")
    ev = _command(sub, "evaluate", help="test error of a compressed network (.pbcz or .pt)")
    ev.add_argument("model", help="model.pbcz, pruned.pt or quantised.pt")
    ev.add_argument("--data", choices=DATASETS, default="fashion-mnist")
    ev.add_argument("--data-dir")
    ex = _command(sub, "export", help="write a compressed run in a deployment format")
    ex.add_argument("run_dir")
    ex.add_argument("--format", choices=EXPORT_FORMATS, default="int8",
                    help="int8: the layers whose weights fit in 8 bits on int8 kernels "
                         "(RUN/model.int8.pt)")
    ex.add_argument("--out", help="the file to write (default RUN/model.int8.pt)")
    be = _command(sub, "bench", help="time dense vs compressed forward passes")
    be.add_argument("run_dir")
    be.add_argument("--batch", type=_int_at_least(1, 65_536), default=8192)
    be.add_argument("--device", type=_device, default="cpu", help="cpu or cuda[:N]")
    be.add_argument("--threads", type=_threads, help="torch CPU threads (recorded)")
    be.add_argument("--repeats", type=_int_at_least(1, 10_000), default=20)
    be.add_argument("--warmup", type=_int_at_least(0, 10_000), default=3)
    rp = _command(sub, "report", help="comparison PDF (and CSV tables) from run directories")
    rp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                    help="run directories; a sweep directory (`pbc sweep --out`) first "
                         "gives its configurations with mean ± sd over seeds")
    rp.add_argument("--out", type=_pdf_path, required=True,
                    help="the PDF; NAME.table1/table2/mdl.csv beside it")
    _add_sweep_args(_command(sub, "sweep", help="a grid of runs from a TOML spec, on Ray "
                                                 "(locally or on a cluster) or in this process"))
    demo = _command(sub, "demo", help="the main job end to end on the default data")
    demo.add_argument("--out", type=_out_path, default="runs/demo")
    demo.add_argument("--data-dir")
    demo.add_argument("--epochs", type=_int_at_least(1, 100_000), default=5)
    demo.add_argument("--pretrain-epochs", type=_int_at_least(1, 100_000), default=2)
    demo.add_argument("--threads", type=_threads)
    return parser


def _train_config(args, prior: str):
    return TrainConfig(
        out=args.out, model=args.model, prior=prior, data=args.data, data_dir=args.data_dir,
        download=args.download, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        lr_schedule=args.lr_schedule, scale_var_lr=args.scale_var_lr,
        seed=args.seed, device=args.device, subset=args.subset, val=args.val,
        init_from=args.init_from,
        resume=args.resume, tau0=args.tau0, kl_warmup=args.kl_warmup, sws_tau=args.sws_tau,
        sws_zero_rate=args.sws_zero_rate, sws_rate=args.sws_rate, dc_keep=args.dc_keep,
        max_weight_var=args.max_weight_var, threads=args.threads,
        progress=not args.no_progress)


def _add_sweep_args(sw: argparse.ArgumentParser) -> None:
    sw.add_argument("spec", help="the sweep spec (TOML), e.g. studies/fashion-mnist.toml")
    sw.add_argument("--out", type=_out_path, required=True,
                    help="the sweep's directory: runs/, summary.csv, …")
    sw.add_argument("--engine", choices=("auto", "ray", "local"), default="auto",
                    help="ray: each run a Ray task; local: one after another in this process; "
                         "auto: ray when it is installed")
    sw.add_argument("--address", help="a Ray cluster to run on: 'auto' (the cluster this node "
                                      "belongs to) or ray://HOST:PORT; default: a Ray instance "
                                      "on this machine")
    sw.add_argument("--jobs", type=_positive_int,
                    help="runs at once (default: as many as the cluster's CPUs and GPUs hold)")
    sw.add_argument("--cpus-per-run", type=_positive_float, default=1.0,
                    help="CPUs a run asks of a node (also its torch threads; default 1)")
    sw.add_argument("--gpus-per-run", type=_nonnegative_float, default=0.0,
                    help="GPUs a run asks of a node, fractions allowed; > 0 trains on cuda")
    sw.add_argument("--retries", type=_nonnegative_int, default=3,
                    help="times a run whose worker or node died is started again")
    sw.add_argument("--data-dir", help="where the data set's files are on every node")
    sw.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a spec key in every block (TOML value: --set epochs=1, "
                         "--set seed=[0,1])")
    sw.add_argument("--only", action="append", default=[], metavar="KEY=V1,V2",
                    help="only the runs with one of these values (and the plain nets they "
                         "start from), e.g. --only prior=gnj,svd")
    sw.add_argument("--list", action="store_true",
                    help="print the runs the spec expands to, and exit")


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
            print(f"{r.id}: {r.train['model']} {what}, {r.train['epochs']} epochs")
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


def run(args) -> int:
    if args.command in ("train", "pretrain"):
        config = _train_config(args, "none" if args.command == "pretrain" else args.prior)
        try:
            check_config(config)
        except ValueError as e:
            raise UsageError(str(e)) from None
        result = train(config)
        last = result.metrics[-1] if result.metrics else {}
        print(f"{result.out}: {len(result.metrics)} epochs, "
              f"test error {last.get('test_error', float('nan')):.4f}")
        return 0
    if args.command == "analyse":
        if args.draws % 4:
            raise UsageError(f"--draws must be a multiple of 4 (4 chains), got {args.draws}")
        try:
            result = analyse(args.run_dir, draws=args.draws,
                             thresholds=parse_thresholds(args.thresholds),
                             figures=not args.no_figures, rule=args.threshold_rule,
                             error_budget=args.error_budget)
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
                  f"{sel['error_budget_points']} points, {sel['evaluations']} evaluations)")
        return 0
    if args.command == "compress":
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
    if args.command == "evaluate":
        if not Path(args.model).is_file():
            raise UsageError(f"{args.model}: no such file")
        verify_recorded(args.model)
        try:
            net = load_compressed(args.model)
        except (RuntimeError, IndexError) as e:       # the header's state does not fit
            raise ArtefactError(f"{args.model}: inconsistent network ({_first_line(e)})") \
                from None
        data = load_dataset(args.data, args.data_dir, train=False)
        try:
            error = classification_error(net, data.test_x, data.test_y)
        except (RuntimeError, IndexError) as e:
            raise ArtefactError(f"{args.model}: the network does not run on {data.name}'s "
                                f"{tuple(data.test_x.shape[1:])} images ({_first_line(e)})") \
                from None
        print(f"{args.model}: test error {error:.4f} on {data.name} "
              f"({data.test_x.shape[0]} images)")
        return 0
    if args.command == "export":
        r = export(args.run_dir, args.format, args.out)
        e = r["test_error"]
        print(f"{r['path']}: {r['bytes']} bytes ({r['quantised_bytes']} float32); int8 layers "
              f"{', '.join(r['int8_layers'])}; float32 {', '.join(r['float_layers']) or '-'}")
        print(f"test error: quantised (float32) {e['quantised']:.4f}, int8 {e['int8']:.4f}")
        return 0
    if args.command == "bench":
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
    if args.command == "report":
        if is_sweep_dir(args.run_dirs[0]):   # mean ± sd over seeds, then any single runs
            r = build_report(args.run_dirs[1:], args.out, sweep=read_summary(args.run_dirs[0]))
        else:
            r = build_report(args.run_dirs, args.out)
        print(f"{r.pdf}: {len(r.pages)} pages from {len(r.runs)} runs; tables "
              f"{', '.join(str(p) for p in r.csv.values())}")
        return 0
    if args.command == "sweep":
        return _sweep(args)
    if args.command == "demo":
        run_demo(args.out, data_dir=args.data_dir, epochs=args.epochs,
                 pretrain_epochs=args.pretrain_epochs, threads=args.threads)
        return 0
    raise UsageError(f"unknown command {args.command!r}")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    try:
        return run(args)
    except USAGE_ERRORS as e:
        if args.debug:
            raise
        parser.exit(2, f"pbc: error: {e}\n")
    except (DataError, ArtefactError, TrainingDiverged) as e:
        if args.debug:
            raise
        print(f"pbc: error: {_first_line(e)}", file=sys.stderr)
        return 1
    except OSError as e:          # a full or read-only disk, a path that cannot be made
        if args.debug:
            raise
        print(f"pbc: error: {describe_os_error(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pbc: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
