"""Closed-form KL terms and prior conventions of ``pbc.priors`` against known answers.

Every Monte Carlo comparison uses a fixed seed and a tolerance of a few standard errors that
are themselves estimated from the samples, so a failure means a real disagreement rather
than an unlucky draw.
"""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from scipy import integrate
from torch.distributions import kl_divergence

from pbc.bayes.distributions import GroupScaledNormal, ImproperLogUniform
from pbc.bayes.kl import K1, kl_lognormal_gamma, kl_lognormal_inverse_gamma
from pbc.bayes.priors import GroupHorseshoe, GroupNormalJeffreys, make_prior

N_MC = 400_000
N_SE = 4.0  # tolerance in standard errors



def _kl_lognormal(q, p):
    """KL of torch's ``LogNormal`` against ``Gamma`` or ``InverseGamma`` by pbc's closed forms
    (plain functions: pbc registers no KL between torch's own types)."""
    if isinstance(p, dist.InverseGamma):
        return kl_lognormal_inverse_gamma(q, p)
    return kl_lognormal_gamma(q, p)


def test_importing_pbc_registers_no_kl_between_torch_types():
    """Other callers of kl_divergence see torch's own table: no closed form was added."""
    import pbc.bayes.kl  # noqa: F401
    import pbc.methods  # noqa: F401

    with pytest.raises(NotImplementedError):
        kl_divergence(dist.LogNormal(_t(0.0), _t(1.0)), dist.Gamma(_t(0.5), _t(1.0)))
    with pytest.raises(NotImplementedError):
        kl_divergence(dist.LogNormal(_t(0.0), _t(1.0)), dist.InverseGamma(_t(0.5), _t(1.0)))

def _t(x):
    return torch.tensor(x, dtype=torch.float64)


def _mc_kl(q, p, n=N_MC):
    """Monte Carlo ``E_q[log q − log p]`` and its standard error."""
    x = q.sample((n,))
    d = q.log_prob(x) - p.log_prob(x)
    return d.mean().item(), (d.std() / math.sqrt(n)).item()


# ---------------------------------------------------------------------------- log-normal KLs
TAU0 = 1e-2


@pytest.mark.parametrize(
    "mu, sigma, k, r",
    [
        (0.3, 0.8, 0.5, 1.0),  # the z̃ factor `za`
        (0.5, 0.7, 0.5, 1.0),
        (-1.0, 0.4, 2.0, 3.0),
        # the global `sa` factor: rate 1/τ0², q centred near log τ0² (where the guide starts)
        (math.log(TAU0**2) + 0.2, 0.6, 0.5, 1.0 / TAU0**2),
    ],
)
def test_kl_lognormal_gamma_matches_monte_carlo(mu, sigma, k, r):
    torch.manual_seed(1)
    q = dist.LogNormal(_t(mu), _t(sigma))
    p = dist.Gamma(_t(k), _t(r))  # (concentration, rate)
    closed = _kl_lognormal(q, p).item()
    mc, se = _mc_kl(q, p)
    assert se < 0.01, "MC too noisy to be a meaningful check"
    assert abs(closed - mc) < N_SE * se, (closed, mc, se)
    # and the formula of DESIGN.md §4, written out independently
    design = (-k * math.log(r) + math.lgamma(k) - k * mu + r * math.exp(mu + sigma**2 / 2)
              - 0.5 * (1 + math.log(2 * math.pi * sigma**2)))
    assert closed == pytest.approx(design, rel=1e-10, abs=1e-10)


