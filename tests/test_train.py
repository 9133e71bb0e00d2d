"""Training loop: metrics, determinism, resume, divergence, initialisation from a plain run.

The one home of the training loop's reliability behaviours, through the library and the
command line alike: the same seed gives the same metrics; a run resumed after an interrupt or
a SIGKILL equals an uninterrupted one; a resume that would change the run is refused; a
non-finite loss stops training and keeps the last good checkpoint.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import fresh_train, make_idx_dataset, one_line_error, tiny_config, tiny_train_args

import pbc
from pbc.bayes.elbo import ELBOTerms, MeanFieldELBO
from pbc.cli import main
from pbc.config import TrainConfig
from pbc.io import ArtefactError, load_torch
from pbc.rundir import load_trained
from pbc.train import TrainingDiverged, learning_rate, train

TIMING = ("seconds", "eval_seconds")
REPO = pathlib.Path(pbc.__file__).parent.parent


def _config(data_dir, out, **kw):
    base = dict(out=str(out), model="lenet300", prior="gnj", data="fashion-mnist",
                data_dir=str(data_dir), epochs=2, batch_size=50, subset=150, seed=3,
                progress=False, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def _cli_args(config: TrainConfig, *extra) -> list[str]:
    """The ``pbc train`` command line of a :func:`_config` record."""
    return ["train", "--model", config.model, "--prior", config.prior, "--data", config.data,
            "--data-dir", config.data_dir, "--epochs", str(config.epochs), "--batch-size",
            str(config.batch_size), "--subset", str(config.subset), "--seed", str(config.seed),
            "--lr-schedule", config.lr_schedule, "--threads", "1", "--no-progress",
            "--out", config.out, *extra]


def _strip(metrics):
    return [{k: v for k, v in m.items() if k not in TIMING} for m in metrics]


def _strip_timing(metrics_path: pathlib.Path) -> list[str]:
    """metrics.jsonl lines re-serialised without the wall-clock fields."""
    return [json.dumps({k: v for k, v in json.loads(line).items() if k not in TIMING})
            for line in metrics_path.read_text().splitlines() if line.strip()]


def _same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_data):
    """``reference(prior)``: one uninterrupted three-epoch run (seed 3) per prior, trained
    once for this module: what the determinism and resume tests compare against (read only)."""
    root, done = tmp_path_factory.mktemp("reference"), {}

    def get(prior):
        if prior not in done:
            done[prior] = fresh_train(_config(tiny_data, root / prior, prior=prior, epochs=3))
        return done[prior]

    return get


def test_artefacts_and_metric_fields(tiny_data, tmp_path):
    res = train(_config(tiny_data, tmp_path / "run", epochs=1))
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt"):
        assert (tmp_path / "run" / name).is_file()
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["config"]["prior"] == "gnj" and cfg["config"]["seed"] == 3
    assert cfg["environment"]["torch"] == torch.__version__
    assert cfg["arch"]["name"] == "lenet300" and cfg["dataset"]["train"] == 135 \
        and cfg["dataset"]["val"] == 15
    (m,) = res.metrics
    assert set(m) >= {"epoch", "elbo", "expected_loglik", "kl", "kl_bits", "train_error",
                      "val_error", "test_error", "seconds"}
    assert m["kl_bits"] == pytest.approx(m["kl"] / 0.6931471805599453)
    assert m["elbo"] == pytest.approx(m["expected_loglik"] - m["kl"], rel=1e-6)


# ----------------------------------------------------------------------------- determinism
def test_same_seed_same_metrics_other_seed_differs(reference, tiny_data, tmp_path, cpu_threads):
    """The library and the command line, given the same settings and seed, write the same
    metrics byte for byte; another seed changes them."""
    a = reference("gnj")
    config = _config(tiny_data, tmp_path / "b", epochs=3)
    assert main(_cli_args(config)) == 0
    b = _strip_timing(tmp_path / "b" / "metrics.jsonl")
    assert len(b) == 3
    assert "\n".join(b).encode() == "\n".join(_strip_timing(a.out / "metrics.jsonl")).encode()
    assert [json.loads(line) for line in b] == _strip(a.metrics)
    c = train(_config(tiny_data, tmp_path / "c", epochs=3, seed=4))
    assert _strip(c.metrics) != _strip(a.metrics)
    assert _strip_timing(tmp_path / "c" / "metrics.jsonl") != b


# ----------------------------------------------------------------------------- resume
def _interrupt_at_epoch(monkeypatch, stop_epoch):
    """Make training raise KeyboardInterrupt when it starts epoch ``stop_epoch`` (0-based)."""
    import pbc.train as t

    real = t._train_epoch
    signature = inspect.signature(real)

    def epoch_or_interrupt(*args, **kwargs):
        if signature.bind(*args, **kwargs).arguments["epoch"] == stop_epoch:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(t, "_train_epoch", epoch_or_interrupt)


@pytest.mark.parametrize("prior", ["gnj", "ghs", "none"])
def test_resume_matches_uninterrupted(reference, tiny_data, tmp_path, prior, monkeypatch):
    full = reference(prior)
    with monkeypatch.context() as m:
        _interrupt_at_epoch(m, 1)
        with pytest.raises(KeyboardInterrupt):
            train(_config(tiny_data, tmp_path / "part", prior=prior, epochs=3))
    resumed = train(_config(tiny_data, tmp_path / "part", prior=prior, epochs=3, resume=True))
    assert _strip(resumed.metrics) == _strip(full.metrics)
    sa = load_torch(full.out / "checkpoint.pt")["model"]
    sb = load_torch(tmp_path / "part" / "checkpoint.pt")["model"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path, cpu_threads):
    """A ``pbc train`` process killed mid-epoch resumes (``--resume``) to the very run an
    uninterrupted training gives (trained in-process: the library and the command line give
    the same run, see the determinism test)."""
    data = make_idx_dataset(tmp_path / "data", n_train=600, n_test=100)
    full, part = tmp_path / "full", tmp_path / "part"
    config = TrainConfig(out=str(full), model="lenet300", prior="gnj", data="fashion-mnist",
                         data_dir=str(data), subset=600, batch_size=20, epochs=4, threads=1,
                         lr_schedule="cosine", progress=False)
    args = _cli_args(dataclasses.replace(config, out=str(part)))
    victim = subprocess.Popen([sys.executable, "-m", "pbc.cli", *args], cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = part / "metrics.jsonl"
    try:
        deadline = time.monotonic() + 120
        lines: list[str] = []
        while time.monotonic() < deadline and victim.poll() is None:
            if metrics.exists():
                lines = [ln for ln in metrics.read_text().splitlines() if ln.strip()]
                if 1 <= len(lines) <= 2:
                    break
            time.sleep(0.005)
        assert lines and victim.poll() is None, "the run ended before it could be killed"
        epoch_seconds = json.loads(lines[-1])["seconds"]
        time.sleep(0.4 * epoch_seconds)             # well inside the next epoch
        os.kill(victim.pid, signal.SIGKILL)
        assert victim.wait(timeout=30) == -signal.SIGKILL
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    killed_raw = [ln for ln in metrics.read_text().splitlines() if ln.strip()]
    assert 1 <= len(killed_raw) < 4, "the kill landed after training finished"
    done = load_torch(part / "checkpoint.pt")["epoch"]
    assert done in (len(killed_raw), len(killed_raw) - 1) and done < 4

    assert main([*args, "--resume"]) == 0
    fresh_train(config)

    assert _strip_timing(part / "metrics.jsonl") == _strip_timing(full / "metrics.jsonl")
    # the epochs finished before the kill were kept, not retrained (their timings survive)
    resumed_raw = (part / "metrics.jsonl").read_text().splitlines()
    assert resumed_raw[:done] == killed_raw[:done]
    assert len(_strip_timing(full / "metrics.jsonl")) == 4
    a, b = load_torch(full / "checkpoint.pt"), load_torch(part / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == 4
    assert _same_tensors(a["model"], b["model"])
    assert torch.equal(a["rng"], b["rng"])


def test_resume_refuses_changed_settings(trained_runs, tiny_data, tmp_path):
    run = trained_runs.copy(tmp_path / "r")                  # one epoch, tiny_config
    with pytest.raises(ArtefactError, match="prior"):
        train(tiny_config(run, tiny_data, epochs=2, prior="ghs", resume=True))
    with pytest.raises(ArtefactError, match="started from scratch, now from"):
        train(tiny_config(run, tiny_data, resume=True, init_from="elsewhere"))


def test_resume_extends_a_constant_schedule_but_not_a_cosine_one(trained_runs, tiny_data,
                                                                 tmp_path):
    constant = trained_runs.copy(tmp_path / "constant", lr_schedule="constant")
    args = tiny_train_args(tiny_data, constant, "--resume", "--lr-schedule", "constant")
    args[args.index("--epochs") + 1] = "2"
    assert main(args) == 0
    assert len((constant / "metrics.jsonl").read_text().splitlines()) == 2
    cosine = trained_runs.copy(tmp_path / "cosine", lr_schedule="cosine")
    with pytest.raises(ArtefactError, match="cosine schedule"):
        train(tiny_config(cosine, tiny_data, epochs=2, lr_schedule="cosine", resume=True))


@pytest.mark.parametrize("schedule, expected", [
    ("constant", [1.0, 1.0, 1.0, 1.0]),
    ("cosine", [1.0, 0.5 * (1 + math.cos(math.pi * 0.5)), 0.5 * (1 + math.cos(math.pi * 0.9)),
                0.5 * (1 + math.cos(math.pi * 0.95))]),
    ("cooldown", [1.0, 1.0, 1.0, 0.5]),     # linear to 0 over the last tenth of the run
])
def test_learning_rate_schedules(schedule, expected):
    """The rate at progress 0, ½, 0.9 and 0.95 of a 20-epoch run (10 steps an epoch)."""
    config = TrainConfig(out="unused", epochs=20, lr=2e-3, lr_schedule=schedule)
    got = [learning_rate(config, epoch, step, 10) for epoch, step in
           [(0, 0), (10, 0), (18, 0), (19, 0)]]
    assert got == pytest.approx([2e-3 * e for e in expected], rel=1e-12)


def test_resume_refuses_a_new_length_for_a_cooldown_schedule(trained_runs, tiny_data,
                                                              tmp_path):
    run = trained_runs.copy(tmp_path / "cooldown", lr_schedule="cooldown")
    with pytest.raises(ArtefactError, match="cooldown schedule was planned for 1 epochs"):
        train(tiny_config(run, tiny_data, epochs=2, lr_schedule="cooldown", resume=True))


def test_resume_without_checkpoint_is_an_error(tiny_data, tmp_path):
    with pytest.raises(ArtefactError, match="not found"):
        train(_config(tiny_data, tmp_path / "empty", resume=True))


# ----------------------------------------------------------------------------- divergence
def test_non_finite_loss_is_one_line_exit_1_and_keeps_the_last_checkpoint(
        trained_runs, tiny_data, tmp_path, capsys, cpu_threads, monkeypatch):
    """Epoch 1 trained normally; from epoch 2 the loss is NaN.  The command line says so in
    one line (exit 1), ``--debug`` raises, and the epoch-1 artefacts stay as they were."""
    out = trained_runs.copy(tmp_path / "nan", lr_schedule="constant")
    before = {name: (out / name).read_bytes() for name in ("checkpoint.pt", "metrics.jsonl")}
    real = MeanFieldELBO.terms

    def poisoned(self, *args, **kwargs):
        t = real(self, *args, **kwargs)
        return ELBOTerms(t.loss * float("nan"), t.expected_loglik, t.kl)

    monkeypatch.setattr(MeanFieldELBO, "terms", poisoned)
    args = tiny_train_args(tiny_data, out, "--resume", "--lr-schedule", "constant")
    args[args.index("--epochs") + 1] = "3"
    assert main(args) == 1
    one_line_error(capsys.readouterr().err, "non-finite loss", "epoch 2, step 1")
    with pytest.raises(TrainingDiverged, match=r"epoch 2, step 1"):
        main(["--debug", *args])
    for name, blob in before.items():
        assert (out / name).read_bytes() == blob, name
    assert load_torch(out / "checkpoint.pt")["epoch"] == 1
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_divergence_subprocess_huge_lr(tiny_data, tmp_path):
    """A real blow-up (lr 10³⁰) in a real process: exit 1, one line, no checkpoint."""
    out = tmp_path / "run"
    args = tiny_train_args(tiny_data, out, "--lr", "1e30")
    args[args.index("--subset") + 1], args[args.index("--batch-size") + 1] = "100", "20"
    proc = subprocess.run([sys.executable, "-m", "pbc.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    line = one_line_error(proc.stderr, "non-finite loss")
    assert re.search(r"epoch 1, step \d+", line), line
    assert not (out / "checkpoint.pt").exists()


# ----------------------------------------------------------------------------- init from
def test_init_from_plain_run_sets_the_means(trained_runs, tiny_data, tmp_path):
    plain = trained_runs.path("lenet300", "none")            # read only
    bayes = train(_config(tiny_data, tmp_path / "bc", init_from=str(plain), epochs=1, lr=1e-12))
    # with a vanishing learning rate the posterior means stay at the plain weights
    w_plain = load_trained(plain).net.state_dict()["fc1.weight"]
    w_bayes = bayes.net.posterior_mean_state_dict()["fc1.weight"]
    assert torch.allclose(w_bayes, w_plain, atol=1e-6)
    with pytest.raises(ArtefactError, match="deterministic run"):
        train(_config(tiny_data, tmp_path / "bc2", init_from=str(bayes.out), epochs=1))


def test_plain_training_learns_the_toy_task(tiny_data, tmp_path):
    res = train(_config(tiny_data, tmp_path / "learn", prior="none", epochs=8, subset=None,
                        lr=3e-3))
    assert res.metrics[-1]["test_error"] < 0.3  # chance is 0.9


def test_default_variance_bound_and_scale_start_follow_the_starting_point():
    """A bound on the layer with the most weights: GROUP_SCRATCH_WEIGHT_VAR under GNJ and GHS
    from scratch, Louizos et al.'s clip_var (0.04) under GNJ from a pretrained net; GHS from a
    pretrained net has no bound and starts its scale at the weight scale.  A run saved when
    ``None`` meant 0.04 on every layer resumes with that."""
    from pbc import methods
    from pbc.defaults import CLIP_VAR, GROUP_SCRATCH_WEIGHT_VAR
    from pbc.nets import make_architecture

    lenet300, lenet5 = (make_architecture(m, (1, 28, 28), 10) for m in ("lenet300", "lenet5"))

    def bound(prior, init_from=None, arch=lenet300, saved=None, **kw):
        config = TrainConfig(out="x", prior=prior, init_from=init_from, **kw)
        method = methods.get(prior)
        return method.settle(config, method.build(config, arch), saved).max_weight_var

    assert CLIP_VAR == 0.04 and GROUP_SCRATCH_WEIGHT_VAR < CLIP_VAR
    assert bound("gnj") == bound("ghs") == {"fc1": GROUP_SCRATCH_WEIGHT_VAR}
    assert bound("gnj", "run") == {"fc1": CLIP_VAR}
    assert bound("gnj", arch=lenet5) == {"fc1": GROUP_SCRATCH_WEIGHT_VAR}   # 400,000 of 431,080
    assert bound("ghs", "run") == {} and bound("svd") is None
    assert bound("ghs", "run", max_weight_var=0.5) == 0.5
    # resuming: the bound the run recorded; None there is the earlier default
    assert bound("gnj", saved={"max_weight_var": {"fc2": 0.1}}) == {"fc2": 0.1}
    assert bound("gnj", saved={"max_weight_var": None}) == bound("ghs", saved={}) == 0.04
    assert bound("ghs", "run", saved={"max_weight_var": None}) == {}
    configs = [TrainConfig(out="x", prior="ghs", init_from=f) for f in (None, "run")]
    fc1 = [methods.get("ghs").build(c, lenet300).bayes_layers()[0] for c in configs]
    assert fc1[0].q_scale.mean().mean().item() == pytest.approx(1.0, rel=0.05)
    assert fc1[1].q_scale.mean().mean().item() == pytest.approx(784 ** -0.5, rel=0.05)


def test_the_learning_rate_a_run_names_none_for_is_its_methods():
    """BC-GNJ and BC-GHS from scratch train at GROUP_SCRATCH_LR; from a plain net, Sparse VD and
    the plain methods at LR; a rate that is named stays; a resumed run keeps its saved rate."""
    from pbc import methods
    from pbc.defaults import GROUP_SCRATCH_LR, LR
    from pbc.nets import make_architecture

    arch = make_architecture("lenet300", (1, 28, 28), 10)

    def rate(prior, init_from=None, saved=None, **kw):
        config = TrainConfig(out="x", prior=prior, init_from=init_from, **kw)
        method = methods.get(prior)
        return method.settle(config, method.build(config, arch), saved).lr

    assert GROUP_SCRATCH_LR != LR
    assert rate("gnj") == rate("ghs") == GROUP_SCRATCH_LR
    assert rate("gnj", "run") == rate("ghs", "run") == rate("svd") == rate("svd", "run") == LR
    assert rate("none") == rate("sws", "run") == rate("dc", "run") == LR
    assert rate("gnj", lr=2e-4) == rate("none", lr=2e-4) == 2e-4
    assert rate("gnj", saved={"lr": 0.001}) == 0.001 == rate("none", saved={"lr": 0.001})


def test_a_run_records_the_rate_it_trained_at_and_resumes_at_it(trained_runs, tiny_data,
                                                                  tmp_path):
    """config.json holds the method's rate, which Adam used; resuming without ``--lr`` keeps
    it, and another rate is refused."""
    from pbc.defaults import GROUP_SCRATCH_LR

    run = trained_runs.copy(tmp_path / "r", lr_schedule="constant")
    assert json.loads((run / "config.json").read_text())["config"]["lr"] == GROUP_SCRATCH_LR
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    assert {g["lr"] for g in ckpt["optim"]["param_groups"]} == {GROUP_SCRATCH_LR}
    with pytest.raises(ArtefactError, match="lr was 0.005, now 0.001"):
        train(tiny_config(run, tiny_data, epochs=2, lr=1e-3, lr_schedule="constant",
                          resume=True))
    res = train(tiny_config(run, tiny_data, epochs=2, lr_schedule="constant", resume=True))
    assert len(res.metrics) == 2 and load_trained(run).config.lr == GROUP_SCRATCH_LR


def test_a_run_records_its_bound_and_one_saved_without_it_resumes_with_every_layer_bound(
        trained_runs, tiny_data, tmp_path):
    """config.json names the bound a run trained with; a run whose config.json holds
    ``null`` (saved when that meant 0.04 on every layer) resumes bounding every layer and is
    refused under another bound.  (A constant rate, so that the run can be extended.)"""
    from pbc.defaults import GROUP_SCRATCH_WEIGHT_VAR

    run = trained_runs.copy(tmp_path / "r", lr_schedule="constant")
    saved = json.loads((run / "config.json").read_text())
    assert saved["config"]["max_weight_var"] == {"fc1": GROUP_SCRATCH_WEIGHT_VAR}
    saved["config"]["max_weight_var"] = None
    (run / "config.json").write_text(json.dumps(saved))
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    for key, value in ckpt["model"].items():   # every σ² at 1: only a bound brings it down
        if key.endswith("w_logvar"):
            value.fill_(0.0)
    torch.save(ckpt, run / "checkpoint.pt")
    with pytest.raises(ArtefactError, match="max_weight_var was 0.04, now \\{'fc2': 0.1\\}"):
        train(tiny_config(run, tiny_data, epochs=2, max_weight_var={"fc2": 0.1},
                          lr_schedule="constant", resume=True))
    res = train(tiny_config(run, tiny_data, epochs=2, lr_schedule="constant", resume=True))
    assert len(res.metrics) == 2
    assert [layer.w_logvar.exp().max().item() for layer in res.net.bayes_layers()] == \
        pytest.approx([0.04] * 3)
    assert load_trained(run).config.max_weight_var == 0.04


def test_lenet5_relu_is_lenet5_with_a_relu_after_each_convolution():
    from pbc.nets import make_architecture

    plain, relu = (make_architecture(m, (1, 28, 28), 10) for m in ("lenet5", "lenet5-relu"))
    assert relu.name == "lenet5-relu" and relu.weighted_layers() == plain.weighted_layers()
    kinds = [s.kind for s in relu.layers]
    assert kinds[:6] == ["conv", "relu", "maxpool", "conv", "relu", "maxpool"]
    assert [s for s in relu.layers if s.name not in ("relu_c1", "relu_c2")] == \
        list(plain.layers)


def test_a_per_layer_variance_bound_clips_only_the_layers_it_names():
    """``--max-weight-var fc1=0.04``: fc1's σ² is projected onto (0, 0.04], fc2 and fc3 are
    left alone; a layer the network does not have is refused."""
    from pbc import methods
    from pbc.cli import build_parser
    from pbc.commands import train_config
    from pbc.nets import make_architecture

    args = build_parser().parse_args(["train", "--out", "x", "--max-weight-var", "fc1=0.04"])
    config = train_config(args, "gnj")
    assert config.max_weight_var == {"fc1": 0.04}
    args = build_parser().parse_args(["train", "--out", "x", "--max-weight-var", "0.5"])
    assert train_config(args, "gnj").max_weight_var == 0.5
    arch = make_architecture("lenet300", (1, 28, 28), 10)
    method = methods.get("gnj")
    net = method.build(config, arch)
    for layer in net.bayes_layers():
        layer.w_logvar.data.fill_(0.0)
    method.after_step(net, config)
    assert [layer.w_logvar.max().exp().item() for layer in net.bayes_layers()] == \
        pytest.approx([0.04, 1.0, 1.0])
    with pytest.raises(ValueError, match="unknown layers \\['fc9'\\]"):
        method.build(TrainConfig(out="x", max_weight_var={"fc9": 0.04}), arch)
    with pytest.raises(ValueError, match="positive"):
        TrainConfig(out="x", max_weight_var={"fc1": -1.0}).validate()


@pytest.mark.parametrize("prior, per_layer", [("gnj", 1), ("ghs", 4), ("svd", 0)])
def test_group_scale_log_variances_learn_at_their_own_rate(prior, per_layer):
    """Adam's groups: the log-variances of every group scale's q(z) — and nothing else — take
    ``scale_var_lr`` times the learning rate; every parameter is in exactly one group."""
    from pbc import methods
    from pbc.nets import make_architecture

    config = TrainConfig(out="x", prior=prior, scale_var_lr=7.0)
    net = methods.get(prior).build(config, make_architecture("lenet300", (1, 28, 28), 10))
    groups = methods.get(prior).param_groups(net, config)
    assert [g["lr_scale"] for g in groups] == [1.0, 7.0]
    fast = groups[1]["params"]
    assert len(fast) == 3 * per_layer
    expected = {id(p) for name, p in net.named_parameters()
                if "scale_guide" in name and name.endswith("logvar")}
    assert {id(p) for p in fast} == expected
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in net.parameters())


def test_a_run_saved_before_the_scale_learning_rate_resumes_at_one_rate(trained_runs,
                                                                        tiny_data, tmp_path):
    """A run whose config.json predates ``scale_var_lr`` trained at one rate: it resumes at
    one rate and is refused under another."""
    run = trained_runs.copy(tmp_path / "r", lr_schedule="constant", scale_var_lr=1.0)
    saved = json.loads((run / "config.json").read_text())
    del saved["config"]["scale_var_lr"]
    (run / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ArtefactError, match="scale_var_lr was 1.0, now 10.0"):
        train(tiny_config(run, tiny_data, epochs=2, lr_schedule="constant", scale_var_lr=10.0,
                          resume=True))
    train(tiny_config(run, tiny_data, epochs=2, lr_schedule="constant", resume=True))
    assert load_trained(run).config.scale_var_lr == 1.0
