"""Local reparameterisation (``pbc.handlers``) against explicit sampling of z, w and b.

Local reparameterisation draws each output unit from its marginal distribution given the
input (``z`` per example, ``w̃`` integrated out); explicit sampling draws ``z``, ``w``, ``b``
from the guide and applies the layer.  Per output unit the two distributions must agree, so
their means and variances are compared within a few (estimated) standard errors.
"""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro import poutine

from pbc.bayes.distributions import GroupScaledNormal
from pbc.bayes.handlers import (
    LocalReparameterization,
    local_reparam_active,
    local_reparam_output,
)
from pbc.bayes.layers import BayesConv2d, BayesLinear
from pbc.bayes.net import BayesNet
from pbc.bayes.priors import make_prior
from pbc.nets import lenet300

N_LR = 20_000  # replicated rows through the local-reparameterisation path
N_SE = 5.0  # tolerance in standard errors (each test makes ≤ 100 comparisons)


def _make_layer(kind: str, prior_name: str):
    prior = make_prior(prior_name, tau0=1e-1)
    torch.manual_seed(11)
    if kind == "linear":
        layer, x = BayesLinear("fc", 6, 4, prior), torch.randn(1, 6)
    else:
        layer, x = BayesConv2d("conv", 2, 3, 3, prior), torch.randn(1, 2, 6, 6)
    _set_nontrivial_params(layer)
    return layer, x


@torch.no_grad()
def _set_nontrivial_params(layer):
    """Posterior with visible spread in every factor: E[z] from ~0.5 to 1.5–2, sd(w̃) ≈ 0.37."""
    p = layer._parameters
    p["w_loc"].copy_(0.7 * torch.randn_like(p["w_loc"]))
    p["w_logvar"].copy_(-2.0 + 0.3 * torch.randn_like(p["w_logvar"]))
    p["b_loc"].copy_(0.5 * torch.randn_like(p["b_loc"]))
    p["b_logvar"].copy_(-2.0 + 0.3 * torch.randn_like(p["b_logvar"]))
    g = layer.q_scale
    n = layer.n_groups
    if g is None:  # Sparse VD: no group scales
        return
    if layer.prior.name == "gnj":
        g.loc.copy_(torch.linspace(0.5, 1.5, n))
        g.logvar.copy_(torch.full((n,), math.log(0.3**2)))
    else:
        log_tau2 = 2 * math.log(layer.prior.tau0)
        g.sa_loc.fill_(log_tau2)
        g.sb_loc.fill_(-log_tau2 + 0.2)
        g.sa_logvar.fill_(math.log(0.1))
        g.sb_logvar.fill_(math.log(0.1))
        # E[log z̃] spans [−0.8, 0.6], E[log s] = 0.1, Var[log z] = 0.1: E[z] ≈ 0.53–2.1
        g.za_loc.copy_(torch.linspace(-0.8, 0.6, n))
        g.zb_loc.copy_(torch.linspace(-0.8, 0.6, n))
        g.za_logvar.fill_(math.log(0.1))
        g.zb_logvar.fill_(math.log(0.1))


def _explicit_draw(layer, x):
    guide_tr = poutine.trace(layer.guide).get_trace()
    return poutine.replay(layer, trace=guide_tr)(x)


def _moments(y):
    """Mean, variance and their standard errors (from the sample 4th moment) per column."""
    n = y.shape[0]
    mean = y.mean(0)
    c = y - mean
    var = c.pow(2).mean(0) * n / (n - 1)
    m4 = c.pow(4).mean(0)
    return mean, var, (var / n).sqrt(), ((m4 - var.pow(2)).clamp_min(0) / n).sqrt()


# Explicit draws per case.  Across 10 seeds these sizes gave max |Δvar|/SE ≤ 3.2 and
# max relative variance error ≤ 0.13 over all output units, against limits 5 and 0.2.
CASES = [("linear", "gnj", 4000), ("conv", "gnj", 4000),
         ("linear", "ghs", 2500), ("conv", "ghs", 2500),
         ("linear", "svd", 4000), ("conv", "svd", 4000)]