@pytest.mark.parametrize(
    "mu, sigma, k, r",
    [
        (0.3, 0.8, 0.5, 1.0),  # the z̃ factor `zb`
        (0.0, 1.0, 0.5, 1.0),
        (-0.5, 0.5, 1.5, 2.0),
        # the global `sb` factor: q centred near −log τ0² (where the guide starts)
        (-math.log(TAU0**2) - 0.2, 0.6, 0.5, 1.0),
    ],
)
def test_kl_lognormal_inverse_gamma_matches_monte_carlo(mu, sigma, k, r):
    torch.manual_seed(2)
    q = dist.LogNormal(_t(mu), _t(sigma))
    p = dist.InverseGamma(_t(k), _t(r))
    closed = _kl_lognormal(q, p).item()
    mc, se = _mc_kl(q, p)
    assert se < 0.01, "MC too noisy to be a meaningful check"
    assert abs(closed - mc) < N_SE * se, (closed, mc, se)
    design = (-k * math.log(r) + math.lgamma(k) + k * mu + r * math.exp(-mu + sigma**2 / 2)
              - 0.5 * (1 + math.log(2 * math.pi * sigma**2)))
    assert closed == pytest.approx(design, rel=1e-10, abs=1e-10)


def test_lognormal_gamma_kl_is_accurate_in_float32_at_paper_tau0():
    """τ0 = 1e-5 (the paper's) makes the rate 1e10; float32 must still get the KL right."""
    tau0 = 1e-5
    mu, sigma = 2 * math.log(tau0) + 0.1, math.exp(-4.5)
    kls = [_kl_lognormal(dist.LogNormal(torch.tensor(mu, dtype=dt), torch.tensor(sigma, dtype=dt)),
                         dist.Gamma(torch.tensor(0.5, dtype=dt), torch.tensor(tau0**-2, dtype=dt)))
           for dt in (torch.float32, torch.float64)]
    assert torch.isfinite(kls[0])
    assert kls[0].item() == pytest.approx(kls[1].item(), rel=1e-4)


def test_lognormal_kls_broadcast_elementwise():
    """Batched parameters give the elementwise KLs (the za/zb sites are vectors)."""
    mu, sigma = _t([0.1, -0.3, 0.7]), _t([0.5, 1.1, 0.2])
    for p_cls in (dist.Gamma, dist.InverseGamma):
        batched = _kl_lognormal(dist.LogNormal(mu, sigma), p_cls(_t(0.5), _t(1.0)))
        assert batched.shape == (3,)
        for i in range(3):
            one = _kl_lognormal(dist.LogNormal(mu[i], sigma[i]), p_cls(_t(0.5), _t(1.0)))
            assert batched[i].item() == pytest.approx(one.item(), rel=1e-12)


# ---------------------------------------------------------------------------- GroupScaledNormal
Z_LINEAR = [[-1.3, 0.4, 2.1]]  # (1, 3): one scale per input unit (dim 1), one negative


def _gsn_pair(z):
    torch.manual_seed(3)
    shape = (4, 3)
    q = GroupScaledNormal(torch.randn(shape, dtype=torch.float64),
                          torch.rand(shape, dtype=torch.float64) + 0.3, z)
    p = GroupScaledNormal(0.5 * torch.randn(shape, dtype=torch.float64),
                          torch.rand(shape, dtype=torch.float64) + 0.6, z)
    return q, p


def test_group_scaled_normal_kl_matches_monte_carlo_and_is_z_free():
    z = _t(Z_LINEAR)
    q, p = _gsn_pair(z)
    closed = kl_divergence(q, p)
    assert closed.shape == ()

    torch.manual_seed(4)
    mc, se = _mc_kl(q, p, n=200_000)
    assert abs(closed.item() - mc) < N_SE * se, (closed.item(), mc, se)

    # the sum of elementwise Normal KLs of the unscaled (loc, scale) pairs
    elementwise = kl_divergence(dist.Normal(q.loc, q.scale), dist.Normal(p.loc, p.scale)).sum()
    assert closed.item() == pytest.approx(elementwise.item(), rel=1e-12)

    # a different z (shared by q and p) leaves the KL unchanged
    q2, p2 = _gsn_pair(_t([[0.05, -3.0, 0.7]]))
    assert kl_divergence(q2, p2).item() == pytest.approx(closed.item(), rel=1e-12)


