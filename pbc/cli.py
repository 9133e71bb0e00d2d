"""``pbc`` command line: parse, build a config, call the library.  No logic lives here.

Exit status: 0 success; 1 a data or artefact problem, a directory another command is
writing in, a full or read-only disk, or a diverged run (one line on stderr); 2 bad arguments
(one line); ``--debug`` shows the traceback instead.

Parsing imports no torch: the parser's choices and defaults come from :mod:`pbc.defaults`,
and :mod:`pbc.commands`, which imports the stages, is imported only once a command runs, so
``pbc --help`` and ``pbc CMD --help`` answer at once.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from pbc.defaults import (
    BATCH_SIZE,
    CLIP_VAR,
    DATASETS,
    DEFAULT_BUDGETS,
    DEFAULT_ERROR_BUDGET,
    EXPORT_FILES,
    EXPORT_FORMATS,
    FINETUNE_EPOCHS,
    FINETUNE_LR,
    FINETUNE_SCHEDULE,
    GAMMA_OTHER,
    GAMMA_ZERO,
    GROUP_SCRATCH_LR,
    GROUP_SCRATCH_WEIGHT_VAR,
    LR,
    LR_SCHEDULE,
    LR_SCHEDULES,
    MODELS,
    PRECISIONS,
    PRIORS,
    RATE_HELP,
    RULES,
    SCALE_VAR_LR,
    SWS_DEFAULT_TAU,
    ZERO_RATE_HELP,
    parse_budgets,
)
from pbc.io import describe_os_error

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


def _model(text: str) -> str:
    """An argparse type: a named architecture or ``package.module:callable``."""
    if text in MODELS or re.fullmatch(r"[\w.]+:[\w.]+", text):
        return text
    raise argparse.ArgumentTypeError(f"expected one of {', '.join(MODELS)} or "
                                     f"package.module:callable, got {text!r}")


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


def _budgets(text: str) -> list[float]:
    try:
        return parse_budgets(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_train_args(p: argparse.ArgumentParser, with_prior: bool) -> None:
    p.add_argument("--model", type=_model, default="lenet300",
                   help=f"{', '.join(MODELS)}, or your own network as package.module:callable "
                        f"(a function returning an nn.Module; the working directory is "
                        f"searched too) (default %(default)s)")
    if with_prior:
        # checked against the methods' registry when the command runs (a method registered
        # in Python is a choice too; the registry needs torch, which --help does not load)
        p.add_argument("--prior", default="gnj", metavar="{" + ",".join(PRIORS) + "}",
                       help="gnj, ghs: Bayesian compression; svd: Sparse VD; sws: soft "
                            "weight-sharing; dc: Deep Compression (sws and dc need "
                            "--init-from); none: a plain deterministic net")
    p.add_argument("--data", choices=DATASETS, default="fashion-mnist")
    p.add_argument("--data-dir", help="directory holding the dataset files")
    p.add_argument("--download", action="store_true", help="download missing data (online)")
    p.add_argument("--epochs", type=_int_at_least(1, 100_000), default=30)
    p.add_argument("--batch-size", type=_int_at_least(1, 1_000_000), default=BATCH_SIZE)
    p.add_argument("--lr", type=_positive_float,
                   help=f"Adam's learning rate; unset: {LR:g}, and {GROUP_SCRATCH_LR:g} for gnj "
                        f"and ghs from scratch")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=LR_SCHEDULE,
                   help="cooldown: constant, then a linear decay to 0 over the last tenth of "
                        "the epochs; constant (as Louizos et al.'s code); cosine: decay the "
                        "learning rate to 0 over the whole run")
    p.add_argument("--scale-var-lr", type=_positive_float, default=SCALE_VAR_LR,
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
    p.add_argument("--max-weight-var", metavar="V|LAYER=V,...|none",
                   help="upper bound on the posterior variance of w̃ (Louizos et al.'s "
                        "clip_var) in every layer, or in the named layers only "
                        "(fc1=0.04: the others unbounded); default: on the layer with the "
                        "most weights only (where the authors' code bounds LeNet-300-100's "
                        f"fc1), {GROUP_SCRATCH_WEIGHT_VAR:g} for gnj and ghs from scratch, "
                        f"{CLIP_VAR:g} (the authors') for gnj with --init-from; none for ghs "
                        "with --init-from")
    p.add_argument("--kl-warmup", type=_int_at_least(0, 100_000), default=0,
                   help="epochs of linear KL annealing (0: none)")
    p.add_argument("--sws-tau", type=_positive_float, default=SWS_DEFAULT_TAU,
                   help="sws: weight of the mixture prior against the log-likelihood")
    p.add_argument("--sws-zero-rate", type=_positive_float, default=GAMMA_ZERO[1],
                   help="sws: " + ZERO_RATE_HELP)
    p.add_argument("--sws-rate", type=_positive_float, default=GAMMA_OTHER[1],
                   help="sws: " + RATE_HELP)
    p.add_argument("--dc-keep", metavar="LAYER=F,...",
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
    an.add_argument("--precision", choices=PRECISIONS, default="budget",
                    help="bits per layer: budget: the fewest significand bits within the same "
                         "--error-budget (under the budget rule); posterior: unit round-off "
                         "below the mean posterior variance (the paper's rule)")
    an.add_argument("--no-figures", action="store_true")
    ft = _command(sub, "finetune", help="train an analysed BC run on without the groups its "
                  "analysis pruned, into a new run directory (then analyse and compress it)")
    ft.add_argument("run_dir", help="an analysed gnj or ghs run")
    ft.add_argument("--out", type=_out_path, required=True, help="the new run directory")
    ft.add_argument("--epochs", type=_int_at_least(1, 100_000), default=FINETUNE_EPOCHS,
                    help="epochs of fine-tuning")
    ft.add_argument("--lr", type=_positive_float, default=FINETUNE_LR,
                    help="the learning rate the schedule starts from")
    ft.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=FINETUNE_SCHEDULE,
                    help="as for train; cosine decays the rate to 0 over the fine-tuning")
    ft.add_argument("--device", type=_device, default="cpu", help="cpu or cuda[:N]")
    ft.add_argument("--threads", type=_threads, help="torch CPU threads")
    ft.add_argument("--resume", action="store_true", help="continue the fine-tuning in --out")
    ft.add_argument("--no-progress", action="store_true", help="no progress bars")
    co = _command(sub, "compress", help="prune, quantise and pack an analysed run")
    co.add_argument("run_dir")
    fr = _command(sub, "frontier", help="error against compression of a trained run: analyse "
                  "and compress at several error budgets, on scratch copies (frontier.csv)")
    fr.add_argument("run_dir")
    fr.add_argument("--budgets", type=_budgets,
                    default=",".join(f"{b:g}" for b in DEFAULT_BUDGETS),
                    help="points of validation error, comma-separated")
    fr.add_argument("--precision", choices=PRECISIONS, default="budget",
                    help="bits per layer, as for analyse")
    ev = _command(sub, "evaluate", help="test error of a compressed network or a run; "
                  "with --samples, the posterior predictive and its calibration")
    ev.add_argument("model", help="a run directory, or model.pbcz, pruned.pt or quantised.pt")
    ev.add_argument("--data", choices=DATASETS, default="fashion-mnist",
                    help="the data set of a file (a run uses its own)")
    ev.add_argument("--data-dir")
    ev.add_argument("--samples", type=_positive_int,
                    help="a run: Monte Carlo draws of the weights from the posterior for the "
                         "predictive (error, NLL, calibration; writes RUN/predictive.json)")
    ev.add_argument("--seed", type=_seed, default=0, help="seed of the draws")
    ev.add_argument("--factory", type=_model,
                    help="a file of your own network: the package.module:callable that "
                         "builds it (a file never names code to import)")
    ex = _command(sub, "export", help="write a compressed run in a deployment format")
    ex.add_argument("run_dir")
    ex.add_argument("--format", choices=EXPORT_FORMATS, default="int8",
                    help="int8: the layers whose weights fit in 8 bits on int8 kernels; "
                         "torchscript: torch.jit.load runs it without pbc; onnx: for ONNX "
                         "Runtime and other tools (the onnx extra); state-dict: torch.save of "
                         "the state dict, its architecture in a .json beside it")
    ex.add_argument("--out", help="the file to write (default RUN/ and, by format, "
                                  + ", ".join(f"{k}: {v}" for k, v in EXPORT_FILES.items())
                                  + ")")
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


def main(argv=None) -> int:
    """Parse ``argv`` and run the command (:mod:`pbc.commands`); the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # the one deferred import: the stages, and torch with them, load once a command runs
    from pbc import commands

    try:
        return commands.run(args)
    except commands.USAGE_ERRORS as e:
        if args.debug:
            raise
        parser.exit(2, f"pbc: error: {e}\n")
    except commands.FAILURES as e:
        if args.debug:
            raise
        print(f"pbc: error: {commands.first_line(e)}", file=sys.stderr)
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
