"""Benchmark: pbc's SVI training step against a plain PyTorch implementation of the same step.

For each (model, prior) case, one process times

* **pbc** — what :func:`pbc.train._train_epoch` does for a :class:`~pbc.bayes.net.BayesNet`:
  ``MeanFieldELBO().terms(net.model, net.guide, xb, yb, subsample=idx, size=N)``, ``backward``,
  ``Adam.step`` (under ``pyro.validation_enabled(False)``, ``module_local_params=True``);
* **plain** — the same layers, parameterisation and objective written by hand in torch
  (no Pyro): local reparameterisation with ``z`` drawn per example and the closed-form KLs
  of :mod:`pbc.bayes.kl` and :mod:`pbc.bayes.priors`, its parameters copied from the pbc net.

Before timing, a check evaluates both losses from the same RNG seed (the plain reference
first makes the guide's unused draws of ``z`` so that both consume the same random numbers)
and compares the log-likelihood term, the KL term, the loss and every parameter's gradient.

Timing: threads stated, warm-up, ``--repeats`` × ``--steps``
timed steps per implementation, pbc and plain interleaved within each repeat (alternating
which goes first), median and min–max of ms/step, and the ratio of medians pbc/plain.
The output ends with one line per case: ``ratio <model> <prior> <value>``.

Run ``python benchmarks/svi_step.py --help``; ``--profile`` profiles pbc's step for the
first case (phase breakdown, torch.profiler and cProfile) instead of timing.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import math
import platform
import pstats
import statistics
import sys
import time

import pyro
import torch
import torch.nn.functional as F
from torch import nn

from pbc.bayes.elbo import MeanFieldELBO
from pbc.bayes.layers import BayesLayer
from pbc.bayes.net import BayesNet
from pbc.bayes.priors import make_prior
from pbc.nets import make_architecture

N_TRAIN = 60_000
INPUT_SHAPE = (1, 28, 28)
NUM_CLASSES = 10
VAR_EPS = 1e-8
# Molchanov et al. (2017): −KL ≈ k1·σ(k2 + k3·log α) − ½·softplus(−log α) − k1.
K1, K2, K3 = 0.63576, 1.87320, 1.48695
LOG_2PI = math.log(2.0 * math.pi)


# ============================================================================ plain reference
def _kl_std_normal(loc: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``Σ KL(N(μ, σ²) ‖ N(0, 1)) = ½ Σ (σ² + μ² − 1 − log σ²)``."""
    return 0.5 * (logvar.exp() + loc * loc - 1.0 - logvar).sum()


def _kl_ln_gamma(mu, logvar, k, log_r):
    """KL(LN(μ, σ²) ‖ Gamma(k, rate r)), elementwise."""
    return (-k * log_r + math.lgamma(k) - k * mu
            + math.exp(log_r) * torch.exp(mu + 0.5 * logvar.exp())
            - 0.5 * (1.0 + LOG_2PI + logvar))


def _kl_ln_invgamma(mu, logvar, k, log_r):
    """KL(LN(μ, σ²) ‖ InvGamma(k, r)), elementwise."""
    return (-k * log_r + math.lgamma(k) + k * mu
            + math.exp(log_r) * torch.exp(-mu + 0.5 * logvar.exp())
            - 0.5 * (1.0 + LOG_2PI + logvar))


def _param(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().clone())