def test_standard_normal_kl_value_and_hand_written_gradients():
    """The guide's ``GroupScaledNormal`` (``logvar``) against the standard prior: the value is
    ``½ Σ (σ² + μ² − 1 − log σ²)`` and the hand-written backward passes ``gradcheck``."""
    from pbc.bayes.kl import _StandardNormalKL

    torch.manual_seed(5)
    loc = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    logvar = (torch.randn(4, 3, dtype=torch.float64) - 2.0).requires_grad_()
    q = GroupScaledNormal(loc, z=_t(Z_LINEAR), logvar=logvar)
    p = GroupScaledNormal.standard_prior((4, 3), _t(Z_LINEAR), loc)
    expected = kl_divergence(dist.Normal(loc, (0.5 * logvar).exp()),
                             dist.Normal(_t(0.0), _t(1.0))).sum()
    torch.testing.assert_close(kl_divergence(q, p), expected)
    assert torch.autograd.gradcheck(_StandardNormalKL.apply, (loc, logvar))


def test_gamma_family_kl_constant_path_matches_tensor_path():
    """Fixed scalar (or expanded) hyperparameters take a Python-float path; it must give the
    values and gradients of the tensor path used for learned or per-element ones."""
    from pbc.bayes.distributions import LogNormalFactor

    loc = _t([0.3, -1.2, 2.0]).requires_grad_()
    logvar = _t([-1.0, 0.2, -4.0]).requires_grad_()
    q = LogNormalFactor(loc, logvar)
    for p_cls, k, r in ((dist.Gamma, 0.5, 1e4), (dist.InverseGamma, 0.5, 1.0)):
        fixed = p_cls(_t(k), _t(r)).expand([3])                       # stride-0 parameters
        learned = p_cls(_t(k).requires_grad_(), _t(r))               # tensor path
        per_element = p_cls(_t([k, k, k]), _t([r, r, r]) * _t([1.0, 1.0, 1.0]))
        kls = [kl_divergence(q, p) for p in (fixed, learned, per_element)]
        grads = [torch.autograd.grad(v.sum(), (loc, logvar)) for v in kls]
        for v, g in zip(kls[1:], grads[1:], strict=True):
            torch.testing.assert_close(v, kls[0])
            torch.testing.assert_close(g, grads[0])
        assert "_pbc_kl_constants" in fixed.__dict__ and "_pbc_kl_constants" not in learned.__dict__


def test_group_scaled_normal_moments_and_log_prob():
    z = _t(Z_LINEAR)
    q, _ = _gsn_pair(z)
    torch.manual_seed(5)
    n = 200_000
    w = q.rsample((n,))
    assert w.shape == (n, 4, 3)
    mean, var = w.mean(0), w.var(0)
    assert torch.allclose(q.mean, z * q.loc)
    assert torch.allclose(q.variance, (z * q.scale) ** 2)
    se_mean = (var / n).sqrt()
    assert ((mean - q.mean).abs() < N_SE * se_mean).all()
    # Gaussian samples: Var of the sample variance is 2σ⁴/(n−1)
    se_var = q.variance * math.sqrt(2.0 / (n - 1))
    assert ((var - q.variance).abs() < N_SE * se_var).all()

    v = w[:7]
    ref = dist.Normal(z * q.loc, z.abs() * q.scale).log_prob(v).sum((-1, -2))
    got = q.log_prob(v)
    assert got.shape == (7,)
    assert torch.allclose(got, ref, rtol=1e-12, atol=1e-10)


def test_group_scaled_normal_conv_layout():
    """Conv filters: z of shape (F, 1, 1, 1) scales whole output channels."""
    torch.manual_seed(6)
    loc = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    scale = torch.rand(3, 2, 3, 3, dtype=torch.float64) + 0.1
    z = _t([0.5, -1.5, 2.0])[:, None, None, None]
    d = GroupScaledNormal(loc, scale, z)
    v = d.rsample()
    assert v.shape == (3, 2, 3, 3)
    ref = dist.Normal(z * loc, z.abs() * scale).log_prob(v).sum()
    assert d.log_prob(v).item() == pytest.approx(ref.item(), rel=1e-12)


