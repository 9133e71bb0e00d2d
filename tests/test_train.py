"""Training loop: determinism, resume, divergence, initialisation from a plain run."""

from __future__ import annotations

import json

import pytest
import torch

from pbc.bayes.elbo import ELBOTerms, MeanFieldELBO
from pbc.config import TrainConfig
from pbc.io import ArtefactError, load_torch
from pbc.train import TrainingDiverged, train

TIMING = ("seconds", "eval_seconds")


def _config(idx_dir, out, **kw):
    base = dict(out=str(out), model="lenet300", prior="gnj", data="fashion-mnist",
                data_dir=str(idx_dir), epochs=2, batch_size=50, subset=150, seed=3,
                progress=False, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def _strip(metrics):
    return [{k: v for k, v in m.items() if k not in TIMING} for m in metrics]


def test_artefacts_and_metric_fields(idx_dir, tmp_path):
    res = train(_config(idx_dir, tmp_path / "run", epochs=1))
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt"):
        assert (tmp_path / "run" / name).is_file()
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["config"]["prior"] == "gnj" and cfg["config"]["seed"] == 3
    assert cfg["environment"]["torch"] == torch.__version__
    assert cfg["arch"]["name"] == "lenet300" and cfg["dataset"]["train"] == 150
    (m,) = res.metrics
    assert set(m) >= {"epoch", "elbo", "expected_loglik", "kl", "kl_bits", "train_error",
                      "test_error", "seconds"}
    assert m["kl_bits"] == pytest.approx(m["kl"] / 0.6931471805599453)
    assert m["elbo"] == pytest.approx(m["expected_loglik"] - m["kl"], rel=1e-6)


def test_same_seed_same_metrics(idx_dir, tmp_path):
    a = train(_config(idx_dir, tmp_path / "a"))
    b = train(_config(idx_dir, tmp_path / "b"))
    assert _strip(a.metrics) == _strip(b.metrics)
    c = train(_config(idx_dir, tmp_path / "c", seed=4))
    assert _strip(c.metrics) != _strip(a.metrics)


def _interrupt_at_epoch(monkeypatch, stop_epoch):
    """Make training raise KeyboardInterrupt when it starts epoch ``stop_epoch`` (0-based)."""
    import pbc.train as t

    real = t._train_epoch

    def epoch_or_interrupt(config, net, elbo, optim, x, y, n, epoch):
        if epoch == stop_epoch:
            raise KeyboardInterrupt
        return real(config, net, elbo, optim, x, y, n, epoch)

    monkeypatch.setattr(t, "_train_epoch", epoch_or_interrupt)


@pytest.mark.parametrize("prior", ["gnj", "ghs", "none"])
def test_resume_matches_uninterrupted(idx_dir, tmp_path, prior, monkeypatch):
    full = train(_config(idx_dir, tmp_path / "full", prior=prior, epochs=3))
    with monkeypatch.context() as m:
        _interrupt_at_epoch(m, 1)
        with pytest.raises(KeyboardInterrupt):
            train(_config(idx_dir, tmp_path / "part", prior=prior, epochs=3))
    resumed = train(_config(idx_dir, tmp_path / "part", prior=prior, epochs=3, resume=True))
    assert _strip(resumed.metrics) == _strip(full.metrics)
    sa = load_torch(tmp_path / "full" / "checkpoint.pt")["model"]
    sb = load_torch(tmp_path / "part" / "checkpoint.pt")["model"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resume_refuses_changed_settings(idx_dir, tmp_path):
    train(_config(idx_dir, tmp_path / "r", epochs=1))
    with pytest.raises(ArtefactError, match="prior"):
        train(_config(idx_dir, tmp_path / "r", epochs=2, prior="ghs", resume=True))
    with pytest.raises(ArtefactError, match="started from scratch, now from"):
        train(_config(idx_dir, tmp_path / "r", epochs=1, resume=True, init_from="elsewhere"))


def test_resume_refuses_to_stretch_a_cosine_schedule(idx_dir, tmp_path):
    train(_config(idx_dir, tmp_path / "c", epochs=1))
    with pytest.raises(ArtefactError, match="cosine schedule"):
        train(_config(idx_dir, tmp_path / "c", epochs=2, resume=True))


def test_resume_without_checkpoint_is_an_error(idx_dir, tmp_path):
    with pytest.raises(ArtefactError, match="not found"):
        train(_config(idx_dir, tmp_path / "empty", resume=True))


def test_non_finite_loss_stops_and_keeps_last_checkpoint(idx_dir, tmp_path, monkeypatch):
    out = tmp_path / "nan"
    train(_config(idx_dir, out, epochs=1, lr_schedule="constant"))
    before = (out / "checkpoint.pt").read_bytes()
    real = MeanFieldELBO.terms

    def poisoned(self, *args, **kwargs):
        t = real(self, *args, **kwargs)
        return ELBOTerms(t.loss * float("nan"), t.expected_loglik, t.kl)

    monkeypatch.setattr(MeanFieldELBO, "terms", poisoned)
    with pytest.raises(TrainingDiverged, match=r"epoch 2, step 1"):
        train(_config(idx_dir, out, epochs=3, resume=True, lr_schedule="constant"))
    assert (out / "checkpoint.pt").read_bytes() == before
    assert load_torch(out / "checkpoint.pt")["epoch"] == 1


def test_init_from_plain_run_sets_the_means(idx_dir, tmp_path):
    plain = train(_config(idx_dir, tmp_path / "plain", prior="none", epochs=1))
    bayes = train(_config(idx_dir, tmp_path / "bc", init_from=str(plain.out), epochs=1, lr=1e-12))
    # with a vanishing learning rate the posterior means stay at the plain weights
    w_plain = plain.net.state_dict()["fc1.weight"]
    w_bayes = bayes.net.posterior_mean_state_dict()["fc1.weight"]
    assert torch.allclose(w_bayes, w_plain, atol=1e-6)
    with pytest.raises(ArtefactError, match="deterministic run"):
        train(_config(idx_dir, tmp_path / "bc2", init_from=str(bayes.out), epochs=1))


def test_plain_training_learns_the_toy_task(idx_dir, tmp_path):
    res = train(_config(idx_dir, tmp_path / "learn", prior="none", epochs=8, subset=None,
                        lr=3e-3))
    assert res.metrics[-1]["test_error"] < 0.3  # chance is 0.9


def test_default_variance_bound_and_scale_start_follow_the_starting_point():
    """Louizos et al.'s clip_var (0.04) bounds GNJ always and GHS from scratch; GHS from a
    pretrained net has no bound and starts its scale at the weight scale."""
    from pbc.nets import make_architecture

    def bound(prior, init_from=None, **kw):
        config = TrainConfig(out="x", prior=prior, init_from=init_from, **kw)
        return config.method.max_weight_var(config)

    assert bound("gnj") == bound("gnj", "run") == bound("ghs") == 0.04
    assert bound("ghs", "run") is None and bound("svd") is None
    assert bound("ghs", "run", max_weight_var=0.5) == 0.5
    arch = make_architecture("lenet300", (1, 28, 28), 10)
    configs = [TrainConfig(out="x", prior="ghs", init_from=f) for f in (None, "run")]
    fc1 = [c.method.build(c, arch).bayes_layers()[0] for c in configs]
    assert fc1[0].q_scale.mean().mean().item() == pytest.approx(1.0, rel=0.05)
    assert fc1[1].q_scale.mean().mean().item() == pytest.approx(784 ** -0.5, rel=0.05)
