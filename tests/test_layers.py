"""Bayesian layers, ``BayesNet`` and ``MeanFieldELBO`` against hand-computed answers."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_arch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from pbc.bayes.elbo import MeanFieldELBO
from pbc.bayes.handlers import LocalReparameterization
from pbc.bayes.kl import K1, K2, K3
from pbc.bayes.layers import BayesConv2d
from pbc.bayes.net import BayesNet
from pbc.bayes.priors import make_prior
from pbc.nets import build_network, lenet5, lenet300, vgg16

TAU0 = 1e-1


def _prior(name):
    return make_prior(name, tau0=TAU0)


def _trace_model(net, x, y):
    guide_tr = poutine.trace(net.guide).get_trace(x, y)
    model_tr = poutine.trace(poutine.replay(net.model, trace=guide_tr)).get_trace(x, y)
    return model_tr, guide_tr


def _sample_sites(tr):
    """Sample sites in order, deterministic ones included, the data plate's subsample not."""
    return [n for n, s in tr.nodes.items()
            if s["type"] == "sample" and not site_is_subsample(s)]


@torch.no_grad()
def _randomise(net):
    """Non-trivial posterior: random means (biases too), E[z] away from 1, visible variances."""
    for layer in net.bayes_layers():
        p = layer._parameters
        fan_in = p["w_loc"][0].numel()
        w = torch.randn_like(p["w_loc"]) / math.sqrt(fan_in)
        p["w_loc"].copy_(w * (1.0 + torch.rand_like(w)))
        p["w_logvar"].copy_(-3.0 + 0.5 * torch.randn_like(p["w_logvar"]))
        p["b_loc"].copy_(0.3 * torch.randn_like(p["b_loc"]))
        p["b_logvar"].copy_(-3.0 + 0.5 * torch.randn_like(p["b_logvar"]))
        g, n = layer.q_scale, layer.n_groups
        if net.prior.name == "gnj":
            g.loc.copy_(0.5 + torch.rand(n))
            g.logvar.copy_(math.log(0.2**2) + 0.3 * torch.randn(n))
        else:
            g.sa_loc.fill_(2 * math.log(TAU0) + 0.3)
            g.sb_loc.fill_(-2 * math.log(TAU0) - 0.1)
            g.sa_logvar.fill_(math.log(0.2))
            g.sb_logvar.fill_(math.log(0.05))
            g.za_loc.copy_(0.4 * torch.randn(n))
            g.zb_loc.copy_(0.4 * torch.randn(n))
            g.za_logvar.copy_(math.log(0.1) + 0.3 * torch.randn(n))
            g.zb_logvar.copy_(math.log(0.1) + 0.3 * torch.randn(n))


def _expected_z(layer, prior_name):
    """E_q[z] by hand: GNJ μ_z; GHS exp(m + v/2) with log z = ½ Σ log(factors)."""
    g = layer.q_scale
    if prior_name == "gnj":
        return g.loc.detach()
    m = 0.5 * (g.sa_loc + g.sb_loc + g.za_loc + g.zb_loc)
    v = 0.25 * (g.sa_logvar.exp() + g.sb_logvar.exp() + g.za_logvar.exp() + g.zb_logvar.exp())
    return torch.exp(m + 0.5 * v).detach()


# ---------------------------------------------------------------------------- sites and shapes
@pytest.mark.parametrize("prior_name", ["gnj", "ghs"])
def test_site_names_and_shapes_lenet300(prior_name):
    torch.manual_seed(0)
    net = BayesNet(lenet300(), _prior(prior_name))
    x, y = torch.randn(2, 1, 28, 28), torch.tensor([1, 7])
    model_tr, guide_tr = _trace_model(net, x, y)
    per_layer = ["z", "w", "b"] if prior_name == "gnj" else ["sa", "sb", "za", "zb", "s", "z",
                                                             "w", "b"]
    expected = [f"{layer}.{s}" for layer in ("fc1", "fc2", "fc3") for s in per_layer] + ["obs"]
    assert _sample_sites(model_tr) == expected
    assert _sample_sites(guide_tr) == expected[:-1]
    v = model_tr.nodes
    assert v["fc1.z"]["value"].shape == (784,)
    assert v["fc1.w"]["value"].shape == (300, 784)
    assert v["fc1.b"]["value"].shape == (300,)
    assert v["fc2.z"]["value"].shape == (300,)
    assert v["fc3.w"]["value"].shape == (10, 100)
    assert v["obs"]["value"].shape == (2,) and v["obs"]["is_observed"]
    if prior_name == "ghs":
        assert v["fc1.sa"]["value"].shape == () and v["fc1.s"]["value"].shape == ()
        assert v["fc1.za"]["value"].shape == (784,)
        z = v["fc1.s"]["value"] * torch.sqrt(v["fc1.za"]["value"] * v["fc1.zb"]["value"])
        assert torch.allclose(v["fc1.z"]["value"], z)