# ---------------------------------------------------------------------------- Molchanov et al.
def _expected_log_abs_eps(log_alpha: float) -> float:
    """``E log|ε|`` for ``ε ~ N(1, α)`` by quadrature (integrable log singularity at 0)."""
    s = math.exp(0.5 * log_alpha)
    c = 1.0 / (s * math.sqrt(2 * math.pi))

    def f(e):
        return math.log(abs(e)) * c * math.exp(-0.5 * ((e - 1.0) / s) ** 2)

    neg = integrate.quad(f, -np.inf, 0.0, limit=200)[0]
    pos = integrate.quad(f, 0.0, np.inf, limit=200)[0]
    return neg + pos


def _approx_kl(mu: float, log_alpha: float) -> float:
    sigma = abs(mu) * math.exp(0.5 * log_alpha)
    q = dist.Normal(_t(mu), _t(sigma))
    return kl_divergence(q, ImproperLogUniform(())).item()


def test_molchanov_approximation_is_tight_up_to_a_constant():
    """KL(N(μ, αμ²) ‖ 1/|z|) = −½ log α + E_{ε~N(1,α)} log|ε| + const (exact); the registered
    approximation must differ from it by (nearly) a constant, namely (γ + log 2)/2 = k1."""
    grid = np.linspace(-4.0, 4.0, 17)
    diffs = []
    for la in grid:
        exact_up_to_const = -0.5 * la + _expected_log_abs_eps(la)
        diffs.append(_approx_kl(0.8, la) - exact_up_to_const)
    diffs = np.array(diffs)
    assert diffs.max() - diffs.min() < 0.03, diffs
    # the constant is the one that makes the KL vanish as α → ∞: −E log|N(0,1)| = (γ + ln 2)/2
    limit = 0.5 * (np.euler_gamma + math.log(2.0))
    assert limit == pytest.approx(K1, abs=1e-3)
    assert np.abs(diffs - limit).max() < 0.03


def test_molchanov_kl_limits_and_symmetry():
    assert abs(_approx_kl(1.0, 20.0)) < 1e-3
    assert abs(_approx_kl(-0.3, 20.0)) < 1e-3
    # small α: KL ≈ −½ log α + const grows without bound
    assert _approx_kl(1.0, -8.0) > _approx_kl(1.0, -4.0) > _approx_kl(1.0, 0.0) > 0.0
    for la in (-3.0, 0.0, 2.5):
        assert _approx_kl(0.7, la) == pytest.approx(_approx_kl(-0.7, la), rel=1e-12)
        # depends on μ and σ only through α (up to the 1e-8 that keeps log μ² finite)
        assert _approx_kl(0.7, la) == pytest.approx(_approx_kl(3.1, la), rel=1e-6)


def test_molchanov_kl_through_independent_sites():
    """The model/guide use ``.to_event(1)``: the KL is the sum over groups."""
    loc, scale = _t([0.9, -1.2, 0.1]), _t([0.1, 0.6, 0.5])
    q = dist.Normal(loc, scale).to_event(1)
    p = ImproperLogUniform((3,)).to_event(1)
    total = kl_divergence(q, p)
    parts = [_approx_kl(loc[i].item(), 2 * math.log(scale[i].item() / abs(loc[i].item())))
             for i in range(3)]
    assert total.item() == pytest.approx(sum(parts), rel=1e-6)


# ---------------------------------------------------------------------------- make_prior
def test_make_prior():
    gnj = make_prior("gnj")
    assert isinstance(gnj, GroupNormalJeffreys) and gnj.config() == {"name": "gnj"}
    ghs = make_prior("ghs", tau0=1e-3)
    assert isinstance(ghs, GroupHorseshoe) and ghs.tau0 == 1e-3
    assert ghs.config() == {"name": "ghs", "tau0": 1e-3}
    assert make_prior("ghs").tau0 == 1e-5
    with pytest.raises(ValueError, match="unknown prior"):
        make_prior("horseshoe")
    for bad in (0.0, -1e-3, float("nan")):
        with pytest.raises(ValueError):
            make_prior("ghs", tau0=bad)


# ---------------------------------------------------------------------------- horseshoe
def _half_cauchy_cdf(x, scale):
    return 2.0 / math.pi * math.atan(x / scale)