class PlainBayesLayer(nn.Module):
    """One Bayesian linear or conv layer with group scales, torch only.

    Parameters are copied from a :class:`pbc.bayes.layers.BayesLayer` ``src``: ``w_loc``,
    ``w_logvar``, ``b_loc``, ``b_logvar``, and the group-scale posterior (GNJ: ``z_loc``,
    ``z_logvar``; GHS: ``{sa,sb,za,zb}_{loc,logvar}``).
    """

    def __init__(self, src: BayesLayer, prior: str, tau0: float):
        super().__init__()
        self.conv = not src.groups_on_input
        self.padding = getattr(src, "padding", 0)
        self.prior, self.tau0, self.n_groups = prior, tau0, src.n_groups
        for k in ("w_loc", "w_logvar", "b_loc", "b_logvar"):
            setattr(self, k, _param(getattr(src, k)))
        g = src.q_scale
        if prior == "gnj":
            self.z_loc, self.z_logvar = _param(g.loc), _param(g.logvar)
        else:
            for f in ("sa", "sb", "za", "zb"):
                setattr(self, f"{f}_loc", _param(getattr(g, f"{f}_loc")))
                setattr(self, f"{f}_logvar", _param(getattr(g, f"{f}_logvar")))

    def burn_guide_draws(self) -> None:
        """Consume the random numbers pbc's guide draws for ``z`` (unused under local reparam)."""
        Normal = torch.distributions.Normal
        with torch.no_grad():
            if self.prior == "gnj":
                Normal(self.z_loc, (0.5 * self.z_logvar).exp()).rsample()
            else:
                for f in ("sa", "sb", "za", "zb"):
                    loc, logvar = getattr(self, f"{f}_loc"), getattr(self, f"{f}_logvar")
                    Normal(loc, (0.5 * logvar).exp()).rsample()

    def sample_z(self, n: int) -> torch.Tensor:
        """Per-example group scales ``(n, G)``."""
        if self.prior == "gnj":
            eps = torch.randn(n, self.n_groups, dtype=self.z_loc.dtype, device=self.z_loc.device)
            return self.z_loc + (0.5 * self.z_logvar).exp() * eps
        s_mean = 0.5 * (self.sa_loc + self.sb_loc)
        s_var = 0.25 * (self.sa_logvar.exp() + self.sb_logvar.exp())
        t_mean = 0.5 * (self.za_loc + self.zb_loc)
        t_var = 0.25 * (self.za_logvar.exp() + self.zb_logvar.exp())
        like = {"dtype": self.za_loc.dtype, "device": self.za_loc.device}
        log_s = s_mean + s_var.sqrt() * torch.randn(n, 1, **like)
        eps = torch.randn(n, self.n_groups, **like)
        return torch.exp(log_s + t_mean + t_var.sqrt() * eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.sample_z(x.shape[0])
        w_var, b_var = self.w_logvar.exp(), self.b_logvar.exp()
        if self.conv:
            z = z[:, :, None, None]
            mean = z * F.conv2d(x, self.w_loc, self.b_loc, padding=self.padding)
            var = (z * z) * F.conv2d(x * x, w_var, b_var, padding=self.padding)
        else:
            xz = x * z
            mean = F.linear(xz, self.w_loc, self.b_loc)
            var = F.linear(xz * xz, w_var, b_var)
        return mean + torch.sqrt(var + VAR_EPS) * torch.randn_like(mean)

    def kl(self) -> torch.Tensor:
        kl = _kl_std_normal(self.w_loc, self.w_logvar) + _kl_std_normal(self.b_loc, self.b_logvar)
        if self.prior == "gnj":
            log_alpha = self.z_logvar - torch.log(self.z_loc * self.z_loc + 1e-8)
            neg = K1 * torch.sigmoid(K2 + K3 * log_alpha) - 0.5 * F.softplus(-log_alpha) - K1
            return kl - neg.sum()
        log_rate_s = -2.0 * math.log(self.tau0)  # rate 1/τ0²
        return (kl + _kl_ln_gamma(self.sa_loc, self.sa_logvar, 0.5, log_rate_s)
                + _kl_ln_invgamma(self.sb_loc, self.sb_logvar, 0.5, 0.0)
                + _kl_ln_gamma(self.za_loc, self.za_logvar, 0.5, 0.0).sum()
                + _kl_ln_invgamma(self.zb_loc, self.zb_logvar, 0.5, 0.0).sum())


class PlainBayesNet(nn.Module):
    """The plain counterpart of a :class:`~pbc.bayes.net.BayesNet` (lenet300 / lenet5 specs)."""

    def __init__(self, net: BayesNet, prior: str, tau0: float):
        super().__init__()
        self.bayes = nn.ModuleList()
        self.ops: list[tuple[str, int]] = []
        for spec, mod in zip(net.arch.layers, net.body, strict=True):
            if spec.kind in ("linear", "conv"):
                self.ops.append(("bayes", len(self.bayes)))
                self.bayes.append(PlainBayesLayer(mod, prior, tau0))
            elif spec.kind in ("relu", "flatten"):
                self.ops.append((spec.kind, 0))
            elif spec.kind == "maxpool":
                self.ops.append(("maxpool", spec.kernel))
            else:
                raise ValueError(f"plain reference has no {spec.kind!r} layer")

    def logits(self, x: torch.Tensor, bayes_layer=None) -> torch.Tensor:
        """The network's logits; ``bayes_layer(layer, x)``, if given, replaces the Bayesian
        layers' sampled forward (e.g. by the posterior-mean one)."""
        for kind, arg in self.ops:
            if kind == "bayes":
                layer = self.bayes[arg]
                x = layer(x) if bayes_layer is None else bayes_layer(layer, x)
            elif kind == "relu":
                x = F.relu(x)
            elif kind == "flatten":
                x = x.flatten(1)
            else:
                x = F.max_pool2d(x, arg)
        return x

    def terms(self, x, y, size: int, burn: bool = False):
        """``(loss, expected_loglik, kl)`` of the minibatch, as pbc's ``ELBOTerms``."""
        if burn:
            for layer in self.bayes:
                layer.burn_guide_draws()
        logp = F.log_softmax(self.logits(x), dim=-1)
        loglik = (size / x.shape[0]) * logp.gather(1, y[:, None]).sum()
        kl = sum(layer.kl() for layer in self.bayes)
        return -(loglik - kl), loglik, kl

    def copy_params_from(self, net: BayesNet) -> None:
        with torch.no_grad():
            for name, p in self.named_parameters():
                p.copy_(_matching_param(net, name))


def _pbc_param_name(plain_name: str) -> tuple[int, str]:
    """``bayes.<i>.<attr>`` → (i, attribute path on the pbc layer)."""
    _, i, attr = plain_name.split(".", 2)
    if attr.startswith("w_") or attr.startswith("b_"):
        return int(i), attr
    if attr.startswith("z_"):
        return int(i), "scale_guide." + attr[2:]
    return int(i), "scale_guide." + attr


def _matching_param(net: BayesNet, plain_name: str) -> torch.Tensor:
    i, path = _pbc_param_name(plain_name)
    return net.bayes_layers()[i].get_parameter(path)


# ============================================================================ the two steps
def make_case(model: str, prior: str, batch: int, tau0: float, seed: int, device):
    torch.manual_seed(seed)
    arch = make_architecture(model, INPUT_SHAPE, NUM_CLASSES)
    net = BayesNet(arch, make_prior(prior, tau0=tau0)).to(device)
    plain = PlainBayesNet(net, prior, tau0).to(device)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.rand((batch, *INPUT_SHAPE), generator=gen).to(device)
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=gen).to(device)
    idx = torch.randperm(N_TRAIN, generator=gen)[:batch].to(device)
    return net, plain, x, y, idx