@pytest.mark.parametrize("prior_name", ["gnj", "ghs"])
def test_site_names_and_shapes_lenet5(prior_name):
    torch.manual_seed(0)
    net = BayesNet(lenet5(), _prior(prior_name))
    x, y = torch.randn(2, 1, 28, 28), torch.tensor([3, 4])
    model_tr, _ = _trace_model(net, x, y)
    names = _sample_sites(model_tr)
    prefixes = [n.split(".")[0] for n in names if n != "obs"]
    assert list(dict.fromkeys(prefixes)) == ["conv1", "conv2", "fc1", "fc2"]
    for layer in ("conv1", "conv2", "fc1", "fc2"):
        for s in ("z", "w", "b"):
            assert f"{layer}.{s}" in names
    v = model_tr.nodes
    assert v["conv1.z"]["value"].shape == (20,)  # output channels
    assert v["conv1.w"]["value"].shape == (20, 1, 5, 5)
    assert v["conv2.z"]["value"].shape == (50,)
    assert v["fc1.z"]["value"].shape == (800,)  # input units
    assert v["fc1.w"]["value"].shape == (500, 800)
    assert model_tr.nodes["_RETURN"]["value"].shape == (2,)


# ---------------------------------------------------------------------------- posterior mean
def _hand_forward_lenet5(net, x, prior_name):
    layers = {m.site: m for m in net.bayes_layers()}

    def conv(h, name):
        m = layers[name]
        ez = _expected_z(m, prior_name)
        w = ez[:, None, None, None] * m.w_loc.detach()
        return F.conv2d(h, w, ez * m.b_loc.detach())  # a filter's bias is scaled by its z

    def lin(h, name):
        m = layers[name]
        ez = _expected_z(m, prior_name)
        return F.linear(h, m.w_loc.detach() * ez[None, :], m.b_loc.detach())

    h = F.max_pool2d(conv(x, "conv1"), 2)
    h = F.max_pool2d(conv(h, "conv2"), 2)
    h = F.relu(lin(h.flatten(1), "fc1"))
    return lin(h, "fc2")


@pytest.mark.parametrize("prior_name", ["gnj", "ghs"])
def test_posterior_mean_state_dict_is_the_mean_network(prior_name):
    torch.manual_seed(1)
    arch = lenet5()
    net = BayesNet(arch, _prior(prior_name))
    _randomise(net)
    for layer in net.bayes_layers():
        assert torch.allclose(layer.q_scale.mean(), _expected_z(layer, prior_name), rtol=1e-6)
    plain = build_network(arch)
    plain.load_state_dict(net.posterior_mean_state_dict())  # strict: every key, right shapes
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        got = plain(x)
        want = _hand_forward_lenet5(net, x, prior_name)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    # the bias pitfall: the unscaled conv bias gives a different network
    sd = net.posterior_mean_state_dict()
    assert not torch.allclose(sd["conv1.bias"], net.body.conv1.b_loc.detach())


def test_posterior_mean_of_ghs_z_matches_monte_carlo():
    """E[z] = exp(m + v/2) against draws of the guide's own factors."""
    torch.manual_seed(2)
    net = BayesNet(tiny_arch(), _prior("ghs"))
    _randomise(net)
    layer = net.bayes_layers()[0]
    n = 100_000
    g = layer.q_scale
    with torch.no_grad():
        f = {k: dist.LogNormal(getattr(g, f"{k}_loc"), (0.5 * getattr(g, f"{k}_logvar")).exp())
             .sample((n,)) for k in ("sa", "sb", "za", "zb")}
        z = torch.sqrt(f["sa"] * f["sb"])[:, None] * torch.sqrt(f["za"] * f["zb"])
    se = z.std(0) / math.sqrt(n)
    assert ((z.mean(0) - g.mean()).abs() < 5 * se).all()


# ---------------------------------------------------------------------------- ELBO
def _normal_kl_std(loc, logvar):
    """KL(N(μ, σ²) ‖ N(0, 1)) summed: ½ Σ (σ² + μ² − 1 − log σ²)."""
    return 0.5 * (logvar.exp() + loc.pow(2) - 1.0 - logvar).sum()


def _lognormal_gamma_kl(mu, var, k, r):
    return (-k * math.log(r) + math.lgamma(k) - k * mu + r * torch.exp(mu + var / 2)
            - 0.5 * (1 + torch.log(2 * math.pi * var)))


