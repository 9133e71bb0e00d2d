"""Deep Compression (``dc``) and soft weight-sharing (``sws``): maths by hand, CLI smoke runs."""

from __future__ import annotations

import json
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch.distributions import kl_divergence

from pbc.bayes.mixture import Components, GaussianMixtureWeights
from pbc.cli import main
from pbc.methods.dc import MaskedNetwork, magnitude_mask, scheduled_keep
from pbc.methods.sws import SoftSharingNet, merge_components, quantise_to_components
from pbc.nets import lenet300
from pbc.rundir import load_trained


# ---------------------------------------------------------------------------- Deep Compression
def test_magnitude_mask_keeps_the_largest_alive_weights_and_never_revives():
    w = torch.tensor([[0.5, -0.1, 0.05], [-0.9, 0.2, 0.01]])
    alive = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 1.0]])   # −0.9 was pruned before
    m = magnitude_mask(w, alive, keep=0.5)                       # 3 of 6
    np.testing.assert_array_equal(m.numpy(), [[1, 1, 0], [0, 1, 0]])
    assert magnitude_mask(w, alive, keep=1.0).sum() == 5        # at most the alive ones


def test_pruning_schedule_reaches_the_target_at_half_the_run():
    keeps = [scheduled_keep(0.1, e, 10) for e in range(10)]
    assert keeps[0] == pytest.approx(1 - 0.9 / 5) and keeps[4] == pytest.approx(0.1)
    assert keeps[4:] == [pytest.approx(0.1)] * 6
    assert all(a >= b for a, b in zip(keeps, keeps[1:], strict=False))


