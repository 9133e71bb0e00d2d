"""Posterior analysis: moments, thresholds, masks, bit precision, ArviZ netCDF and tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from pbc.analysis.inference_data import read_posterior, summary
from pbc.analysis.stage import analyse, parse_thresholds
from pbc.analysis.thresholds import find_threshold
from pbc.bayes.priors import make_prior
from pbc.bayes.summaries import layer_moments
from pbc.cli import main
from pbc.compression.masks import propagate_masks
from pbc.compression.quantise import (
    bit_precision,
    exponent_bits,
    fixed_point_bits,
    significand_bits,
)
from pbc.nets import lenet5, lenet300


@torch.no_grad()
def _set(param, value):
    param.copy_(torch.as_tensor(value, dtype=param.dtype).expand_as(param))


def test_gnj_moments_and_log_alpha_by_hand():
    from pbc.bayes.layers import BayesLinear

    layer = BayesLinear("fc", 3, 2, make_prior("gnj"))
    q = layer.q_scale
    _set(q.loc, [0.5, -2.0, 1e-3])
    _set(q.logvar, np.log([0.01, 0.04, 0.25]))
    _set(layer.w_loc, [[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]])
    _set(layer.w_logvar, np.log([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]))
    post = layer_moments(layer)
    mu_z, var_z = np.array([0.5, -2.0, 1e-3]), np.array([0.01, 0.04, 0.25])
    mu = np.array([[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]])
    s2 = np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    np.testing.assert_allclose(post.log_alpha, np.log(var_z) - np.log(mu_z**2 + 1e-8), rtol=1e-5)
    np.testing.assert_allclose(post.w_mean, mu_z * mu, rtol=1e-6)
    np.testing.assert_allclose(post.w_var, var_z * (mu**2 + s2) + mu_z**2 * s2, rtol=1e-5)
    np.testing.assert_allclose(post.score, post.log_alpha)


def test_ghs_moments_by_hand():
    from pbc.bayes.layers import BayesConv2d

    layer = BayesConv2d("conv", 1, 2, 1, make_prior("ghs", tau0=1e-3))
    q = layer.q_scale
    _set(q.sa_loc, -1.0)
    _set(q.sb_loc, 0.4)
    _set(q.sa_logvar, math.log(0.2))
    _set(q.sb_logvar, math.log(0.1))
    _set(q.za_loc, [0.3, -3.0])
    _set(q.zb_loc, [0.1, -2.0])
    _set(q.za_logvar, math.log(0.3))
    _set(q.zb_logvar, math.log(0.5))
    _set(layer.w_loc, [[[[2.0]]], [[[-1.0]]]])
    _set(layer.w_logvar, math.log(0.1))
    post = layer_moments(layer)
    m = 0.5 * (-1.0 + 0.4 + np.array([0.3 + 0.1, -3.0 - 2.0]))
    v = 0.25 * (0.2 + 0.1 + 0.3 + 0.5)
    ez, vz = np.exp(m + v / 2), (np.exp(v) - 1) * np.exp(2 * m + v)
    np.testing.assert_allclose(post.e_log_z, m, rtol=1e-6)
    np.testing.assert_allclose(post.log_mode, m - v, rtol=1e-6)
    np.testing.assert_allclose(post.z_mean, ez, rtol=1e-5)
    np.testing.assert_allclose(post.w_mean.ravel(), ez * np.array([2.0, -1.0]), rtol=1e-5)
    np.testing.assert_allclose(post.w_var.ravel(), vz * (np.array([4.0, 1.0]) + 0.1) + ez**2 * 0.1,
                               rtol=1e-5)
    # the score is the dropout rate of the log-normal z: log(Var[z]/E[z]²) = log(e^v − 1)
    np.testing.assert_allclose(post.score, np.log(vz / ez**2), rtol=1e-5)
    np.testing.assert_allclose(post.score, np.log(np.expm1(v)), rtol=1e-6)
    # posterior draws of z have the analytic mean
    torch.manual_seed(0)
    z = q.draws(200_000)["z"].numpy()
    np.testing.assert_allclose(z.mean(0), ez, rtol=0.02)


def test_threshold_separates_a_bimodal_sample():
    rng = np.random.default_rng(1)
    kept, pruned = rng.normal(-6, 1, 700), rng.normal(8, 1.5, 90)
    t = find_threshold(np.concatenate([kept, pruned]))
    assert t.method == "otsu+widest-gap" and t.separation > 5
    assert kept.max() < t.value < pruned.min()


def test_threshold_keeps_all_of_a_unimodal_sample():
    x = np.random.default_rng(2).normal(0, 1, 500)
    t = find_threshold(x)
    assert t.method == "unimodal" and t.value > x.max()


def test_bit_precision_rules():
    assert significand_bits(0.023) == 6          # 2^-6 = 0.0156 < 0.023 ≤ 2^-5
    assert significand_bits(2.0**-10) == 11      # strictly below the spread
    assert significand_bits(0.0) == 23
    # exponents of weights spanning 2^-3 … 2^2 (6 exponents → 3 bits), small values ignored
    w = np.array([0.15, -0.3, 0.7, 1.5, 3.0, 6.0, 1e-9])
    assert exponent_bits(w, t=8) == 3
    # magnitudes below 0.5 (where log2(log2(max|w|)+1) is undefined) are fine
    assert exponent_bits(np.array([0.01, 0.02, 0.04]), t=10) == 2
    assert exponent_bits(np.array([1e3, 1e-3]), t=12) == 5       # exponents -10 … 9
    assert exponent_bits(np.array([0.5]), t=4) == 1
    # fixed point: |w| ≤ 0.3 at step 2^-5 → magnitudes up to round(9.6) = 10 → 4 bits + sign
    assert fixed_point_bits(np.array([0.3, -0.1, 0.02]), t=5) == 5
    assert fixed_point_bits(np.array([-0.5]), t=4) == 1 + 4          # 8 needs 4 bits
    assert fixed_point_bits(np.array([0.01]), t=2) == 2              # all round to 0: 1 + 1
    # t = 6 from mean variance 0.02; exponents -3 … -1 (2 bits) → float 1+2+6 = 9 bits;
    # fixed point: round(0.5·64) = 32 → 6 bits + sign = 7: the narrower format counts
    b = bit_precision(np.array([0.5, 0.25, -0.125]), np.array([0.01, 0.03, 0.02]))
    assert (b["significand_bits"], b["exponent_bits"], b["fixed_point_bits"]) == (6, 2, 7)
    assert b["bits"] == 7
    # a wide range favours the float: |w| up to 1000 at t = 14 needs 1 + 24 bits fixed
    wide = bit_precision(np.array([1000.0, 1e-3]), np.array([1e-4, 1e-4]))
    assert wide["fixed_point_bits"] > 1 + wide["exponent_bits"] + wide["significand_bits"]
    assert wide["bits"] == 1 + wide["exponent_bits"] + wide["significand_bits"]


def test_masks_propagate_through_flatten_and_between_layers():
    arch = lenet5()
    g = {"conv1": np.ones(20, bool), "conv2": np.ones(50, bool),
         "fc1": np.ones(800, bool), "fc2": np.ones(500, bool)}
    g["conv1"][:5] = False                 # conv1 loses 5 filters → conv2 loses those inputs
    g["conv2"][0] = False                  # conv2 channel 0 → fc1 inputs 0..15 go
    g["fc1"][16:32] = False                # all of channel 1's positions unread → conv2 ch 1 goes
    g["fc2"][:100] = False                 # fc1 outputs 0..99 go
    m = propagate_masks(arch, g)
    assert m["conv1"][1].sum() == 15 and m["conv2"][0].sum() == 15
    assert not m["conv2"][1][0] and not m["conv2"][1][1] and m["conv2"][1].sum() == 48
    assert m["fc1"][0].sum() == 48 * 16 and m["fc1"][1].sum() == 400
    assert m["fc2"][0].sum() == 400 and m["fc2"][1].sum() == 10
    m3 = propagate_masks(lenet300(), {"fc1": np.ones(784, bool), "fc2": np.arange(300) < 7,
                                      "fc3": np.arange(100) < 3})
    assert m3["fc1"][1].sum() == 7 and m3["fc2"][1].sum() == 3 and m3["fc3"][0].sum() == 3


def test_parse_thresholds():
    assert parse_thresholds("fc1=3, fc2=-2.5") == {"fc1": 3.0, "fc2": -2.5}
    with pytest.raises(ValueError, match="LAYER=NUMBER"):
        parse_thresholds("fc1:3")


@pytest.fixture
def trained_run(trained_runs, tmp_path):
    """A copy of the session's tiny trained LeNet-5 run under ``prior``."""
    def make(prior):
        return trained_runs.copy(tmp_path / prior, "lenet5", prior)
    return make