def _lognormal_invgamma_kl(mu, var, k, r):
    return (-k * math.log(r) + math.lgamma(k) + k * mu + r * torch.exp(-mu + var / 2)
            - 0.5 * (1 + torch.log(2 * math.pi * var)))


def _hand_kl(net):
    kl = 0.0
    for layer in net.bayes_layers():
        g = layer.q_scale
        if net.prior.name == "gnj":
            log_alpha = g.logvar - torch.log(g.loc.pow(2))
            neg = K1 * torch.sigmoid(K2 + K3 * log_alpha) - 0.5 * F.softplus(-log_alpha) - K1
            kl = kl - neg.sum()
        else:
            kl = kl + _lognormal_gamma_kl(g.sa_loc, g.sa_logvar.exp(), 0.5, 1 / TAU0**2)
            kl = kl + _lognormal_invgamma_kl(g.sb_loc, g.sb_logvar.exp(), 0.5, 1.0)
            kl = kl + _lognormal_gamma_kl(g.za_loc, g.za_logvar.exp(), 0.5, 1.0).sum()
            kl = kl + _lognormal_invgamma_kl(g.zb_loc, g.zb_logvar.exp(), 0.5, 1.0).sum()
        p = layer._parameters
        kl = kl + _normal_kl_std(p["w_loc"], p["w_logvar"])
        kl = kl + _normal_kl_std(p["b_loc"], p["b_logvar"])
    return kl


def _hand_loglik(net, guide_tr, x, y, scale):
    v = {k: s["value"] for k, s in guide_tr.nodes.items() if s["type"] == "sample"}
    h = F.conv2d(x, v["conv1.w"], v["conv1.b"]).flatten(1)
    h = F.relu(F.linear(h, v["fc1.w"], v["fc1.b"]))
    logits = F.linear(h, v["fc2.w"], v["fc2.b"])
    return scale * F.log_softmax(logits, -1).gather(1, y[:, None]).sum()


@pytest.mark.parametrize("prior_name", ["gnj", "ghs"])
def test_mean_field_elbo_is_closed_form_kl_and_scaled_loglik(prior_name):
    torch.manual_seed(3)
    net = BayesNet(tiny_arch(), _prior(prior_name))
    _randomise(net)
    x, y = torch.randn(4, 1, 3, 3), torch.tensor([0, 2, 1, 2])
    size, subsample = 40, torch.tensor([3, 17, 21, 38])
    elbo = MeanFieldELBO(local_reparam=False)

    pyro.set_rng_seed(4)
    terms = elbo.terms(net.model, net.guide, x, y, subsample, size)
    pyro.set_rng_seed(4)  # the same draws, taken by hand
    guide_tr = poutine.trace(net.guide).get_trace(x, y, subsample, size)
    loglik = _hand_loglik(net, guide_tr, x, y, scale=size / len(subsample))
    kl = _hand_kl(net)

    assert terms.expected_loglik.item() == pytest.approx(loglik.item(), rel=1e-5)
    assert terms.kl.item() == pytest.approx(kl.item(), rel=1e-5)
    assert terms.loss.item() == pytest.approx(-(loglik - kl).item(), rel=1e-5)
    # β-weighting of the KL: the guide's scale multiplies its sites' KL terms
    pyro.set_rng_seed(4)
    half = elbo.terms(net.model, poutine.scale(net.guide, scale=0.5), x, y, subsample, size)
    assert half.loss.item() == pytest.approx(-(loglik - 0.5 * kl).item(), rel=1e-5)
    # gradients reach the variational parameters through the KL and the likelihood
    terms.loss.backward()
    for layer in net.bayes_layers():
        assert layer.w_logvar.grad is not None and layer.w_logvar.grad.abs().sum() > 0


def test_mean_field_elbo_local_reparam_has_same_kl():
    torch.manual_seed(5)
    net = BayesNet(tiny_arch(), _prior("gnj"))
    _randomise(net)
    x, y = torch.randn(4, 1, 3, 3), torch.tensor([0, 2, 1, 2])
    terms = MeanFieldELBO().terms(net.model, net.guide, x, y)
    assert terms.kl.item() == pytest.approx(_hand_kl(net).item(), rel=1e-5)
    assert torch.isfinite(terms.expected_loglik)


def _model_without_closed_form(obs):
    u = pyro.sample("u", dist.StudentT(3.0, 0.0, 1.0))
    pyro.sample("obs", dist.Normal(u, 1.0), obs=obs)


def _guide_normal(obs):
    pyro.sample("u", dist.Normal(0.3, 0.5))


