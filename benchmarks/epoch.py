"""Benchmark: a whole training epoch of pbc against a plain PyTorch epoch of the same model.

For each (model, prior) case, one process times, on Fashion-MNIST (the training split less
the 5,000 validation images, as ``pbc train`` holds out):

* **pbc** — exactly what ``pbc train`` does per epoch: :func:`pbc.train._train_epoch` (shuffle,
  learning-rate schedule, the method's loss = ``MeanFieldELBO`` under local
  reparameterisation, ``backward``, Adam over the method's parameter groups, the variance
  clip) followed by the evaluation of the posterior-mean network on 10,000 training images,
  the validation split and the test set (``method.evaluation_network`` +
  :func:`pbc.nets.classification_error`);
* **plain** — the same epoch written by hand in torch: the layers, local
  reparameterisation and closed-form KLs of ``benchmarks/svi_step.py``'s plain reference,
  its parameters copied from the pbc net, the same minibatches, Adam, and the same
  evaluation (posterior-mean weights through ``F.conv2d``/``F.linear``, batches of 1000).

Both use batch ``--batch`` (default 128) and ``--threads`` intra-op threads.  Epochs are
interleaved (pbc, plain, plain, pbc, …) ``--repeats`` times after a warm-up of a few steps
each; per implementation the script prints the median seconds per epoch (training and
evaluation apart), samples/s, and the ratio of medians pbc/plain, ending with one line per
case::

    ratio <model> <prior> <value>

``--max-steps N`` times the first N minibatches of each epoch only (a quick check; the
evaluation is still whole).  ``--profile`` prints, for the first case, where one pbc step's
time goes by operator (``torch.profiler``), beside the plain step's.  On CUDA the data
lives on the device and every timing is synchronised.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from svi_step import PlainBayesNet, setup  # noqa: E402  (the plain reference layers)

from pbc import methods  # noqa: E402
from pbc.bayes.elbo import MeanFieldELBO  # noqa: E402
from pbc.config import TrainConfig  # noqa: E402
from pbc.nets import classification_error, make_architecture  # noqa: E402
from pbc.rundir import run_splits  # noqa: E402
from pbc.train import TRAIN_ERROR_EXAMPLES, _batches, _train_epoch  # noqa: E402

LOG_CLIP_VAR = math.log(0.04)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ============================================================================ plain epoch
def _z_mean(layer) -> torch.Tensor:
    """E[z] of a plain layer's group scales: the normal's mean (GNJ) or the log-normal's
    ``exp(μ + σ²/2)`` (GHS, ``log z = log s + log z̃``)."""
    if layer.prior == "gnj":
        return layer.z_loc
    mu = 0.5 * (layer.sa_loc + layer.sb_loc + layer.za_loc + layer.zb_loc)
    var = 0.25 * (layer.sa_logvar.exp() + layer.sb_logvar.exp() + layer.za_logvar.exp()
                  + layer.zb_logvar.exp())
    return torch.exp(mu + 0.5 * var)


def _mean_forward(layer, x: torch.Tensor) -> torch.Tensor:
    """A Bayesian layer with its posterior-mean weights ``E[w] = E[z]·μ``, ``E[b] = μ_b``."""
    z = _z_mean(layer)
    if layer.conv:
        return F.conv2d(x, layer.w_loc * z[:, None, None, None], layer.b_loc,
                        padding=layer.padding)
    return F.linear(x, layer.w_loc * z, layer.b_loc)


@torch.no_grad()
def plain_mean_logits(plain: PlainBayesNet, x: torch.Tensor) -> torch.Tensor:
    """Logits of the posterior-mean network ``E[w] = E[z]·μ``, ``E[b] = μ_b``."""
    return plain.logits(x, bayes_layer=_mean_forward)


def plain_error(plain, x, y, batch: int = 1000) -> float:
    wrong = 0
    for i in range(0, x.shape[0], batch):
        wrong += int((plain_mean_logits(plain, x[i:i + batch]).argmax(-1)
                      != y[i:i + batch]).sum())
    return wrong / max(1, x.shape[0])


def plain_epoch(plain, optim, data, config, epoch: int, max_steps: int | None) -> dict:
    """One training pass (same minibatches as pbc's) and the same three evaluations."""
    x, y = data["train_x"], data["train_y"]
    n = x.shape[0]
    batches = _batches(n, config.batch_size, config.seed, epoch)[:max_steps]
    t0 = time.perf_counter()
    for idx in batches:
        idx = idx.to(x.device)
        optim.zero_grad(set_to_none=True)
        loss, _, _ = plain.terms(x[idx], y[idx], n)
        loss.backward()
        optim.step()
        with torch.no_grad():                       # pbc's variance clip (CLIP_VAR = 0.04)
            for layer in plain.bayes:
                layer.w_logvar.clamp_(max=LOG_CLIP_VAR)
                layer.b_logvar.clamp_(max=LOG_CLIP_VAR)
        loss.item()
    _sync(x.device)
    t1 = time.perf_counter()
    errors = {"train": plain_error(plain, x[:TRAIN_ERROR_EXAMPLES], y[:TRAIN_ERROR_EXAMPLES]),
              "val": plain_error(plain, data["val_x"], data["val_y"]),
              "test": plain_error(plain, data["test_x"], data["test_y"])}
    _sync(x.device)
    return {"train_s": t1 - t0, "eval_s": time.perf_counter() - t1, "steps": len(batches),
            "errors": errors}


# ============================================================================ pbc epoch
def pbc_epoch(method, net, elbo, optim, data, config, arch, epoch: int) -> dict:
    """What :func:`pbc.train.train` does for one epoch, less writing artefacts."""
    x, y = data["train_x"], data["train_y"]
    t0 = time.perf_counter()
    with pyro.validation_enabled(False):
        _train_epoch(config, method, net, elbo, optim, x, y, epoch)
    _sync(x.device)
    t1 = time.perf_counter()
    plain = method.evaluation_network(net, arch)
    n_err = TRAIN_ERROR_EXAMPLES
    errors = {"train": classification_error(plain, x[:n_err], y[:n_err], device=x.device),
              "val": classification_error(plain, data["val_x"], data["val_y"],
                                          device=x.device),
              "test": classification_error(plain, data["test_x"], data["test_y"],
                                           device=x.device)}
    net.train()
    _sync(x.device)
    return {"train_s": t1 - t0, "eval_s": time.perf_counter() - t1, "errors": errors}


# ============================================================================ one case
def make_case(model: str, prior: str, args, device):
    config = TrainConfig(out="unused", model=model, prior=prior, data="fashion-mnist",
                         data_dir=args.data_dir, batch_size=args.batch, epochs=args.epochs_planned,
                         seed=args.seed, device=str(device), progress=False)
    config, splits = run_splits(config)
    data = {k: getattr(splits, k).to(device) for k in ("train_x", "train_y", "val_x", "val_y",
                                                       "test_x", "test_y")}
    arch = make_architecture(model, splits.input_shape, splits.num_classes)
    method = methods.get(prior)
    torch.manual_seed(args.seed)
    net = method.build(config, arch).to(device)
    optim = torch.optim.Adam(method.param_groups(net, config), lr=config.lr)
    plain = PlainBayesNet(net, prior, config.tau0).to(device)
    plain_optim = torch.optim.Adam(plain.parameters(), lr=config.lr)
    return config, data, arch, method, net, optim, plain, plain_optim


def bench_case(model: str, prior: str, args, device) -> dict:
    config, data, arch, method, net, optim, plain, plain_optim = make_case(model, prior, args,
                                                                           device)
    elbo = MeanFieldELBO()
    pbc_data = data
    if args.max_steps:
        keep = args.max_steps * config.batch_size
        pbc_data = {**data, "train_x": data["train_x"][:keep],
                    "train_y": data["train_y"][:keep]}
    # the same function before timing: posterior-mean errors from the same parameters
    e_pbc = classification_error(method.evaluation_network(net, arch), data["test_x"],
                                 data["test_y"], device=device)
    e_plain = plain_error(plain, data["test_x"], data["test_y"])
    print(f"[{model} {prior}] check: test error of the posterior-mean net before training "
          f"pbc {e_pbc:.4f}, plain {e_plain:.4f} -> {'OK' if e_pbc == e_plain else 'DIFFERS'}",
          flush=True)
    warm = {**data, "train_x": data["train_x"][:5 * config.batch_size],
            "train_y": data["train_y"][:5 * config.batch_size]}
    with pyro.validation_enabled(False):
        _train_epoch(config, method, net, elbo, optim, warm["train_x"], warm["train_y"], 0)
    plain_epoch(plain, plain_optim, warm, config, 0, 5)
    runs = {"pbc": [], "plain": []}
    for r in range(args.repeats):
        order = ("pbc", "plain") if r % 2 == 0 else ("plain", "pbc")
        for name in order:
            if name == "pbc":
                res = pbc_epoch(method, net, elbo, optim, pbc_data, config, arch, r + 1)
            else:
                res = plain_epoch(plain, plain_optim, data, config, r + 1, args.max_steps)
            res["total_s"] = res["train_s"] + res["eval_s"]
            runs[name].append(res)
            print(f"[{model} {prior}] repeat {r + 1} {name:5s} train {res['train_s']:7.2f} s, "
                  f"eval {res['eval_s']:6.2f} s, test error {res['errors']['test']:.4f}",
                  flush=True)
    n_train = args.max_steps * config.batch_size if args.max_steps else \
        data["train_x"].shape[0]
    out = {"model": model, "prior": prior, "examples_per_epoch": n_train}
    for name, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("train_s", "eval_s", "total_s")}
        med["min_total_s"] = min(r["total_s"] for r in rs)
        med["max_total_s"] = max(r["total_s"] for r in rs)
        med["samples_per_s"] = n_train / med["train_s"]
        out[name] = med
        print(f"[{model} {prior}] {name:5s} epoch {med['total_s']:7.2f} s (train "
              f"{med['train_s']:.2f} + eval {med['eval_s']:.2f}; min {med['min_total_s']:.2f}, "
              f"max {med['max_total_s']:.2f}); {med['samples_per_s']:.0f} samples/s",
              flush=True)
    out["ratio"] = out["pbc"]["total_s"] / out["plain"]["total_s"]
    out["train_ratio"] = out["pbc"]["train_s"] / out["plain"]["train_s"]
    print(f"[{model} {prior}] pbc/plain epoch {out['ratio']:.3f} (training alone "
          f"{out['train_ratio']:.3f})", flush=True)
    return out