@pytest.mark.parametrize("kind, prior_name, n_draws", CASES)
def test_local_reparam_matches_explicit_sampling(kind, prior_name, n_draws, cpu_threads):
    layer, x = _make_layer(kind, prior_name)
    torch.manual_seed(12)
    with torch.no_grad():
        # (a) guide + model under the handler, one input replicated N_LR times
        x_rep = x.expand(N_LR, *x.shape[1:]).contiguous()
        with LocalReparameterization():
            guide_tr = poutine.trace(layer.guide).get_trace()
            lr = poutine.replay(layer, trace=guide_tr)(x_rep)
        # ... and the handler's kernel called directly (a fresh draw, same distribution)
        lr_direct = local_reparam_output(layer, x_rep)
        # (b) explicit: z, w, b drawn from the guide, the layer applied, no handler
        ex = torch.cat([_explicit_draw(layer, x) for _ in range(n_draws)])
    assert lr.shape == (N_LR,) + ex.shape[1:]

    for y in (lr, lr_direct):
        m_a, v_a, sem_a, sev_a = _moments(y.reshape(y.shape[0], -1))
        m_b, v_b, sem_b, sev_b = _moments(ex.reshape(ex.shape[0], -1))
        z_mean = (m_a - m_b).abs() / (sem_a.pow(2) + sem_b.pow(2)).sqrt()
        z_var = (v_a - v_b).abs() / (sev_a.pow(2) + sev_b.pow(2)).sqrt()
        assert z_mean.max() < N_SE, (z_mean.max(), m_a, m_b)
        assert z_var.max() < N_SE, (z_var.max(), v_a, v_b)
        # relative agreement of variances, at the precision ~N_SE·sev_b/v_b these sizes allow
        rel = ((v_a - v_b).abs() / v_b).max().item()
        assert rel < 0.2, rel


def test_local_reparam_sees_z_variance():
    """Sanity: dropping z's variance changes the output variance visibly, so the comparison
    above does distinguish a handler that ignored the per-example z draw."""
    layer, x = _make_layer("linear", "gnj")
    torch.manual_seed(13)
    x_rep = x.expand(N_LR, -1)
    with torch.no_grad():
        v_full = local_reparam_output(layer, x_rep).var(0)
        layer.q_scale.logvar.fill_(-30.0)
        v_no_z = local_reparam_output(layer, x_rep).var(0)
    assert ((v_full - v_no_z) / v_full).min() > 0.1


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("prior_name", ["gnj", "ghs"])
def test_handler_draws_no_weights_and_leaves_placeholders(kind, prior_name, monkeypatch):
    layer, x = _make_layer(kind, prior_name)

    def _forbidden(*args, **kwargs):
        raise AssertionError("a weight was sampled under LocalReparameterization")

    monkeypatch.setattr(GroupScaledNormal, "rsample", _forbidden)
    monkeypatch.setattr(GroupScaledNormal, "sample", _forbidden)
    with LocalReparameterization():
        guide_tr = poutine.trace(layer.guide).get_trace()
        model_tr = poutine.trace(poutine.replay(layer, trace=guide_tr)).get_trace(x)
    site = layer.site
    deferred = [name for name, node in guide_tr.nodes.items()
                if node["type"] == "sample" and node["infer"].get("local_reparam")]
    factors = ["z"] if prior_name == "gnj" else ["sa", "sb", "za", "zb"]
    assert deferred == [f"{site}.{f}" for f in factors + ["w", "b"]]
    # every deferred site (the global z or its factors, w, b) holds ones of its shape as an
    # expanded scalar: nothing was drawn or computed for it
    for name in deferred:
        node = guide_tr.nodes[name]
        shape = node["fn"].batch_shape + node["fn"].event_shape
        assert node["value"].shape == shape and node["value"].dtype == layer.w_loc.dtype, name
        assert torch.all(node["value"] == 1) and all(st == 0 for st in node["value"].stride())
        # the model sees the same (replayed) values
        assert model_tr.nodes[name]["value"] is node["value"], name
    if prior_name == "ghs":
        # z = s·z̃ of placeholders is no draw: not recorded as a site under the handler
        assert f"{site}.z" not in guide_tr.nodes and f"{site}.s" not in guide_tr.nodes
    # the output is a draw from the pre-activation's Gaussian: it differs from the
    # posterior-mean forward pass, and from a second draw
    out = model_tr.nodes["_RETURN"]["value"]
    mean_out = layer.functional(x, *layer.posterior_mean())
    assert out.shape == mean_out.shape
    assert not torch.allclose(out, mean_out)
    with LocalReparameterization():
        again = poutine.replay(layer, trace=guide_tr)(x)
    assert not torch.allclose(out, again)


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("prior_name", ["gnj", "ghs"])
def test_without_handler_layer_applies_traced_weights(kind, prior_name):
    layer, x = _make_layer(kind, prior_name)
    x = x.expand(3, *x.shape[1:])
    pyro.set_rng_seed(14)
    guide_tr = poutine.trace(layer.guide).get_trace()
    model_tr = poutine.trace(poutine.replay(layer, trace=guide_tr)).get_trace(x)
    site = layer.site
    w = model_tr.nodes[f"{site}.w"]["value"]
    b = model_tr.nodes[f"{site}.b"]["value"]
    z = guide_tr.nodes[f"{site}.z"]["value"]
    assert torch.equal(w, guide_tr.nodes[f"{site}.w"]["value"])
    out = model_tr.nodes["_RETURN"]["value"]
    assert torch.equal(out, layer.functional(x, w, b))
    # the weights are a genuine draw of z·w̃ (not the conditional mean)
    assert not torch.allclose(w, layer.group_view(z) * layer.w_loc)
    # a conv's bias is scaled by its filter's z; a linear layer's is not
    b_fn = guide_tr.nodes[f"{site}.b"]["fn"]
    assert isinstance(b_fn, GroupScaledNormal)
    if kind == "conv":
        assert torch.equal(b_fn.z, z)
    else:
        assert b_fn.z == 1.0