def test_mean_field_elbo_refuses_site_without_closed_form():
    obs = torch.tensor(0.5)
    with pytest.raises(NotImplementedError):  # the premise: torch has no such closed form
        torch.distributions.kl_divergence(dist.Normal(0.3, 0.5), dist.StudentT(3.0, 0.0, 1.0))
    with pytest.raises(NotImplementedError, match="'u'"):
        MeanFieldELBO(local_reparam=False).terms(_model_without_closed_form, _guide_normal, obs)

    pyro.set_rng_seed(6)
    terms = MeanFieldELBO(local_reparam=False, mc_fallback=True).terms(
        _model_without_closed_form, _guide_normal, obs)
    pyro.set_rng_seed(6)
    u = poutine.trace(_guide_normal).get_trace(obs).nodes["u"]["value"]
    kl = dist.Normal(0.3, 0.5).log_prob(u) - dist.StudentT(3.0, 0.0, 1.0).log_prob(u)
    assert terms.kl.item() == pytest.approx(kl.item(), rel=1e-6)
    assert terms.expected_loglik.item() == pytest.approx(
        dist.Normal(u, 1.0).log_prob(obs).item(), rel=1e-6)


# ---------------------------------------------------------------------------- point estimates
@pytest.mark.parametrize("prior_name", ["gnj", "ghs"])
def test_load_point_estimate_round_trips_through_posterior_mean(prior_name):
    """μ = w / E[z] on loading, so E[z]·μ gives the loaded weights back whatever z starts at
    (GHS starts at s = 1/√fan_in, far from 1)."""
    torch.manual_seed(7)
    arch = lenet5()
    plain = build_network(arch)
    state = plain.state_dict()
    net = BayesNet(arch, _prior(prior_name))
    net.load_point_estimate(state)
    back = net.posterior_mean_state_dict()
    assert set(back) == set(state)
    for k in state:
        assert torch.allclose(back[k], state[k], rtol=1e-5, atol=1e-7), k
    x = torch.randn(2, 1, 28, 28)
    rebuilt = build_network(arch)
    rebuilt.load_state_dict(back)
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), plain(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pretrained", [True, False])
def test_horseshoe_starts_at_the_weight_scale_for_a_pretrained_net(pretrained):
    """For means from a pretrained net GHS layers start with E[z] ≈ 1/√fan_in and w̃ = O(1);
    from scratch with E[z] ≈ 1 and w̃ = w.  Either way E[w] keeps the usual init: N(0, 1/fan_in)
    for linear layers, torch's nn.Conv2d draw U(±1/√fan_in) (sd 1/√(3·fan_in)) for convolutions."""
    torch.manual_seed(0)
    net = BayesNet(lenet5(), _prior("ghs"), pretrained=pretrained)
    for layer in net.bayes_layers():
        fan_in = layer.w_loc[0].numel()
        z = layer.q_scale.mean()
        z_start = fan_in ** -0.5 if pretrained else 1.0
        assert torch.allclose(z, torch.full_like(z, z_start), rtol=0.05)
        w_sd = (3.0 if isinstance(layer, BayesConv2d) else 1.0) ** -0.5  # × 1/√fan_in
        w_tilde_sd = w_sd if pretrained else w_sd / math.sqrt(fan_in)
        assert 0.8 < layer.w_loc.detach().std().item() / w_tilde_sd < 1.2
        w_mean, _ = layer.posterior_mean()
        assert w_mean.std().item() * math.sqrt(fan_in) == pytest.approx(w_sd, rel=0.2)
        if isinstance(layer, BayesConv2d):
            assert w_mean.abs().max().item() * math.sqrt(fan_in) <= 1.0 + 1e-4
        # the weight noise E[z]²·σ² starts at Louizos et al.'s e^−9, as for GNJ
        w_var = layer.group_view(z).pow(2) * layer.w_logvar.detach().exp()
        assert torch.allclose(w_var.log(), torch.full_like(w_var, -9.0), atol=0.1)


# ---------------------------------------------------------------------------- VGG16
def test_vgg16_builds_and_runs_under_local_reparam(cpu_threads):
    arch = vgg16()
    names = [s.name for s in arch.weighted_layers()]
    assert names == [f"conv{i}" for i in range(1, 14)] + ["fc1", "fc2"]
    assert sum(s.kind == "batchnorm" for s in arch.layers) == 13
    assert sum(s.kind == "maxpool" for s in arch.layers) == 5
    torch.manual_seed(8)
    net = BayesNet(arch, _prior("gnj"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), LocalReparameterization():
        guide_tr = poutine.trace(net.guide).get_trace(x)
        out = poutine.replay(net.forward, trace=guide_tr)(x)
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()
    sd = net.posterior_mean_state_dict()
    assert sd["conv13.weight"].shape == (512, 512, 3, 3) and sd["fc2.weight"].shape == (10, 512)
    assert "bn1.running_mean" in sd