def pbc_stepper(net, x, y, idx, lr: float):
    elbo, optim = MeanFieldELBO(), torch.optim.Adam(net.parameters(), lr=lr)

    def step():
        optim.zero_grad(set_to_none=True)
        terms = elbo.terms(net.model, net.guide, x, y, subsample=idx, size=N_TRAIN)
        terms.loss.backward()
        optim.step()

    return step


def plain_stepper(plain, x, y, lr: float):
    optim = torch.optim.Adam(plain.parameters(), lr=lr)

    def step():
        optim.zero_grad(set_to_none=True)
        loss, _, _ = plain.terms(x, y, N_TRAIN)
        loss.backward()
        optim.step()

    return step


# ============================================================================ correctness check
def _grad_diff(net, plain) -> dict:
    """Largest relative difference ‖g_plain − g_pbc‖ / ‖g_pbc‖ over matching parameters."""
    worst, worst_name = 0.0, ""
    for name, p in plain.named_parameters():
        q = _matching_param(net, name)
        if p.grad is None or q.grad is None:
            raise AssertionError(f"missing gradient for {name}")
        rel = ((p.grad - q.grad).norm() / q.grad.norm().clamp_min(1e-30)).item()
        if rel >= worst:
            worst, worst_name = rel, name
    return {"value": worst, "param": worst_name}