def test_local_reparam_active_is_an_effect_the_handler_answers():
    """``local_reparam_active()`` is ``False`` with no handler or under others, ``True``
    inside :class:`LocalReparameterization` (also beneath other handlers), ``False`` again
    after it exits.  Like a sample site, the effect does not reach the handler through
    ``poutine.block``: there the guide's sites are drawn, and the answer says so."""
    assert local_reparam_active() is False
    with poutine.trace(), poutine.scale(scale=2.0):
        assert local_reparam_active() is False
    with LocalReparameterization():
        assert local_reparam_active() is True
        with poutine.trace(), poutine.scale(scale=2.0):
            assert local_reparam_active() is True
        with poutine.block():
            assert local_reparam_active() is False
            d = pyro.distributions.Normal(torch.zeros(3), 1.0).to_event(1)
            v = pyro.sample("v", d, infer={"local_reparam": True})
            assert not torch.all(v == 1)  # drawn, not a placeholder
    assert local_reparam_active() is False


def test_horseshoe_deterministic_sites_only_without_the_handler():
    """GHS records ``L.s`` and ``L.z`` (functions of its factors' draws) in model and guide
    without local reparameterisation; under it the factors are placeholders and neither
    trace records them."""
    torch.manual_seed(15)
    net = BayesNet(lenet300(), make_prior("ghs", tau0=1e-1))
    x, y = torch.randn(2, 1, 28, 28), torch.tensor([1, 7])
    deterministic = {f"{layer}.{s}" for layer in ("fc1", "fc2", "fc3") for s in ("s", "z")}

    def traces():
        guide_tr = poutine.trace(net.guide).get_trace(x, y)
        model_tr = poutine.trace(poutine.replay(net.model, trace=guide_tr)).get_trace(x, y)
        return guide_tr, model_tr

    with torch.no_grad():
        plain = traces()
        with LocalReparameterization():
            handled = traces()
    for tr in plain:
        assert deterministic <= set(tr.nodes)
        assert all(tr.nodes[n]["infer"].get("_deterministic") for n in deterministic)
    for tr in handled:
        assert deterministic.isdisjoint(tr.nodes)
        assert {"fc1.sa", "fc1.za", "fc1.w"} <= set(tr.nodes)  # the factors' sites remain
