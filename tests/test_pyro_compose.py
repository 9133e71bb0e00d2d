"""``BayesNet`` and ``MeanFieldELBO`` composed with Pyro's own machinery: ``SVI`` over the global
param store, ``Predictive`` with the guide, ``TraceMeanField_ELBO``, ``poutine.scale``/``mask``."""

from __future__ import annotations

import math

import pyro
import pyro.infer.trace_mean_field_elbo as tmf_module
import pytest
import torch
from conftest import tiny_arch
from pyro import poutine
from pyro.infer import SVI, Predictive, TraceMeanField_ELBO

from pbc.bayes.distributions import ImproperLogUniform
from pbc.bayes.elbo import MeanFieldELBO
from pbc.bayes.net import BayesNet
from pbc.bayes.priors import make_prior

PRIORS = ["gnj", "ghs", "svd"]


def _batch():
    return torch.randn(6, 1, 3, 3), torch.tensor([0, 2, 1, 2, 0, 1])


# ---------------------------------------------------------------------------- SVI
@pytest.mark.parametrize("prior_name", PRIORS)
def test_svi_with_global_param_store_trains_the_net(prior_name):
    torch.manual_seed(0)
    net = BayesNet(tiny_arch(), make_prior(prior_name, tau0=0.1))
    x, y = _batch()
    before = {k: v.detach().clone() for k, v in net.named_parameters()}
    with pyro.settings.context(module_local_params=False):
        pyro.set_rng_seed(1)
        svi = SVI(net.model, net.guide, pyro.optim.Adam({"lr": 1e-2}), loss=MeanFieldELBO())
        losses = [svi.step(x, y) for _ in range(30)]
        store = pyro.get_param_store()
        # every parameter of the net is in the store, as the module's own tensor
        assert set(store.keys()) == {f"net$$${k}" for k in before}
        for k, p in net.named_parameters():
            assert store[f"net$$${k}"] is p, k
    assert pyro.settings.get("module_local_params")  # restored
    for k, p in net.named_parameters():
        assert not torch.equal(p.detach(), before[k]), f"{k} was not optimised"
    assert all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < first, (first, last)


def test_module_local_guide_emits_no_param_sites():
    """With module-local parameters (the training loop's setting) the guide adds no ``param``
    message per step: its trace holds sample sites only."""
    net = BayesNet(tiny_arch(), make_prior("gnj"))
    x, y = _batch()
    assert pyro.settings.get("module_local_params")
    tr = poutine.trace(net.guide).get_trace(x, y)
    assert [n for n, s in tr.nodes.items() if s["type"] == "param"] == []
    assert len(pyro.get_param_store()) == 0
    with pyro.settings.context(module_local_params=False):
        tr = poutine.trace(net.guide).get_trace(x, y)
    assert len([n for n, s in tr.nodes.items() if s["type"] == "param"]) == \
        len(list(net.parameters()))


# ---------------------------------------------------------------------------- Predictive
@torch.no_grad()
def _confident_posterior(net):
    """``q`` that puts class 2 first by a wide margin (fc2's bias) with a narrow spread, and
    (GNJ) group scales far from the prior's prototype 1: ``μ_z`` from 0.5 to 1.5, sd 0.1."""
    fc2 = net.body.fc2
    fc2.b_loc.copy_(torch.tensor([0.0, 0.0, 50.0]))
    fc2.b_logvar.fill_(-20.0)
    if net.prior.name == "gnj":
        q = net.body.fc1.q_scale
        q.loc.copy_(torch.linspace(0.5, 1.5, q.n_groups))
        q.logvar.fill_(2 * math.log(0.1))


@pytest.mark.parametrize("prior_name", PRIORS)
def test_predictive_draws_from_the_guide(prior_name):
    torch.manual_seed(2)
    net = BayesNet(tiny_arch(), make_prior(prior_name, tau0=0.1))
    _confident_posterior(net)
    x, _ = _batch()
    n = 100 if prior_name == "gnj" else 20  # Predictive runs model and guide once per sample
    pyro.set_rng_seed(3)
    out = Predictive(net.model, guide=net.guide, num_samples=n)(x)
    # one class per sample and example: the data plate (dim −1) is the only plate
    assert out["obs"].shape == (n, x.shape[0])
    assert out["fc1.w"].shape == (n, 1, 5, 8) and out["conv1.w"].shape == (n, 1, 2, 1, 2, 2)
    # the classes come from the guide's weights and biases (a prior draw b ~ N(0, 1) would
    # rarely rank class 2 first)
    assert torch.all(out["obs"] == 2)
    if prior_name == "gnj":
        z = out["fc1.z"]
        assert z.shape == (n, 1, 8)
        q = net.body.fc1.q_scale
        se = 0.1 / math.sqrt(n)
        assert ((z.mean(0)[0] - q.loc).abs() < 5 * se).all(), (z.mean(0), q.loc)
        assert z.std(0).mean().item() == pytest.approx(0.1, rel=0.15)
    if prior_name == "svd":
        assert "fc1.z" not in out
    # the model's weights are the guide's: w = z·w̃ around E[w] = E[z]·μ
    w_mean, _ = net.body.fc1.posterior_mean()
    assert torch.allclose(out["fc1.w"].mean(0)[0], w_mean, atol=0.05)


