"""Sparse variational dropout (``--prior svd``): KL by hand, per-weight pruning, the CLI path."""

from __future__ import annotations

import json
import math

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import kl_divergence

from pbc.analysis.stage import analyse
from pbc.bayes.elbo import MeanFieldELBO
from pbc.bayes.kl import K1, K2, K3
from pbc.bayes.net import BayesNet
from pbc.bayes.priors import SparseVD
from pbc.bayes.summaries import layer_moments
from pbc.cli import main
from pbc.compression.masks import structured_masks, weight_masks
from pbc.nets import lenet300


def _molchanov_kl(log_alpha: float) -> float:
    """−KL ≈ k1·σ(k2 + k3·log α) − ½·log(1 + 1/α) − k1, with log α clipped to [−8, 8]."""
    la = min(max(log_alpha, -8.0), 8.0)
    neg = K1 / (1 + math.exp(-(K2 + K3 * la))) - 0.5 * math.log1p(math.exp(-la)) - K1
    return -neg


def test_kl_of_one_weight_matches_the_formula_by_hand_with_the_clip():
    prior = SparseVD().weight_prior((4,), torch.zeros(4))
    theta = torch.tensor([0.5, 0.5, 1e-3, 2.0])
    sigma = torch.tensor([0.05, 0.5, 1.0, 2e-5])  # log α −4.6, 0, 13.8, −22
    q = dist.Normal(theta, sigma).to_event(1)
    got = kl_divergence(q, prior).item()
    want = sum(_molchanov_kl(2 * math.log(s) - math.log(t * t + 1e-8))
               for t, s in zip(theta.tolist(), sigma.tolist(), strict=True))
    assert got == pytest.approx(want, rel=1e-5)
    # the clip: log α = 13.8 and log α = 8 cost the same
    assert _molchanov_kl(13.8) == _molchanov_kl(8.0) < _molchanov_kl(3.0)


def test_elbo_kl_is_the_sum_over_weights_plus_the_bias_terms():
    torch.manual_seed(0)
    net = BayesNet(lenet300(), SparseVD())
    x, y = torch.randn(5, 1, 28, 28), torch.randint(0, 10, (5,))
    terms = MeanFieldELBO().terms(net.model, net.guide, x, y, subsample=torch.arange(5), size=50)
    want = 0.0
    for layer in net.bayes_layers():
        lv, mu = layer.w_logvar.detach().double(), layer.w_loc.detach().double()
        la = (lv - torch.log(mu * mu + 1e-8)).clamp(-8, 8)
        want += (-(K1 * torch.sigmoid(K2 + K3 * la) - 0.5 * torch.log1p(torch.exp(-la)) - K1)
                 ).sum().item()
        blv, bmu = layer.b_logvar.detach().double(), layer.b_loc.detach().double()
        want += (0.5 * (blv.exp() + bmu * bmu - 1 - blv)).sum().item()
    assert terms.kl.item() == pytest.approx(want, rel=1e-4)
    assert not any(layer.q_scale is not None for layer in net.bayes_layers())


@torch.no_grad()
def test_weights_with_log_alpha_at_least_3_are_pruned_and_empty_columns_removed():
    torch.manual_seed(1)
    arch = lenet300()
    net = BayesNet(arch, SparseVD())
    fc1 = net.body.fc1
    fc1.w_loc.fill_(0.1)
    fc1.w_logvar.fill_(math.log(0.1**2) - 6.0)          # log α = −6: kept
    fc1.w_logvar[:, :10] = math.log(0.1**2) + 4.0       # log α = 4: columns 0–9 pruned
    fc1.w_logvar[0, 10] = math.log(0.1**2) + 3.5        # a single pruned weight
    posts = {layer.site: layer_moments(layer) for layer in net.bayes_layers()}
    assert posts["fc1"].per_weight and posts["fc1"].score.shape == (300, 784)
    thresholds = dict.fromkeys(posts, 3.0)
    keep = weight_masks(posts, thresholds)["fc1"]
    assert not keep[:, :10].any() and not keep[0, 10] and keep[1:, 10].all()
    in_mask, out_mask = structured_masks(arch, posts, thresholds)["fc1"]
    assert not in_mask[:10].any() and in_mask[10:].all() and out_mask.all()


@pytest.fixture
def svd_run(trained_runs, tmp_path):
    """A copy of the session's tiny LeNet-300-100 Sparse VD run (two epochs)."""
    return trained_runs.copy(tmp_path / "svd", "lenet300", "svd", epochs=2)


def test_svd_cli_train_analyse_compress_evaluate(svd_run, tiny_data, capsys):
    run = svd_run
    assert main(["analyse", str(run), "--no-figures"]) == 0
    analysis = json.loads((run / "analysis.json").read_text())
    assert analysis["thresholds"] == {"fc1": 3.0, "fc2": 3.0, "fc3": 3.0}
    assert main(["compress", str(run)]) == 0
    rec = json.loads((run / "compression.json").read_text())
    assert rec["prior"] == "svd"
    assert rec["packed_bytes"] == (run / "model.pbcz").stat().st_size == rec["accounted_bytes"]
    # the kept weights are exactly those with log α < 3
    from pbc.rundir import load_trained

    net = load_trained(run).net
    n_keep = sum(int((layer_moments(m).score < 3.0).sum()) for m in net.bayes_layers())
    assert sum(r["weights_nonzero"] for r in rec["layers"]) == n_keep
    capsys.readouterr()
    assert main(["evaluate", str(run / "model.pbcz"), "--data-dir", str(tiny_data)]) == 0
    assert f"test error {rec['error']['packed']:.4f}" in capsys.readouterr().out


def test_svd_analysis_writes_moments_without_draws(svd_run):
    analyse(svd_run, draws=8, figures=True)
    import xarray as xr

    ds = xr.open_dataset(svd_run / "posterior.nc", group="posterior_moments")
    assert ds["fc1.score"].shape == (300, 784)
    kept = ds["fc1.kept"].values.astype(bool)
    np.testing.assert_array_equal(kept, ds["fc1.score"].values <= 3.0)
    assert (svd_run / "figures" / "scores.png").is_file()
    assert not (svd_run / "groups.csv").read_text().strip().splitlines()[1:]
