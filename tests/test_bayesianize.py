"""``bayesianize``: any module made Bayesian, against the module it came from.

Known answers: the posterior-mean network of a pretrained start computes the original
module's function (skip connection, branch, batch norm, strided / dilated / non-square
convolutions); the Pyro sites are named by the layers' dotted paths; the net trains with
pbc's loss on separable data.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch import nn

import pbc
from pbc import methods
from pbc.bayes.bayesianize import bayesianize
from pbc.bayes.elbo import MeanFieldELBO
from pbc.bayes.handlers import LocalReparameterization
from pbc.bayes.layers import BayesConv2d, BayesLinear
from pbc.bayes.priors import GroupHorseshoe

PRIORS = ["gnj", "ghs", "svd"]
pytestmark = pytest.mark.usefixtures("cpu_threads")  # tiny tensors: one thread is fastest


def with_biases(module: nn.Module) -> nn.Module:
    """``module`` (in place) with a zero bias in each swappable ``Linear`` / ``Conv2d`` that
    has none: the plain network that a posterior-mean state dict loads into."""
    for m in module.modules():
        swappable = type(m) is nn.Linear or (type(m) is nn.Conv2d and m.groups == 1)
        if swappable and m.bias is None:
            m.bias = nn.Parameter(m.weight.new_zeros(m.weight.shape[0]))
    return module


class Block(nn.Module):
    """A branch (two convolutions of one input, concatenated) inside a residual add."""

    def __init__(self, c: int):
        super().__init__()
        self.left = nn.Conv2d(c, c // 2, 1)
        self.right = nn.Sequential(nn.Conv2d(c, c // 2, 3, padding=1, bias=False), nn.ReLU())
        self.merge = nn.Conv2d(c, c, 1)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        branches = torch.cat([self.left(x), self.right(x)], dim=1)  # (N, C, H, W)
        return F.relu(x + self.bn(self.merge(branches)))


class Branchy(nn.Module):
    """``x: (N, 1, 8, 8) → logits (N, 2)``: stem (no bias) + BN, a block, pooled linear head."""

    def __init__(self, c: int = 4):
        super().__init__()
        self.stem = nn.Conv2d(1, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.blocks = nn.Sequential(Block(c))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 2))

    def forward(self, x):
        return self.head(self.blocks(F.relu(self.bn(self.stem(x)))))


SWAPPED = ["stem", "blocks.0.left", "blocks.0.right.0", "blocks.0.merge", "head.2"]


@pytest.fixture(scope="module")
def trained_stats_model():
    """A ``Branchy`` whose batch norms hold running statistics, in eval mode."""
    torch.manual_seed(0)
    m = Branchy()
    with torch.no_grad():
        for _ in range(3):
            m(torch.randn(16, 1, 8, 8) * 2 + 1)
    return m.eval()


def _posterior_mean_net(net, original):
    plain = with_biases(copy.deepcopy(original))
    plain.load_state_dict(net.posterior_mean_state_dict(), strict=True)
    return plain.eval()


@pytest.mark.parametrize("prior", PRIORS)
def test_pretrained_posterior_mean_computes_the_original(trained_stats_model, prior):
    original = trained_stats_model
    net = bayesianize(original, prior=prior)
    assert [layer.site for layer in net.bayes_layers()] == SWAPPED
    assert type(original.stem) is nn.Conv2d  # the original is left alone
    assert isinstance(net.body.blocks[0].right[0], BayesConv2d)
    assert isinstance(net.body.head[2], BayesLinear)
    assert type(net.body.blocks[0].bn) is nn.BatchNorm2d
    state = net.posterior_mean_state_dict()
    assert torch.equal(state["stem.bias"], torch.zeros(4))  # no bias: E[b] starts at 0
    assert torch.equal(state["blocks.0.bn.running_var"], original.blocks[0].bn.running_var)
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(_posterior_mean_net(net, original)(x), original(x), atol=1e-5)


def test_sites_are_named_by_dotted_paths(trained_stats_model):
    net = bayesianize(trained_stats_model, prior="gnj").train()
    x, y = torch.randn(3, 1, 8, 8), torch.tensor([0, 1, 1])
    guide_tr = poutine.trace(net.guide).get_trace(x, y)
    model_tr = poutine.trace(poutine.replay(net.model, trace=guide_tr)).get_trace(x, y)
    sites = [n for n, s in model_tr.nodes.items()
             if s["type"] == "sample" and not site_is_subsample(s)]
    # forward order: stem, left, right, merge, head; no site for batch norm
    assert sites == [f"{p}.{s}" for p in SWAPPED for s in ("z", "w", "b")] + ["obs"]
    assert model_tr.nodes["blocks.0.right.0.w"]["value"].shape == (2, 4, 3, 3)
    assert model_tr.nodes["head.2.z"]["value"].shape == (4,)  # input units


def _two_classes(n: int, generator: torch.Generator):
    """``(x, y)``: ``x: (n, 1, 8, 8)`` noise around −½ for class 0 and around +½ for class 1
    (a pooled head separates them)."""
    y = torch.arange(n) % 2
    x = torch.randn(n, 1, 8, 8, generator=generator) + (y.float() - 0.5)[:, None, None, None]
    return x, y


@pytest.mark.parametrize("prior", PRIORS)
def test_it_trains_with_pbcs_loss(prior):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x, y = _two_classes(64, g)
    original = Branchy()
    net = bayesianize(original, prior=prior, tau0=0.1) if prior == "ghs" else \
        bayesianize(original, prior=prior)
    method = methods.get(prior)
    optim = torch.optim.Adam(net.parameters(), lr=2e-2)
    elbo, idx, losses = MeanFieldELBO(), torch.arange(64), []
    for _ in range(30):
        optim.zero_grad()
        loss, _ = method.loss(net, elbo, x, y, idx, 64, 1.0)
        loss.backward()
        optim.step()
        net.clip_variances(0.04)
        losses.append(loss.item())
    assert sum(losses[-5:]) < sum(losses[:5]), losses
    plain = _posterior_mean_net(net, original)
    with torch.no_grad():
        accuracy = (plain(x).argmax(-1) == y).float().mean().item()
    assert accuracy > 0.75, accuracy


def test_strided_dilated_non_square_convs_match_the_originals():
    torch.manual_seed(0)
    original = nn.Sequential(
        nn.Conv2d(2, 3, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(2, 1)),
        nn.Conv2d(3, 4, (2, 3), padding="same", dilation=2, bias=False),
        nn.Conv2d(4, 2, 3, stride=2, padding="valid"),
    ).eval()
    net = bayesianize(original, prior="gnj")
    assert [type(m) for m in net.body] == [BayesConv2d] * 3
    x = torch.randn(2, 2, 11, 9)
    with torch.no_grad():
        expected = original(x)
        assert torch.allclose(_posterior_mean_net(net, original)(x), expected, atol=1e-5)
        # the Bayesian layers' own op: local reparameterisation with (almost) no variance
        for layer in net.bayes_layers():
            layer.w_logvar.fill_(-40.0)
            layer.b_logvar.fill_(-40.0)
            layer.q_scale.logvar.fill_(-40.0)
        with LocalReparameterization():
            got = net.body(x)
    assert got.shape == expected.shape == (2, 2, 2, 4)
    assert torch.allclose(got, expected, atol=1e-3)


def test_grouped_conv_stays_deterministic():
    torch.manual_seed(0)
    original = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1),
                             nn.Conv2d(4, 4, 3, groups=4, bias=False),  # depthwise
                             nn.Flatten(), nn.Linear(4 * 4 * 4, 2, bias=False))
    net = bayesianize(original, prior="svd")
    assert [layer.site for layer in net.bayes_layers()] == ["0", "3"]
    assert type(net.body[1]) is nn.Conv2d and net.body[1].groups == 4
    assert "1.bias" not in net.posterior_mean_state_dict()
    x = torch.randn(3, 2, 6, 6)
    with torch.no_grad():
        assert torch.allclose(_posterior_mean_net(net, original)(x), original(x), atol=1e-5)


def test_choosing_the_prior():
    m = nn.Sequential(nn.Linear(3, 2))
    assert bayesianize(m, prior="ghs", tau0=1e-3).prior.tau0 == 1e-3
    own = GroupHorseshoe(0.5)
    assert bayesianize(m, prior=own).prior is own
    assert pbc.bayesianize is bayesianize
    with pytest.raises(ValueError, match=r"unknown prior 'nope'; choose from \['gnj', 'ghs', "
                                         r"'svd'\]") as err:
        bayesianize(m, prior="nope")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="wrap it"):
        bayesianize(nn.Linear(3, 2))
