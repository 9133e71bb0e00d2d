"""Soft weight-sharing after a run too short for its mixture to separate: the compress stage
gets a poor network, not a constant one."""

from __future__ import annotations

import numpy as np
import torch

from pbc.methods import sws
from pbc.methods.sws import SoftSharingNet, SoftWeightSharing
from pbc.nets import build_network, lenet300


def _untrained_mixture_net():
    """A LeNet-300-100 at its initial weights (|w| below 0.05 in fc1) under a mixture at its
    initial state: the fixed π_0 = 0.99 outweighs every other component in fc1 and fc2."""
    torch.manual_seed(0)
    arch = lenet300()
    net = SoftSharingNet(arch)
    net.load_point_estimate(build_network(arch).state_dict())
    return arch, net


def test_an_unseparated_mixture_still_compresses_to_a_network():
    arch, net = _untrained_mixture_net()
    state = net.posterior_mean_state_dict()
    comps = sws.merge_components(net.prior.components())
    claimed = [n for n in ("fc1", "fc2") if not sws.responsibilities_argmax(
        state[f"{n}.weight"].numpy(), comps).any()]
    assert claimed == ["fc1", "fc2"]            # by responsibility: the whole layers pruned
    plan = SoftWeightSharing().compression_plan(None, None, arch, net)
    for name, (in_m, out_m) in plan.masks.items():
        assert in_m.any() and out_m.any(), f"{name} pruned away"
    q = plan.quantise("fc1", state["fc1.weight"].numpy())
    assert q.bits["assigned_by"].startswith("likelihood")
    assert 0.5 < (q.codes != 0).mean() < 1.0    # most weights kept, the smallest still zero
    used = q.codebook[np.unique(q.codes)]
    assert used[0] == 0 and np.all(np.isin(used[1:], comps.mean.astype(np.float32)))
    assert plan.quantise("fc3", state["fc3.weight"].numpy()).bits["assigned_by"] \
        == "responsibility"                     # a layer the mixture does separate


def test_without_the_fallback_the_network_would_be_a_constant(monkeypatch):
    """The check above can fail: by responsibility alone fc1 loses every unit."""
    arch, net = _untrained_mixture_net()
    monkeypatch.setattr(sws, "layer_components", lambda w, c: (c, False))
    plan = SoftWeightSharing().compression_plan(None, None, arch, net)
    assert not plan.masks["fc1"][0].any()
