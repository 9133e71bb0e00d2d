"""One study = one method on one network, run end to end into one run directory.

A study script in ``studies/`` declares a :class:`Study` and calls :func:`main`.  The stages::

    pretrain (plain net, <out>/pretrain) → train (<out>/run, from the pretrained weights,
    or from scratch when the study pretrains for 0 epochs)
      → analyse (Bayesian methods) → compress → frontier (Bayesian methods: analyse and
      compress at each error budget, frontier.csv) → bench
      [→ finetune (BC-GNJ, BC-GHS, with --finetune-epochs: <out>/finetuned, the run without
        the groups its analysis pruned) → analyse → compress → frontier → bench]
      → report (<out>/run/report.pdf)

Each stage writes its artefacts, so a stopped study continues where it stopped: a run whose
checkpoint has all its epochs is not retrained, a partial one resumes, and a stage whose
artefact exists is skipped (``--redo`` reruns the stages after training).  ``--smoke``
swaps in a tiny generated data set, a smaller network of the same structure where the study's
is large, one epoch each, no analysis figures and a small bench: seconds, for the tests.

:func:`train_or_resume` and :func:`later_stages` are the pipeline's steps for one run
directory; a sweep (:mod:`pbc.sweep`) runs the same steps for every run of its grid.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from pbc import methods
from pbc.analysis import analyse
from pbc.analysis.frontier import frontier
from pbc.bench import bench
from pbc.compress import compress
from pbc.config import PLAIN_KEYS, TrainConfig
from pbc.data import write_synthetic_dataset
from pbc.defaults import DEFAULT_BUDGETS, parse_budgets
from pbc.finetune import finetune_config
from pbc.reporting.pdf import build_report
from pbc.rundir import ANALYSIS, BENCH, CHECKPOINT, COMPRESSION, FRONTIER, REPORT, RunDir
from pbc.train import train

# the smoke run of a study checks the pipeline: a network of the same structure, smaller
SMOKE_MODELS = {"vgg16": "vgg16-narrow", "pbc.zoo:resnet8": "pbc.zoo:resnet8_narrow"}


# pbc's training defaults before they became those of Louizos et al.'s code (cosine schedule,
# batch 100, the scales' log-variances at 10× the learning rate, 10⁻³ for every method); the
# committed runs of the studies that name them were trained with these, with the bound of
# BC-GNJ (and of BC-GHS from scratch) on every layer (EARLIER_BC)
EARLIER_DEFAULTS = {"lr_schedule": "cosine", "batch_size": 100, "scale_var_lr": 10.0,
                    "lr": 1e-3}
EARLIER_BC = {**EARLIER_DEFAULTS, "max_weight_var": 0.04}


@dataclass(frozen=True)
class Study:
    """What a study runs.  ``train`` holds extra :class:`pbc.config.TrainConfig` settings."""

    name: str
    model: str
    prior: str
    data: str = "fashion-mnist"
    epochs: int = 30
    pretrain_epochs: int = 30
    device: str = "cpu"
    train: dict = field(default_factory=dict)
    budgets: tuple[float, ...] = DEFAULT_BUDGETS   # the frontier's, in points
    finetune_epochs: int = 0   # epochs of `pbc finetune` after the analysis (0: none)


def parse_args(study: Study, argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=f"study {study.name}: {study.prior} on "
                                f"{study.model}, {study.data}")
    p.add_argument("--out", default=f"runs/studies/{study.data}/{study.name}")
    p.add_argument("--data-dir", help="where the data set's files are")
    p.add_argument("--epochs", type=int, default=study.epochs)
    p.add_argument("--pretrain-epochs", type=int, default=study.pretrain_epochs,
                   help="epochs of the plain net the method starts from (0: from scratch)")
    p.add_argument("--pretrained", help="use this plain run instead of pretraining one")
    p.add_argument("--device", default=study.device)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the validation split, the initialisation and the batches")
    p.add_argument("--bench-batch", type=int, default=8192)
    p.add_argument("--budgets", type=_budgets, default=study.budgets,
                   help="the frontier's error budgets in points, comma-separated "
                        "(none: no frontier)")
    p.add_argument("--finetune-epochs", type=int, default=study.finetune_epochs,
                   help="gnj, ghs: train the analysed run on without the groups it pruned, "
                        "for this many epochs, into OUT/finetuned (0: no fine-tuning)")
    p.add_argument("--redo", action="store_true", help="rerun analyse/compress/bench/report")
    p.add_argument("--smoke", action="store_true",
                   help="tiny generated data, one epoch: checks the pipeline in seconds")
    return p.parse_args(argv)


def _budgets(text: str) -> tuple[float, ...]:
    """``--budgets``: comma-separated points (:func:`pbc.defaults.parse_budgets`), or
    ``none`` for no frontier."""
    if text.strip().lower() == "none":
        return ()
    try:
        return tuple(parse_budgets(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _say(text: str) -> None:
    print(text, flush=True)


def train_or_resume(config: TrainConfig, say=_say) -> int:
    """Bring the run ``config.out`` to ``config.epochs`` epochs: nothing when its checkpoint
    holds them all, a resume from the checkpoint when it holds some, a fresh run otherwise.
    Returns the epochs the checkpoint held before (the checkpoint's count, not the metrics',
    which a kill between the two writes can leave one epoch ahead)."""
    run = RunDir(config.out)
    done = int(run.checkpoint()["epoch"]) if run.has(CHECKPOINT) else 0
    if done >= config.epochs:
        say(f"      {config.out}: {done} epochs already trained")
        return done
    config.resume = done > 0
    train(config)
    return done


def later_stages(run: Path, prior: str, *, analyse_kw: dict | None = None,
                 bench_kw: dict | None = None, budgets=None, redo: bool = False, step=_say,
                 say=_say) -> None:
    """The stages after training, in order: analyse (methods with a posterior), compress,
    the frontier over ``budgets`` (where given, methods with a posterior), bench.  A stage
    whose artefact is there is skipped unless ``redo``; ``analyse_kw`` and ``bench_kw`` go
    to :func:`pbc.analysis.analyse` and :func:`pbc.bench.bench`."""
    run = Path(run)

    def stage(artefact: str, text: str, fn) -> None:
        step(text)
        if (run / artefact).is_file() and not redo:
            say(f"      {run / artefact} exists (--redo reruns)")
        else:
            fn()

    if methods.get(prior).has_posterior:
        stage(ANALYSIS, "analyse the posterior (ArviZ)",
              lambda: analyse(run, **(analyse_kw or {})))
    else:
        step(f"analyse: not applicable to {prior} (no posterior)")
    stage(COMPRESSION, "compress: prune, quantise, pack", lambda: compress(run))
    if budgets is not None:
        if budgets and methods.get(prior).has_posterior:
            stage(FRONTIER, f"frontier: analyse and compress at error budgets "
                            f"{', '.join(f'{b:g}' for b in budgets)} points",
                  lambda: frontier(run, budgets))
        else:
            step("frontier: not asked for" if not budgets else
                 f"frontier: not applicable to {prior} (no posterior)")
    bench_kw = bench_kw or {}
    stage(BENCH, f"bench dense vs compressed ({bench_kw.get('device', 'cpu')}, batch "
                 f"{bench_kw.get('batch', 8192)})", lambda: bench(run, **bench_kw))


def run_study(study: Study, args: argparse.Namespace) -> Path:
    """Run (or continue) every stage; return the last run directory (the fine-tuned one
    where the study fine-tunes)."""
    out = Path(args.out)
    data_dir, common = args.data_dir, {}
    if args.smoke:
        data_dir = str(write_synthetic_dataset(out / "smoke-data", study.data))
        args.epochs, args.bench_batch = 1, 64
        args.pretrain_epochs = min(args.pretrain_epochs, 1)
        args.device = "cpu"  # the smoke run checks the pipeline, on any machine
        common = {"subset": 200, "batch_size": 20}
    model = SMOKE_MODELS.get(study.model, study.model) if args.smoke else study.model
    common.update(model=model, data=study.data, data_dir=data_dir, device=args.device,
                  threads=args.threads, seed=args.seed, progress=not args.smoke)
    tunes = args.finetune_epochs > 0 and methods.get(study.prior).has_groups
    step = _Steps(12 if tunes else 7)

    pre = Path(args.pretrained) if args.pretrained else out / "pretrain"
    if args.pretrained:
        step(f"pretrained plain run: {pre}")
    elif args.pretrain_epochs:
        step(f"pretrain {model} (plain, {args.pretrain_epochs} epochs) → {pre}")
        lr = {"lr": 1e-2} if args.smoke else {}  # tiny data: weights must move in one epoch
        shared = {k: v for k, v in study.train.items() if k in PLAIN_KEYS}
        train_or_resume(TrainConfig(out=str(pre), prior="none", epochs=args.pretrain_epochs,
                                    **{**shared, **common}, **lr))
    else:
        step("no pretraining: the method trains from scratch")
        pre = None
    run = out / "run"
    step(f"train {model} under {study.prior} ({args.epochs} epochs, from "
         f"{pre or 'scratch'}) → {run}")
    # the smoke run's subset and batch size win over the study's own settings
    train_or_resume(TrainConfig(out=str(run), prior=study.prior, epochs=args.epochs,
                                init_from=str(pre) if pre else None,
                                **{**study.train, **common}))

    def after_training(path: Path) -> None:
        later_stages(path, study.prior, redo=args.redo, step=step, say=_say,
                     budgets=args.budgets[:1] if args.smoke else args.budgets,
                     analyse_kw={"draws": 40 if args.smoke else 1000,
                                 "figures": not args.smoke},
                     bench_kw={"batch": args.bench_batch, "device": args.device,
                               "threads": args.threads, "repeats": 2 if args.smoke else 20})

    after_training(run)
    runs = [run]
    if tunes:
        tuned = out / "finetuned"
        epochs = 1 if args.smoke else args.finetune_epochs
        step(f"fine-tune without the groups the analysis pruned ({epochs} epochs) → {tuned}")
        train_or_resume(finetune_config(run, str(tuned), epochs,
                                        device=args.device, threads=args.threads,
                                        progress=not args.smoke))
        after_training(tuned)
        runs.append(tuned)
    step(f"report → {run / REPORT}")
    if (run / REPORT).is_file() and not args.redo:
        _say(f"      {run / REPORT} exists (--redo reruns)")
    else:
        build_report(runs + [pre] if pre else runs, run / REPORT)
    return runs[-1]


class _Steps:
    def __init__(self, total: int):
        self.i, self.total = 0, total

    def __call__(self, text: str) -> None:
        self.i += 1
        print(f"[{self.i}/{self.total}] {text}", flush=True)


def main(study: Study, argv=None) -> int:
    args = parse_args(study, argv)
    run = run_study(study, args)
    rec = RunDir(run).compression()
    e, r = rec["error"], rec["rates"]
    print(f"{study.name}: error full {e['full']:.4f}, packed {e['packed']:.4f}; "
          f"|w≠0|/|w| {100 * r['nonzero_fraction']:.2f}%, pruning {r['pruning']:.1f}x, "
          f"fast prediction {r['fast_prediction']:.1f}x, max compression "
          f"{r['max_compression']:.1f}x")
    return 0