def _rel(a, b) -> dict:
    a, b = float(a.detach()), float(b.detach())
    return {"pbc": a, "plain": b, "rel_diff": abs(a - b) / max(abs(a), 1e-30)}


def check(net, plain, x, y, idx, seed: int, rtol: float) -> dict:
    """Same seed → same loss terms and gradients.

    pbc's guide draws ``z`` samples that local reparameterisation never uses; the plain net
    first consumes the same random numbers (``burn``), or not, whichever reproduces pbc's
    draws.  If neither does (pbc changed its order of draws), only the deterministic part is
    compared: the KL term and its gradients.
    """
    def pbc_terms(part):
        net.zero_grad(set_to_none=True)
        torch.manual_seed(seed)
        t = MeanFieldELBO().terms(net.model, net.guide, x, y, subsample=idx, size=N_TRAIN)
        getattr(t, part).backward()
        return t

    def plain_terms(burn, part):
        plain.zero_grad(set_to_none=True)
        torch.manual_seed(seed)
        loss, loglik, kl = plain.terms(x, y, N_TRAIN, burn=burn)
        {"loss": loss, "kl": kl}[part].backward()
        return loss, loglik, kl

    t = pbc_terms("loss")
    res = {}
    for burn in (True, False):
        loss, loglik, kl = plain_terms(burn, "loss")
        res = {"mode": "same draws", "burn_guide_draws": burn,
               "loglik": _rel(t.expected_loglik, loglik), "kl": _rel(t.kl, kl),
               "loss": _rel(t.loss, loss), "grad_max_rel_diff": _grad_diff(net, plain)}
        if check_ok(res, rtol):
            break
    else:
        t = pbc_terms("kl")
        _, _, kl = plain_terms(False, "kl")
        res = {"mode": "kl only (random draws differ)", "kl": _rel(t.kl, kl),
               "grad_max_rel_diff": _grad_diff(net, plain)}
    net.zero_grad(set_to_none=True)
    plain.zero_grad(set_to_none=True)
    return res


def check_ok(res: dict, rtol: float) -> bool:
    return (all(res[k]["rel_diff"] <= rtol for k in ("loglik", "kl", "loss") if k in res)
            and res["grad_max_rel_diff"]["value"] <= rtol * 100)


def check_line(res: dict, ok: bool) -> str:
    parts = [f"{k} {res[k]['pbc']:.6g} vs {res[k]['plain']:.6g} (rel {res[k]['rel_diff']:.1e})"
             for k in ("loglik", "kl", "loss") if k in res]
    g = res["grad_max_rel_diff"]
    parts.append(f"grads max rel {g['value']:.1e} ({g['param']})")
    mode = res["mode"] + (f", guide draws burned: {res['burn_guide_draws']}"
                          if "burn_guide_draws" in res else "")
    return f"check [{mode}]: " + "; ".join(parts) + f" -> {'OK' if ok else 'MISMATCH'}"


# ============================================================================ timing
def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, k: int, device) -> float:
    """Seconds per step over ``k`` consecutive steps."""
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(k):
        step()
    _sync(device)
    return (time.perf_counter() - t0) / k


def summarise(ms: list[float]) -> dict:
    return {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms),
            "all_ms": ms}


