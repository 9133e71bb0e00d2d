"""The posterior predictive (:mod:`pbc.analysis.predictive`) against known answers:
calibration scores of hand-computed inputs, the predictive of a posterior without variance
(the posterior-mean network), an independent Monte Carlo of one Bayesian linear layer,
one weight draw per network, ``predictive.json`` of a tiny trained run and its report page."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from pbc.analysis.predictive import (
    MIN_PROB,
    calibration,
    evaluate_predictive,
    predictive_probs,
)
from pbc.bayes.handlers import LocalReparameterization
from pbc.bayes.net import BayesNet
from pbc.bayes.priors import make_prior
from pbc.io import ArtefactError
from pbc.nets import Architecture, LayerSpec, plain_network
from pbc.reporting.pdf import _calibration_pages, build_report
from pbc.rundir import PREDICTIVE, RunDir, read_run
from tests.conftest import tiny_arch

# one thread: these tests make many tiny forward passes, which torch's thread pool slows
pytestmark = pytest.mark.usefixtures("cpu_threads")


# ------------------------------------------------------------------------------ calibration
def test_calibration_of_hand_computed_inputs():
    # confidences 0.9, 0.6, 0.7, 0.8 (two on bin edges), predictions 0, 0, 1, 1
    probs = [[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]]
    y = [0, 1, 1, 1]
    c = calibration(probs, y, bins=5)
    assert c["error"] == pytest.approx(0.25)
    assert c["nll"] == pytest.approx(-(math.log(0.9) + math.log(0.4) + math.log(0.7)
                                       + math.log(0.8)) / 4)
    # bins (0.4, 0.6]: {0.6, wrong}; (0.6, 0.8]: {0.7, 0.8, right}; (0.8, 1]: {0.9, right}
    assert c["bins"]["count"] == [0, 0, 1, 2, 1]
    assert c["bins"]["accuracy"] == [None, None, 0.0, 1.0, 1.0]
    assert c["bins"]["confidence"][2:] == pytest.approx([0.6, 0.75, 0.9])
    assert c["bins"]["edges"] == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert c["ece"] == pytest.approx((1 * 0.6 + 2 * 0.25 + 1 * 0.1) / 4)


def test_calibration_one_bin_and_zero_probability():
    probs = np.array([[1.0, 0.0, 0.0], [0.5, 0.25, 0.25]])
    c = calibration(torch.tensor(probs), torch.tensor([1, 0]), bins=1)
    # one bin: ECE = |accuracy − mean confidence| = |1/2 − 3/4|
    assert c["ece"] == pytest.approx(0.25)
    assert c["error"] == pytest.approx(0.5)
    # a true class given probability 0 costs −log(MIN_PROB), not infinity
    assert c["nll"] == pytest.approx((-math.log(MIN_PROB) - math.log(0.5)) / 2)
    with pytest.raises(ValueError):
        calibration(probs, [0, 1, 2])
    with pytest.raises(ValueError):
        calibration(probs, [0, 1], bins=0)


# ------------------------------------------------------------------------------ predictive
def _set_log_variances(net: BayesNet, value: float) -> None:
    with torch.no_grad():
        for layer in net.bayes_layers():
            for p in (layer.w_logvar, layer.b_logvar):
                p.fill_(value)
        for p in net.scale_log_variances():
            p.fill_(value)


@pytest.mark.parametrize("prior", ["gnj", "ghs", "svd"])
def test_posterior_without_variance_predicts_as_the_posterior_mean(prior):
    torch.manual_seed(1)
    net = BayesNet(tiny_arch(), make_prior(prior, tau0=1.0))
    _set_log_variances(net, -80.0)
    x = torch.randn(7, 1, 3, 3)
    probs = predictive_probs(net, x, samples=3, batch_size=4)
    plain = plain_network(tiny_arch(), net.posterior_mean_state_dict())
    expected = torch.softmax(plain(x), -1).detach()
    assert probs.shape == (3, 7, 3)
    for s in range(3):
        torch.testing.assert_close(probs[s], expected, atol=1e-5, rtol=0)


def _one_linear_layer(prior: str) -> BayesNet:
    """flatten (1, 2, 2) → BayesLinear 4 → 3, with weight noise of standard deviation 0.6 and
    (GNJ) group scales of standard deviation 0.4."""
    arch = Architecture("one", (1, 2, 2), (LayerSpec("flatten", "flatten"),
                                          LayerSpec("linear", "fc1", 4, 3)))
    net = BayesNet(arch, make_prior(prior))
    with torch.no_grad():
        layer = net.bayes_layers()[0]
        layer.w_loc.copy_(torch.randn(3, 4))
        layer.b_loc.copy_(torch.randn(3))
        layer.w_logvar.fill_(2 * math.log(0.6))
        layer.b_logvar.fill_(2 * math.log(0.6))
        if layer.q_scale is not None:
            layer.q_scale.logvar.fill_(2 * math.log(0.4))
    return net


@pytest.mark.parametrize("prior", ["gnj", "svd"])
def test_predictive_mean_matches_an_independent_monte_carlo(prior):
    torch.manual_seed(2)
    net = _one_linear_layer(prior)
    x = torch.randn(5, 1, 2, 2)
    probs = predictive_probs(net, x, samples=1000, batch_size=5, chunk=300)
    assert not torch.allclose(probs[0], probs[1])        # draws are different networks
    # independently: z ~ N(μ_z, σ_z²) per input unit, w̃ ~ N(μ, σ²), w = z ⊙ w̃, b ~ N(μ_b, σ_b²)
    layer, n = net.bayes_layers()[0], 100_000
    with torch.no_grad():
        w_loc, w_var, b_loc, b_var = layer.variational_moments()
        w = w_loc + w_var.sqrt() * torch.randn(n, 3, 4)
        if layer.q_scale is not None:
            z = layer.q_scale.loc + layer.q_scale.scale() * torch.randn(n, 4)
            w = z[:, None, :] * w
        b = b_loc + b_var.sqrt() * torch.randn(n, 3)
        logits = torch.einsum("ni,soi->sno", x.flatten(1), w) + b[:, None, :]
        expected = torch.softmax(logits, -1).mean(0)
    # within four Monte Carlo standard errors (here ≤ 0.01; the posterior-mean network's
    # probabilities differ from these by up to 0.2)
    se = probs.std(0) / math.sqrt(probs.shape[0])
    assert bool(((probs.mean(0) - expected).abs() <= 4 * se + 1e-3).all())


def test_one_weight_draw_serves_every_example_and_batch():
    torch.manual_seed(3)
    net = _one_linear_layer("gnj")
    a, b, c = torch.randn(3, 1, 2, 2)
    x = torch.stack([a, b, a, c, a])                      # batches of 2: [a b] [a c] [a]
    probs = predictive_probs(net, x, samples=4, batch_size=2)
    for s in range(4):
        torch.testing.assert_close(probs[s, 2], probs[s, 0], atol=1e-6, rtol=0)
        torch.testing.assert_close(probs[s, 4], probs[s, 0], atol=1e-6, rtol=0)
    assert not torch.allclose(probs[0, 0], probs[1, 0], atol=1e-3)
    # the same check catches per-example noise: local reparameterisation gives a ≠ a
    with LocalReparameterization(), torch.no_grad():
        logits = net(x)
    assert not torch.allclose(logits[0], logits[2], atol=1e-3)


# ------------------------------------------------------------------------------ run directory
def test_evaluate_predictive_writes_predictive_json(trained_runs, tmp_path):
    run = trained_runs.copy(tmp_path / "run", "lenet300", "gnj")
    rng = torch.get_rng_state()
    record = evaluate_predictive(run, samples=4, batch_size=37, seed=5)
    assert torch.equal(torch.get_rng_state(), rng)      # the caller's RNG is left alone
    assert RunDir(run).predictive() == json.loads(json.dumps(record))
    assert record["predictive"] == "monte carlo" and record["samples"] == 4
    assert set(record["estimates"]) == {"monte_carlo", "posterior_mean"}
    n = record["examples"]
    for est in record["estimates"].values():
        assert sum(est["bins"]["count"]) == n
    # the posterior-mean network is the one the train stage scored on the test set
    last = RunDir(run).metrics()[-1]
    assert record["estimates"]["posterior_mean"]["error"] == pytest.approx(last["test_error"])
    first = (run / PREDICTIVE).read_bytes()
    evaluate_predictive(run, samples=4, batch_size=100, seed=5)
    assert (run / PREDICTIVE).read_bytes() == first      # deterministic given the seed
    other = evaluate_predictive(run, samples=4, batch_size=37, seed=6)
    assert other["estimates"]["monte_carlo"]["nll"] != record["estimates"]["monte_carlo"]["nll"]


def test_method_without_posterior_records_its_point_estimate(trained_runs, tmp_path):
    run = trained_runs.copy(tmp_path / "run", "lenet300", "none")
    record = evaluate_predictive(run, samples=4)
    assert record["predictive"] == "point estimate" and record["samples"] is None
    assert list(record["estimates"]) == ["point_estimate"]
    last = RunDir(run).metrics()[-1]
    assert record["estimates"]["point_estimate"]["error"] == pytest.approx(last["test_error"])


def test_damaged_predictive_json_is_refused(trained_runs, tmp_path):
    run = trained_runs.copy(tmp_path / "run", "lenet300", "none")
    record = evaluate_predictive(run, samples=1)
    record["estimates"]["point_estimate"]["bins"]["accuracy"].pop()
    (run / PREDICTIVE).write_text(json.dumps(record))
    with pytest.raises(ArtefactError, match="calibration records"):
        read_run(run)


def test_report_draws_a_calibration_page_for_runs_with_predictive_json(trained_runs, tmp_path):
    with_p = trained_runs.copy(tmp_path / "gnj", "lenet300", "gnj")
    evaluate_predictive(with_p, samples=2)
    without = trained_runs.copy(tmp_path / "none", "lenet300", "none")
    assert list(_calibration_pages([read_run(without)])) == []    # no page, no error
    pages = build_report([with_p, without], tmp_path / "report.pdf").pages
    assert pages.count("calibration") == 1
    assert pages.index("calibration") == pages.index("curves") + 1