# ============================================================================ profiling
def profile(args, device) -> None:
    """Operator breakdown of ``--profile-steps`` steps of pbc and of plain."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    model, prior = args.models[0], args.priors[0]
    config, data, arch, method, net, optim, plain, plain_optim = make_case(model, prior, args,
                                                                           device)
    elbo = MeanFieldELBO()
    k = args.profile_steps * config.batch_size
    sub = {**data, "train_x": data["train_x"][:k], "train_y": data["train_y"][:k]}
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for name in ("pbc", "plain"):
        def run(name=name):
            if name == "pbc":
                with pyro.validation_enabled(False):
                    _train_epoch(config, method, net, elbo, optim, sub["train_x"],
                                 sub["train_y"], 0)
            else:
                plain_epoch(plain, plain_optim, {**sub, "val_x": sub["val_x"][:0],
                                                 "val_y": sub["val_y"][:0],
                                                 "test_x": sub["test_x"][:0],
                                                 "test_y": sub["test_y"][:0]},
                            config, 0, args.profile_steps)

        run()
        with tprofile(activities=acts) as prof:
            run()
        print(f"\n{name}: {args.profile_steps} steps of {model} {prior}, top {args.top} "
              f"operators by self CPU time")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))


# ============================================================================ main
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["lenet300", "lenet5"],
                    choices=["lenet300", "lenet5"])
    ap.add_argument("--priors", nargs="+", default=["gnj"], choices=["gnj", "ghs"])
    ap.add_argument("--batch", type=int, default=128, help="minibatch size")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--repeats", type=int, default=3, help="timed epochs per implementation")
    ap.add_argument("--max-steps", type=int, help="time only the first N steps of each epoch")
    ap.add_argument("--epochs-planned", type=int, default=200,
                    help="the run length the learning-rate schedule is planned for")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", help="Fashion-MNIST directory (default: pbc's look-up)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--profile", action="store_true",
                    help="operator breakdown of pbc's and plain's steps (first case) instead")
    ap.add_argument("--profile-steps", type=int, default=20)
    ap.add_argument("--top", type=int, default=25)
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    device, environment = setup(args)
    print(f"{environment}, {args.repeats} epochs each (interleaved)"
          + (f", first {args.max_steps} steps of each" if args.max_steps else ""), flush=True)
    if args.profile:
        profile(args, device)
        return
    results = [bench_case(m, p, args, device) for m in args.models for p in args.priors]
    with contextlib.suppress(BrokenPipeError):
        for r in results:
            print(f"ratio {r['model']} {r['prior']} {r['ratio']:.3f}")


if __name__ == "__main__":
    main()