@pytest.mark.parametrize("prior", ["gnj", "ghs"])
def test_analyse_writes_consistent_artefacts(trained_run, prior):
    run = trained_run(prior)
    result = analyse(run, draws=40, figures=(prior == "ghs"))
    data = read_posterior(run / "posterior.nc")
    post = data.posterior
    assert post["conv1.z"].shape == (4, 10, 20) and "conv1_group" in post["conv1.z"].dims
    if prior == "ghs":
        assert post["fc1.s"].shape == (4, 10)
        for f in ("scores.png", "weights.png", "forest_fc1.png", "global_scales.png"):
            assert (run / "figures" / f).stat().st_size > 1000
    table = summary(data, var_names=["fc2.z"])
    assert len(table) == 500 and {"mean", "r_hat"} <= set(table.columns)
    groups, layers = pd.read_csv(run / "groups.csv"), pd.read_csv(run / "layers.csv")
    moments = data.posterior_moments
    for name, r in result.items():
        g = groups[groups.layer == name]
        np.testing.assert_allclose(g.score.to_numpy(), moments[f"{name}.score"].values)
        np.testing.assert_array_equal(g.kept.to_numpy(), moments[f"{name}.kept"].values == 1)
        row = layers[layers.layer == name].iloc[0]
        assert row.groups_kept == g.kept.sum() == r.row["groups_kept"]
        np.testing.assert_allclose(moments[f"{name}.w_mean"].values, r.post.w_mean)
        np.testing.assert_allclose(row.threshold, r.threshold.value)
    # per-layer KL in bits sums to the ELBO's KL (which does not depend on the data)
    from pbc.bayes.elbo import LN2, MeanFieldELBO
    from pbc.rundir import load_trained

    net = load_trained(run).net
    x, y = torch.zeros(3, 1, 28, 28), torch.zeros(3, dtype=torch.long)
    with torch.no_grad():
        kl = MeanFieldELBO().terms(net.model, net.guide, x, y).kl.item()
    assert layers.kl_bits.sum() == pytest.approx(kl / LN2, rel=1e-5)
    assert (layers.kl_bits > 0).all()