def test_horseshoe_factors_reproduce_half_cauchy():
    """sqrt(sa·sb) with the model's own Gamma/InvGamma sites is C⁺(0, τ0) (rate, not scale)."""
    tau0, n_groups = 1e-2, 2
    prior = GroupHorseshoe(tau0)
    like = torch.zeros((), dtype=torch.float64)
    tr = poutine.trace(prior.sample_scales).get_trace("L", n_groups, like)
    assert set(tr.stochastic_nodes) == {"L.sa", "L.sb", "L.za", "L.zb"}
    assert tr.nodes["L.z"]["value"].shape == (n_groups,)
    torch.manual_seed(7)
    n = 200_000
    sa, sb = (tr.nodes[k]["fn"].sample((n,)) for k in ("L.sa", "L.sb"))
    za, zb = (tr.nodes[k]["fn"].sample((n,))[:, 0] for k in ("L.za", "L.zb"))
    s, zt = torch.sqrt(sa * sb), torch.sqrt(za * zb)

    for p in (0.1, 0.25, 0.5, 0.75, 0.9):
        se = math.sqrt(p * (1 - p) / n)
        q_s = tau0 * math.tan(math.pi * p / 2)
        assert _half_cauchy_cdf(q_s, tau0) == pytest.approx(p)
        assert abs((s <= q_s).double().mean().item() - p) < 4.5 * se
        q_t = math.tan(math.pi * p / 2)
        assert abs((zt <= q_t).double().mean().item() - p) < 4.5 * se

    # z = s·z̃: log(z/τ0) is a sum of two independent variables with density 1/(π cosh x),
    # whose density is 2x / (π² sinh x); compare CDFs at a few points.
    z = s * zt

    def dens(x):
        return 2.0 / math.pi**2 * (1.0 if abs(x) < 1e-8 else x / math.sinh(x))

    for x in (-3.0, -1.0, 0.0, 0.5, 2.0):
        cdf = integrate.quad(dens, -60.0, x)[0]
        se = math.sqrt(cdf * (1 - cdf) / n)
        emp = (z <= tau0 * math.exp(x)).double().mean().item()
        assert abs(emp - cdf) < 4.5 * se, (x, emp, cdf)


def test_horseshoe_guide_starts_at_unit_scales():
    guide = GroupHorseshoe(1e-5).guide(5)
    pyro.set_rng_seed(0)
    mean, var = guide.log_z_moments()
    assert mean.shape == (5,) and var.shape == (5,)
    assert mean.abs().max() < 0.05  # s = z̃ = 1 up to the N(·, 0.01²) jitter


def test_log_normal_factor_matches_log_normal():
    """The guide's light log-normal has the law, density, mean and KLs of LogNormal."""
    from pbc.bayes.distributions import LogNormalFactor

    torch.manual_seed(0)
    loc = torch.tensor([-23.0, 0.3, 2.0], dtype=torch.float64)
    logvar = torch.tensor([-9.0, -1.0, 0.5], dtype=torch.float64)
    q = LogNormalFactor(loc, logvar)
    ref = dist.LogNormal(loc, torch.exp(0.5 * logvar))
    x = ref.sample((5,))
    torch.testing.assert_close(q.log_prob(x), ref.log_prob(x))
    torch.testing.assert_close(q.mean, ref.mean)
    half = torch.tensor(0.5, dtype=torch.float64)
    for p in (dist.Gamma(half, torch.tensor(1e10, dtype=torch.float64)),
              dist.Gamma(half, torch.ones((), dtype=torch.float64)),
              dist.InverseGamma(half, torch.ones((), dtype=torch.float64))):
        torch.testing.assert_close(kl_divergence(q, p), _kl_lognormal(ref, p))
    draws = LogNormalFactor(loc[1:], logvar[1:]).rsample((200_000,))
    torch.testing.assert_close(draws.log().mean(0), loc[1:], atol=0.01, rtol=0)
    torch.testing.assert_close(draws.log().var(0), logvar[1:].exp(), atol=0, rtol=0.02)