def bench_case(model, prior, args, device) -> dict:
    net, plain, x, y, idx = make_case(model, prior, args.batch, args.tau0, args.seed, device)
    res = check(net, plain, x, y, idx, args.seed, args.rtol)
    ok = check_ok(res, args.rtol)
    print(f"[{model} {prior}] " + check_line(res, ok))
    if not ok and not args.no_strict:
        sys.exit(f"check failed for {model} {prior}; pass --no-strict to time anyway")
    pstep, qstep = pbc_stepper(net, x, y, idx, args.lr), plain_stepper(plain, x, y, args.lr)
    times = {"pbc": [], "plain": []}
    with pyro.validation_enabled(False):
        for s in (pstep, qstep):
            for _ in range(args.warmup):
                s()
        for r in range(args.repeats):
            order = (("pbc", pstep), ("plain", qstep))
            for name, s in order if r % 2 == 0 else order[::-1]:
                times[name].append(1e3 * time_steps(s, args.steps, device))
    out = {"model": model, "prior": prior, "check": res, "check_ok": ok,
           "pbc": summarise(times["pbc"]), "plain": summarise(times["plain"])}
    out["ratio"] = out["pbc"]["median_ms"] / out["plain"]["median_ms"]
    out["ratio_of_minima"] = out["pbc"]["min_ms"] / out["plain"]["min_ms"]
    out["overhead_us"] = 1e3 * (out["pbc"]["median_ms"] - out["plain"]["median_ms"])
    for name in ("pbc", "plain"):
        s = out[name]
        print(f"[{model} {prior}] {name:5s} {s['median_ms']:8.3f} ms/step "
              f"(min {s['min_ms']:.3f}, max {s['max_ms']:.3f}; {args.repeats}×{args.steps})")
    print(f"[{model} {prior}] pbc/plain {out['ratio']:.3f} (ratio of minima "
          f"{out['ratio_of_minima']:.3f}; pbc − plain = {out['overhead_us']:.0f} µs/step)")
    return out


# ============================================================================ profiling
def phase_breakdown(net, plain, x, y, idx, args, device, n: int = 100) -> None:
    """Median µs of each phase of pbc's step (and of plain's), over ``n`` steps."""
    from pyro import poutine

    from pbc.bayes.handlers import LocalReparameterization

    elbo = MeanFieldELBO()
    optim = torch.optim.Adam(net.parameters(), lr=args.lr)
    poptim = torch.optim.Adam(plain.parameters(), lr=args.lr)
    kw = {"subsample": idx, "size": N_TRAIN}

    def clock(fn):
        _sync(device)
        t0 = time.perf_counter()
        r = fn()
        _sync(device)
        return r, 1e6 * (time.perf_counter() - t0)

    ph: dict[str, list[float]] = {}

    def add(k, v):
        ph.setdefault(k, []).append(v)

    with pyro.validation_enabled(False):
        for i in range(n + 10):
            optim.zero_grad(set_to_none=True)
            with LocalReparameterization():
                guide_tr, t_g = clock(lambda: poutine.trace(net.guide).get_trace(x, y, **kw))
                model_tr, t_m = clock(lambda gt=guide_tr: poutine.trace(
                    poutine.replay(net.model, trace=gt)).get_trace(x, y, **kw))
            _, t_all = clock(lambda: elbo.terms(net.model, net.guide, x, y, **kw))
            terms, _ = clock(lambda: elbo.terms(net.model, net.guide, x, y, **kw))
            _, t_b = clock(terms.loss.backward)
            _, t_o = clock(optim.step)
            poptim.zero_grad(set_to_none=True)
            (loss, _, _), t_pf = clock(lambda: plain.terms(x, y, N_TRAIN))
            _, t_pb = clock(loss.backward)
            _, t_po = clock(poptim.step)
            if i >= 10:
                add("pbc guide trace", t_g)
                add("pbc model trace (replay + local reparam)", t_m)
                add("pbc MeanFieldELBO forward (traces + loglik + KL loop)", t_all)
                add("pbc  ⇒ loss assembly (forward − traces)", t_all - t_g - t_m)
                add("pbc backward", t_b)
                add("pbc Adam step", t_o)
                add("plain forward (logits + loglik + KL)", t_pf)
                add("plain backward", t_pb)
                add("plain Adam step", t_po)
    print(f"phase breakdown, median µs over {n} steps:")
    for k, v in ph.items():
        print(f"  {k:58s} {statistics.median(v):9.0f}")
    n_sites = {k: sum(1 for s in tr.nodes.values() if s["type"] == "sample")
               for k, tr in (("guide", guide_tr), ("model", model_tr))}
    print(f"  sample sites per step: guide {n_sites['guide']}, model {n_sites['model']}; "
          f"parameters: pbc {sum(1 for _ in net.parameters())}, "
          f"plain {sum(1 for _ in plain.parameters())}")