def test_thresholds_override_and_cli(trained_run, capsys):
    run = trained_run("gnj")
    assert main(["analyse", str(run), "--draws", "8", "--no-figures",
                 "--thresholds", "fc2=-1000"]) == 0
    out = capsys.readouterr().out
    assert "fc2: 0/500 groups" in out
    layers = pd.read_csv(run / "layers.csv").set_index("layer")
    assert layers.loc["fc2", "threshold_method"] == "given"
    assert layers.loc["fc1", "out_kept"] == 0   # nothing reads fc1's outputs any more
    with pytest.raises(SystemExit) as e:
        main(["analyse", str(run), "--thresholds", "fc9=1"])
    assert e.value.code == 2


def test_threshold_keeps_all_of_a_uniform_sample():
    x = np.random.default_rng(3).uniform(-5, 5, 800)
    assert find_threshold(x).method == "unimodal"


def test_threshold_keeps_all_of_a_small_sample_without_a_real_gap():
    """Twenty conv filters whose scales differ by less than e² are not two modes, even when
    Otsu's split of so few values looks well separated (seen on a GHS LeNet-5 run)."""
    x = np.array([0.47, 0.57, 0.66, 0.69, 0.73, 0.80, 0.80, 0.84, 0.84, 0.88,
                  0.95, 0.95, 1.00, 1.02, 1.02, 1.06, 1.10, 1.10, 1.12, 1.20])
    assert find_threshold(x).method == "unimodal"
    # the same layer with three filters switched off (scores ≫) is split between the modes
    t = find_threshold(np.concatenate([x, [9.0, 10.5, 11.0]]))
    assert t.method == "otsu+widest-gap" and 1.2 < t.value < 9.0