def test_improper_prior_sample_is_a_prototype():
    """An improper prior has no draws; ``sample`` gives ones of the requested shape (what
    Predictive's structure trace needs), never anything random."""
    p = ImproperLogUniform((3,)).to_event(1)
    v = p.sample((2,))
    assert v.shape == (2, 3) and torch.all(v == 1)
    assert torch.equal(p.sample(), p.sample())


# ---------------------------------------------------------------------------- TraceMeanField_ELBO
def _ghs_net():
    torch.manual_seed(4)
    net = BayesNet(tiny_arch(), make_prior("ghs", tau0=0.1))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net


def _loss_and_grads(elbo, net, model, guide, args, seed):
    net.zero_grad(set_to_none=True)
    pyro.set_rng_seed(seed)
    loss = elbo.differentiable_loss(model, guide, *args)
    loss.backward()
    return loss.item(), {k: p.grad.clone() for k, p in net.named_parameters()}


# Pyro's model/guide check counts the guide's deterministic sites (L.s, L.z) as guide-only
# variables (pyro-ppl/pyro#3361); they are recorded in the model too.
DETERMINISTIC_IN_GUIDE = "ignore:Found non-auxiliary vars in guide but not model"


@pytest.mark.filterwarnings(DETERMINISTIC_IN_GUIDE)
def test_mean_field_elbo_matches_trace_mean_field_elbo(monkeypatch):
    net = _ghs_net()
    x, y = _batch()
    args = (x, y, torch.tensor([1, 5, 9, 11, 20, 33]), 40)  # subsampled: scale 40/6

    # record which KLs TraceMeanField_ELBO takes in closed form (it falls back to Monte
    # Carlo where kl_divergence raises NotImplementedError)
    closed, missing = [], []

    def recording_kl(q, p):
        try:
            kl = torch.distributions.kl_divergence(q, p)
        except NotImplementedError:
            missing.append((type(q).__name__, type(p).__name__))
            raise
        closed.append((type(q).__name__, type(p).__name__))
        return kl

    monkeypatch.setattr(tmf_module, "kl_divergence", recording_kl)
    ours = MeanFieldELBO(local_reparam=False)
    theirs = TraceMeanField_ELBO(max_plate_nesting=1)  # no plate-guessing run: same draws
    loss_a, grads_a = _loss_and_grads(ours, net, net.model, net.guide, args, seed=5)
    loss_b, grads_b = _loss_and_grads(theirs, net, net.model, net.guide, args, seed=5)

    latent = [n for n, s in poutine.trace(net.guide).get_trace(*args).nodes.items()
              if s["type"] == "sample" and not s["is_observed"]]
    assert missing == [] and len(closed) == len(latent) == 18  # 3 layers × (4 factors, w, b)
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    for k in grads_a:
        torch.testing.assert_close(grads_a[k], grads_b[k], rtol=1e-4, atol=1e-6)
    # and the float-valued interface SVI uses
    pyro.set_rng_seed(5)
    assert ours.loss(net.model, net.guide, *args) == pytest.approx(loss_a, rel=1e-6)
    # a different draw gives a different loss: the agreement above is draw by draw
    loss_c, _ = _loss_and_grads(ours, net, net.model, net.guide, args, seed=6)
    assert loss_c != pytest.approx(loss_a, rel=1e-5)


@pytest.mark.filterwarnings(DETERMINISTIC_IN_GUIDE)
def test_guide_mask_removes_kl_and_model_scale_multiplies_loglik():
    net = _ghs_net()
    x, y = _batch()
    elbo = MeanFieldELBO(local_reparam=False)
    tmf = TraceMeanField_ELBO(max_plate_nesting=1)

    def terms(model, guide):
        pyro.set_rng_seed(7)
        return elbo.terms(model, guide, x, y)

    def tmf_loss(model, guide):
        pyro.set_rng_seed(7)
        return tmf.loss(model, guide, x, y)

    base = terms(net.model, net.guide)
    assert base.kl.item() > 1.0 and base.expected_loglik.item() < -1.0

    masked = terms(net.model, poutine.mask(net.guide, mask=False))
    assert masked.kl.item() == 0.0
    assert masked.expected_loglik.item() == pytest.approx(base.expected_loglik.item(), rel=1e-6)
    assert masked.loss.item() == pytest.approx(-base.expected_loglik.item(), rel=1e-6)
    assert tmf_loss(net.model, poutine.mask(net.guide, mask=False)) == \
        pytest.approx(masked.loss.item(), rel=1e-5)

    doubled = terms(poutine.scale(net.model, scale=2.0), net.guide)
    assert doubled.expected_loglik.item() == \
        pytest.approx(2 * base.expected_loglik.item(), rel=1e-6)
    assert doubled.kl.item() == pytest.approx(base.kl.item(), rel=1e-6)  # the guide's scale
    assert tmf_loss(poutine.scale(net.model, scale=2.0), net.guide) == \
        pytest.approx(doubled.loss.item(), rel=1e-5)