@torch.no_grad()
def test_masked_network_prunes_per_layer_and_masked_weights_stay_zero():
    torch.manual_seed(0)
    net = MaskedNetwork(lenet300())
    for e in range(4):
        net.before_epoch(e, 4)
    for name, target in net.targets.items():
        w = getattr(net.body, name).weight
        assert int((w != 0).sum()) == round(target * w.numel())
    w = net.body.fc1.weight
    w.add_(1.0)                     # an optimiser step that moved everything
    net.after_step()
    assert int((w != 0).sum()) == round(0.08 * w.numel())
    state = net.posterior_mean_state_dict()
    assert torch.equal(state["fc1.weight"], w)


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory, tiny_data):
    """A plain lenet5 trained fast enough (lr 1e-2) that its weights are far from init;
    trained once for this module (the tests only start from it)."""
    out = tmp_path_factory.mktemp("baselines") / "plain"
    threads = torch.get_num_threads()
    try:
        assert main(["pretrain", "--model", "lenet5", "--data-dir", str(tiny_data), "--epochs",
                     "3", "--subset", "200", "--batch-size", "20", "--lr", "1e-2", "--threads",
                     "1", "--no-progress", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def _train_compress_evaluate(prior, plain_run, idx_dir, tmp_path, capsys, *extra):
    out = tmp_path / prior
    assert main(["train", "--prior", prior, "--model", "lenet5", "--data-dir", str(idx_dir),
                 "--epochs", "2", "--subset", "200", "--batch-size", "20", "--threads", "1",
                 "--no-progress", "--init-from", str(plain_run), "--out", str(out),
                 *extra]) == 0
    assert main(["compress", str(out)]) == 0
    rec = json.loads((out / "compression.json").read_text())
    assert rec["prior"] == prior
    assert rec["packed_bytes"] == (out / "model.pbcz").stat().st_size == rec["accounted_bytes"]
    assert rec["error"]["packed"] == rec["error"]["quantised"]
    capsys.readouterr()
    assert main(["evaluate", str(out / "model.pbcz"), "--data-dir", str(idx_dir)]) == 0
    assert f"test error {rec['error']['packed']:.4f}" in capsys.readouterr().out
    return out, rec


def test_dc_cli_prunes_to_han_et_al_fractions_and_packs_kmeans_codes(plain_run, tiny_data,
                                                                     tmp_path, capsys):
    out, rec = _train_compress_evaluate("dc", plain_run, tiny_data, tmp_path, capsys)
    targets = {"conv1": 0.66, "conv2": 0.12, "fc1": 0.08, "fc2": 0.19}
    for row in rec["layers"]:
        assert row["weights_nonzero"] <= round(targets[row["name"]] * row["weights_total"])
        assert row["codebook_size"] <= 2 ** row["bits"] + 1
        assert row["bits"] == (8 if row["kind"] == "conv" else 5)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    n_w = sum(r["weights_total"] for r in rec["layers"])
    kept = sum(round(targets[r["name"]] * r["weights_total"]) for r in rec["layers"])
    assert metrics[-1]["kept_fraction"] == pytest.approx(kept / n_w)


def test_dc_needs_a_plain_run_to_start_from(tiny_data, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["train", "--prior", "dc", "--data-dir", str(tiny_data), "--out",
              str(tmp_path / "x")])
    assert e.value.code == 2


# ---------------------------------------------------------------------------- soft sharing
def _toy_mixture():
    log_pi = torch.tensor([0.9, 0.06, 0.04], dtype=torch.double).log()
    mu = torch.tensor([0.0, -0.3, 0.25], dtype=torch.double)
    lam = torch.tensor([400.0, 100.0, 50.0], dtype=torch.double)
    return log_pi, mu, lam


def test_mixture_log_density_and_gradients_match_the_formula():
    logits, mu, lam = (t.clone().requires_grad_() for t in _toy_mixture())
    log_pi = torch.log_softmax(logits, 0)
    w = torch.tensor([[0.01, -0.28], [0.3, 0.1]], dtype=torch.double, requires_grad=True)
    got = GaussianMixtureWeights(log_pi, mu, lam, w.shape).log_prob(w)
    hand = sum(math.log(sum(math.exp(lp) * math.sqrt(la / (2 * math.pi))
                            * math.exp(-0.5 * la * (x - m) ** 2)
                            for lp, m, la in zip(log_pi.tolist(), mu.tolist(), lam.tolist(),
                                                 strict=True)))
               for x in w.flatten().tolist())
    assert got.item() == pytest.approx(hand, rel=1e-12)
    ref = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=logits),
        torch.distributions.Normal(mu, lam.rsqrt())).log_prob(w).sum()
    for a, b in zip(torch.autograd.grad(got, (w, logits, mu, lam)),
                    torch.autograd.grad(ref, (w, logits, mu, lam)), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_point_estimate_kl_is_minus_the_log_prior():
    log_pi, mu, lam = _toy_mixture()
    w = torch.tensor([0.02, -0.31, 0.2], dtype=torch.double)
    p = GaussianMixtureWeights(log_pi, mu, lam, w.shape)
    assert kl_divergence(dist.Delta(w, event_dim=1), p).item() == pytest.approx(
        -p.log_prob(w).item())
    gamma = dist.Gamma(torch.tensor(5000.0), torch.tensor(2.0))
    lam0 = torch.tensor(2400.0)
    assert kl_divergence(dist.Delta(lam0), gamma).item() == pytest.approx(
        -gamma.log_prob(lam0).item())


def test_sws_elbo_is_loglik_minus_tau_times_log_prior():
    pyro.set_rng_seed(0)
    net = SoftSharingNet(lenet300())
    from pbc.bayes.elbo import MeanFieldELBO

    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    # τ weighs the complexity through the guide's scale, as the train stage does
    terms = MeanFieldELBO().terms(net.model, poutine.scale(net.guide, scale=0.005), x, y,
                                  subsample=torch.arange(4), size=40)
    logits = net(x)
    loglik = 10 * torch.distributions.Categorical(logits=logits).log_prob(y).sum()
    prior = net.prior
    log_prior = prior.hyperprior().log_prob(prior.precision())
    for name in net.weighted:
        w = getattr(net.body, name).weight
        log_prior = log_prior + prior.distribution(w.shape).log_prob(w)
    assert terms.expected_loglik.item() == pytest.approx(loglik.item(), rel=1e-5)
    assert terms.kl.item() == pytest.approx(0.005 * -log_prior.item(), rel=1e-5)
    assert terms.loss.item() == pytest.approx(-(loglik - 0.005 * -log_prior).item(), rel=1e-5)


@pytest.mark.parametrize("zero_rate", [2.0, 0.01])
def test_zero_component_precision_optimum_is_bounded_by_its_hyperprior_rate(zero_rate):
    """With every weight in the zero spike, the complexity term is stationary in λ_0 at
    ``(n0/2 + α0 − 1)/(Σw²/2 + β0)``: the bound that ``--sws-zero-rate`` (β0) moves."""
    net = SoftSharingNet(lenet300(), zero_rate=zero_rate).double()
    prior = net.prior
    assert prior.gamma_rate[0].item() == pytest.approx(zero_rate)
    # the start does not depend on the rate: σ ≈ 0.02 for every component
    assert prior.precision()[0].item() == pytest.approx(4999 / 2)
    w = 1e-4 * torch.randn(20_000, dtype=torch.double)
    alpha0 = prior.gamma_concentration[0].item()
    optimum = (w.numel() / 2 + alpha0 - 1) / ((w * w).sum().item() / 2 + zero_rate)
    with torch.no_grad():
        prior.log_precision[0] = math.log(optimum)

    def objective():
        lam = prior.precision()
        return (prior.distribution(w.shape, lam).log_prob(w)
                + prior.hyperprior().log_prob(lam))

    (grad,) = torch.autograd.grad(objective(), prior.log_precision)
    # ≈ 0 up to the responsibility (≈ 1e-4 in all) that the other components take
    assert abs(grad[0].item()) < 1e-3 * w.numel() / 2
    for factor, sign in ((0.9, 1.0), (1.1, -1.0)):      # ascent direction points back to it
        with torch.no_grad():
            prior.log_precision[0] = math.log(optimum * factor)
        (grad,) = torch.autograd.grad(objective(), prior.log_precision)
        assert sign * grad[0].item() > 0


def test_merging_joins_close_components_and_keeps_zero_at_zero():
    c = Components(pi=np.array([0.9, 0.03, 0.03, 0.02, 0.02]),
                   mean=np.array([0.0, 0.001, -0.2, 0.3, 0.302]),
                   var=np.array([1e-4, 1e-4, 1e-4, 1e-4, 1e-4]))
    m = merge_components(c, merge_kl=0.1)
    # 0.001 joins zero (KL 0.01), 0.3/0.302 join (KL 0.04), −0.2 stays apart
    assert m.pi.size == 3
    np.testing.assert_allclose(m.pi, [0.93, 0.03, 0.04])
    np.testing.assert_allclose(m.mean, [0.0, -0.2, 0.301])
    # moment matching: two equal-weight N(0.3, v), N(0.302, v) → var v + 0.001²
    assert m.var[2] == pytest.approx(1e-4 + 1e-6)


def test_quantisation_sends_each_weight_to_its_most_responsible_mean():
    c = Components(pi=np.array([0.98, 0.01, 0.01]), mean=np.array([0.0, -0.2, 0.3]),
                   var=np.array([0.02**2, 0.02**2, 0.02**2]))
    w = np.array([[0.01, -0.19, 0.29], [0.04, -0.12, 0.2]], np.float32)
    codes, book = quantise_to_components(w, c)
    np.testing.assert_array_equal(book, np.float32([0.0, -0.2, 0.3]))
    np.testing.assert_array_equal(book[codes], np.float32([[0, -0.2, 0.3], [0, -0.2, 0.3]]))
    assert codes[0, 0] == 0 and codes[1, 0] == 0


def test_sws_cli_smoke(plain_run, tiny_data, tmp_path, capsys):
    out, rec = _train_compress_evaluate("sws", plain_run, tiny_data, tmp_path, capsys,
                                        "--sws-zero-rate", "0.01", "--sws-rate", "0.001")
    net = load_trained(out).net
    # the hyperprior rates reach the net that a later stage rebuilds from config.json
    rates = net.prior.gamma_rate.tolist()
    assert rates[0] == pytest.approx(0.01) and rates[1:] == pytest.approx([0.001] * 16)
    n_comp = merge_components(net.prior.components()).pi.size
    for row in rec["layers"]:
        assert row["codebook_size"] <= n_comp
        assert row["bits"] == math.ceil(math.log2(n_comp))


def test_dc_keep_overrides_han_et_al_per_layer():
    from pbc.methods.dc import keep_fractions

    arch = lenet300()
    assert keep_fractions(arch) == {"fc1": 0.08, "fc2": 0.09, "fc3": 0.26}
    assert keep_fractions(arch, {"fc1": 0.15}) == {"fc1": 0.15, "fc2": 0.09, "fc3": 0.26}
    with pytest.raises(ValueError, match="unknown layers"):
        keep_fractions(arch, {"conv9": 0.5})
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        keep_fractions(arch, {"fc1": 1.5})
    with pytest.raises(SystemExit) as e:
        main(["train", "--prior", "dc", "--dc-keep", "fc1", "--out", "x"])
    assert e.value.code == 2