def profile(args, device) -> None:
    model, prior = args.models[0], args.priors[0]
    net, plain, x, y, idx = make_case(model, prior, args.batch, args.tau0, args.seed, device)
    step = pbc_stepper(net, x, y, idx, args.lr)
    print(f"profile of pbc's step: {model} {prior}, batch {args.batch}, "
          f"threads {torch.get_num_threads()}")
    with pyro.validation_enabled(False):
        for _ in range(args.warmup):
            step()
        phase_breakdown(net, plain, x, y, idx, args, device)
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as tprofile
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                         else [])
        with tprofile(activities=acts) as prof:
            for _ in range(args.steps):
                step()
        print(f"\ntorch.profiler, {args.steps} steps, top {args.top} by self CPU time:")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(args.steps):
            step()
        pr.disable()
    for key in ("tottime", "cumulative"):
        buf = io.StringIO()
        pstats.Stats(pr, stream=buf).sort_stats(key).print_stats(args.top)
        print(f"\ncProfile, {args.steps} steps, top {args.top} by {key}:")
        print("\n".join(line for line in buf.getvalue().splitlines()[6:] if line.strip()))


# ============================================================================ main
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["lenet300", "lenet5"],
                    choices=["lenet300", "lenet5"], help="architectures")
    ap.add_argument("--priors", nargs="+", default=["gnj", "ghs"], choices=["gnj", "ghs"],
                    help="group priors")
    ap.add_argument("--steps", type=int, default=50, help="timed steps per repeat")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per implementation")
    ap.add_argument("--warmup", type=int, default=20, help="untimed steps per implementation")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--batch", type=int, default=100, help="minibatch size")
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    ap.add_argument("--tau0", type=float, default=1e-5, help="horseshoe global scale")
    ap.add_argument("--seed", type=int, default=0, help="init, data and check seed")
    ap.add_argument("--device", default="cpu", help="torch device (cuda is synchronised)")
    ap.add_argument("--rtol", type=float, default=1e-5,
                    help="tolerance of the correctness check (gradients: 100×)")
    ap.add_argument("--no-strict", action="store_true", help="time even if the check fails")
    ap.add_argument("--json", metavar="PATH", help="write every figure to this JSON file")
    ap.add_argument("--profile", action="store_true",
                    help="profile pbc's step for the first model/prior instead of timing")
    ap.add_argument("--top", type=int, default=30, help="rows of the profiles")
    return ap.parse_args(argv)


def setup(args) -> tuple[torch.device, str]:
    """Set a benchmark's threads and Pyro's module-local parameters; return its device and
    the environment line its output starts with."""
    torch.set_num_threads(args.threads)
    pyro.settings.set(module_local_params=True)
    device = torch.device(args.device)
    return device, (f"torch {torch.__version__}, pyro {pyro.__version__}, python "
                    f"{platform.python_version()}, device {device}, threads "
                    f"{torch.get_num_threads()}, batch {args.batch}")


def main(argv=None) -> None:
    args = parse_args(argv)
    device, environment = setup(args)
    print(f"{environment}, warm-up {args.warmup}, {args.repeats} repeats × {args.steps} "
          f"steps (pbc and plain interleaved)")
    if args.profile:
        profile(args, device)
        return
    results = [bench_case(m, p, args, device) for m in args.models for p in args.priors]
    if args.json:
        meta = {"torch": torch.__version__, "pyro": pyro.__version__,
                "python": platform.python_version(), "device": str(device),
                "threads": torch.get_num_threads(), "batch": args.batch, "steps": args.steps,
                "repeats": args.repeats, "warmup": args.warmup}
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "cases": results}, fh, indent=2)
    with contextlib.suppress(BrokenPipeError):
        for r in results:
            print(f"ratio {r['model']} {r['prior']} {r['ratio']:.3f}")


if __name__ == "__main__":
    main()
