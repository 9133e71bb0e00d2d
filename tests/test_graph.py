"""Structured pruning of any torch graph (pbc.graph): ties, masks, removal, rebuild."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pbc.compression.masks import propagate_masks
from pbc.graph import (
    graph_masks,
    import_factory,
    module_sizes,
    prune,
    resize,
    trace,
    weight_counts,
    with_biases,
)
from pbc.nets import build_network, lenet5, lenet5_relu, lenet300

pytestmark = pytest.mark.usefixtures("cpu_threads")   # tiny tensors: one thread is faster


class Net(nn.Module):
    """stem → residual block (identity shortcut) → downsampling block (1×1-conv shortcut)
    → depthwise conv → two concatenated branches → BN → pools → flatten → fc → BN1d → fc."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.c1 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 12, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(12)
        self.short = nn.Conv2d(8, 12, 1, stride=2)
        self.dw = nn.Conv2d(12, 12, 3, padding=1, groups=12)
        self.b1 = nn.Conv2d(12, 6, 1)
        self.b2 = nn.Conv2d(12, 4, 3, padding=2, dilation=2, padding_mode="reflect")
        self.bn3 = nn.BatchNorm2d(10)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc1 = nn.Linear(40, 16)
        self.bn4 = nn.BatchNorm1d(16)
        self.fc2 = nn.Linear(16, 5)

    def forward(self, x):                                    # x: (N, 3, 8, 8)
        x = F.relu(self.bn0(self.stem(x)))
        x = torch.relu(self.bn1(self.c1(x)) + x)             # identity shortcut
        y = self.bn2(self.c2(x)) + self.short(x)             # (N, 12, 4, 4)
        y = self.dw(y.relu())
        z = torch.cat([self.b1(y), self.b2(y)], dim=1)       # (N, 10, 4, 4)
        z = self.pool(F.max_pool2d(F.relu(self.bn3(z)), 1))  # (N, 10, 2, 2)
        h = F.relu(self.bn4(self.fc1(torch.flatten(z, 1))))
        return self.fc2(h)


def _net(seed=0):
    """A :class:`Net` with random batch-norm statistics and affine terms, in eval mode."""
    torch.manual_seed(seed)
    net = Net()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-1, 1)
    return net.eval()


def _groups(graph, rng, p=0.6):
    """Random keep masks of every producer's groups (conv outputs, linear inputs)."""
    return {n: rng.random(len(graph.outputs[n] if k == "conv" else graph.inputs[n])) < p
            for n, k in graph.kinds.items() if k in ("conv", "linear")}


def _reference(net, masks, zeroed):
    """``net`` with the zeroed weights set to zero and, by forward pre-hooks, every input
    unit a conv / linear layer loses forced to 0.

    The pruned network computes exactly this: a layer without an input unit computes
    what it computes when that unit is 0, and a removed channel reaches no other
    channel-mixing op (an op the graph does not know fixes the channels reaching it, and
    the output is fixed), while the per-channel ops between (BN, ReLU, pools, depthwise
    conv) leave the kept channels alone.
    """
    ref = copy.deepcopy(net)
    with torch.no_grad():
        for name, (z_in, z_out) in zeroed.items():
            m = ref.get_submodule(name)
            m.weight[torch.from_numpy(z_out)] = 0
            if m.bias is not None:
                m.bias[torch.from_numpy(z_out)] = 0
            m.weight[:, torch.from_numpy(z_in)] = 0
    for name, (keep_in, _) in masks.items():
        m = ref.get_submodule(name)
        if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1):
            gate = torch.from_numpy(keep_in).float().view(1, -1, *[1] * (m.weight.dim() - 2))
            m.register_forward_pre_hook(lambda mod, args, gate=gate: (args[0] * gate,))
    return ref


def test_graph_of_a_residual_network_ties_adds_and_concatenates():
    g = trace(_net(), (3, 8, 8))
    roots = g.roots()
    assert g.kinds == {"stem": "conv", "bn0": "batchnorm", "c1": "conv", "bn1": "batchnorm",
                       "c2": "conv", "bn2": "batchnorm", "short": "conv", "dw": "depthwise",
                       "b1": "conv", "b2": "conv", "bn3": "batchnorm", "fc1": "linear",
                       "bn4": "batchnorm", "fc2": "linear"}
    np.testing.assert_array_equal(roots[g.outputs["stem"]], roots[g.outputs["c1"]])
    np.testing.assert_array_equal(roots[g.outputs["c2"]], roots[g.outputs["short"]])
    assert len(set(roots[g.outputs["c1"]]) | set(roots[g.outputs["c2"]])) == 20
    cat = np.concatenate([g.outputs["b1"], g.outputs["b2"]])
    np.testing.assert_array_equal(g.inputs["fc1"], np.repeat(cat, 4))     # P = 2·2
    np.testing.assert_array_equal(g.inputs["dw"], g.outputs["c2"])
    assert g.is_fixed(g.outputs["fc2"]).all() and not g.is_fixed(g.outputs["fc1"]).any()
    assert g.unrecognised == []


def test_pruned_network_equals_the_original_with_removed_inputs_forced_to_zero():
    net, x = _net(), torch.randn(4, 3, 8, 8)
    g = trace(net, (3, 8, 8))
    removed = zeroed_any = 0
    for seed in range(4):
        masks, zeroed = graph_masks(g, _groups(g, np.random.default_rng(seed)))
        pruned, sizes = prune(net, g, masks, zeroed)
        assert json.loads(json.dumps(sizes)) == sizes
        for name, (keep_in, keep_out) in masks.items():
            assert (sizes[name]["in"], sizes[name]["out"]) == (keep_in.sum(), keep_out.sum())
        torch.testing.assert_close(pruned(x), _reference(net, masks, zeroed)(x),
                                   rtol=1e-5, atol=1e-5)
        removed += sum((~m[1]).sum() for m in masks.values())
        zeroed_any += sum(z[1].sum() + z[0].sum() for z in zeroed.values())
    assert removed > 0 and zeroed_any > 0     # both cases were exercised
    assert sizes["b2"]["kind"] == "conv" and pruned.b2.padding_mode == "reflect"
    assert pruned.b2.dilation == (2, 2) and pruned.c2.stride == (2, 2)


class Tied(nn.Module):
    """Two 1×1 convs added, flattened over 1×2 positions, read by a linear layer."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):                                    # x: (N, 3, 1, 2)
        return self.fc((self.a(x) + self.b(x)).flatten(1))  # unit 2c + j ← channel c


def test_tied_channels_go_only_when_every_producer_drops_them():
    torch.manual_seed(0)
    net = Tied().eval()
    g = trace(net, (3, 1, 2))
    groups = {"a": np.array([1, 1, 0, 0], bool), "b": np.array([1, 0, 1, 0], bool),
              "fc": np.array([1, 1, 0, 1, 0, 0, 1, 0], bool)}
    masks, zeroed = graph_masks(g, groups)
    # produced (a or b): 1 1 1 0; consumed (any fc unit): 1 1 0 1 → channels 0 and 1 stay
    for name in ("a", "b"):
        np.testing.assert_array_equal(masks[name][1], [1, 1, 0, 0])
        np.testing.assert_array_equal(masks[name][0], [1, 1, 1])      # the input is fixed
    np.testing.assert_array_equal(masks["fc"][0], [1, 1, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(zeroed["a"][1], [0, 0, 0, 0])
    np.testing.assert_array_equal(zeroed["b"][1], [0, 1, 0, 0])   # b dropped 1, a keeps it
    np.testing.assert_array_equal(zeroed["fc"][0], [0, 0, 1, 0, 0, 0, 0, 0])
    assert weight_counts(net, masks, zeroed) == {
        "a": {"weights": 12, "kept": 6, "zeroed": 0},
        "b": {"weights": 12, "kept": 6, "zeroed": 3},     # row 1 of (2 out, 3 in)
        "fc": {"weights": 16, "kept": 8, "zeroed": 2}}    # column 2 of (2 out, 4 in)
    pruned, sizes = prune(net, g, masks, zeroed)
    assert sizes["fc"] == {"kind": "linear", "in": 4, "out": 2, "bias": True}
    assert pruned.b.weight[1].abs().sum() == 0 and pruned.b.bias[1] == 0
    assert pruned.fc.weight[:, 2].abs().sum() == 0 and pruned.a.weight.abs().min() > 0
    x = torch.randn(5, 3, 1, 2)
    torch.testing.assert_close(pruned(x), _reference(net, masks, zeroed)(x))


@pytest.mark.parametrize("make", [lenet300, lenet5, lenet5_relu])
def test_sequential_lenets_agree_with_propagate_masks(make):
    arch = make()
    net = build_network(arch)
    g = trace(net, arch.input_shape)
    assert net.training                                  # tracing left the mode alone
    for seed in range(3):
        rng = np.random.default_rng(seed)
        groups = {s.name: rng.random(s.out_size if s.kind == "conv" else s.in_size) < 0.5
                  for s in arch.weighted_layers()}
        want = propagate_masks(arch, groups)
        masks, zeroed = graph_masks(g, groups)
        assert set(masks) == set(want)
        for name, (p_in, p_out) in want.items():
            g_in, g_out = masks[name]
            z_in, z_out = zeroed[name]
            np.testing.assert_array_equal(g_out, p_out)
            assert not z_out.any()
            # propagate_masks also drops single inputs of kept channels (a select layer);
            # here they stay as zeroed columns — the only difference, and only at fc1
            np.testing.assert_array_equal(g_in & ~z_in, p_in)
            assert z_in.any() == (name == "fc1")
        if make is lenet300:                             # the input pixels are fixed
            assert masks["fc1"][0].all()
            np.testing.assert_array_equal(zeroed["fc1"][0], ~groups["fc1"])


class Odd(nn.Module):
    """A softmax over channels and a channel slice: neither is a rule of the graph."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c5 = (nn.Conv2d(3, 4, 1) for _ in range(3))
        self.c3, self.c4 = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y = self.c3(torch.softmax(self.c1(x), 1))
        t = (self.c2(x) + self.c5(x))[:, :2]
        return torch.cat([self.c4(y), t], 1)


def test_an_unrecognised_op_fixes_the_channels_reaching_it():
    g = trace(Odd(), (3, 4, 4))
    assert g.unrecognised == ["softmax", "getitem"]
    for name in ("c1", "c2", "c5", "c4"):               # c4 reaches the output
        assert g.is_fixed(g.outputs[name]).all()
    assert g.is_fixed(g.inputs["c3"]).all() and not g.is_fixed(g.outputs["c3"]).any()
    masks, zeroed = graph_masks(g, {n: np.zeros(4, bool) for n in ("c1", "c2", "c3", "c5")})
    for name in ("c1", "c2", "c5"):                     # kept, but computed as zeros
        assert masks[name][1].all() and zeroed[name][1].all()
    assert not masks["c3"][1].any() and not masks["c4"][0].any()


def test_a_rebuilt_factory_model_loads_the_pruned_state_strictly():
    net, x = _net(1), torch.randn(3, 3, 8, 8)
    before = net(x)
    with_biases(net)
    assert net.stem.bias is not None and not net.stem.bias.any()
    torch.testing.assert_close(net(x), before, rtol=0, atol=0)
    g = trace(net, (3, 8, 8))
    masks, zeroed = graph_masks(g, _groups(g, np.random.default_rng(5), p=0.5))
    pruned, sizes = prune(net, g, masks, zeroed, state=net.state_dict())
    sizes = json.loads(json.dumps(sizes))
    fresh = resize(with_biases(Net()), sizes)
    fresh.load_state_dict(pruned.state_dict(), strict=True)
    assert module_sizes(fresh) == sizes
    torch.testing.assert_close(fresh.eval()(x), pruned(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="missing"):
        resize(Net(), {k: v for k, v in sizes.items() if k != "fc2"})
    with pytest.raises(ValueError, match="not a valid record"):
        resize(Net(), {**sizes, "fc2": {**sizes["fc2"], "in": -1}})


def test_import_factory():
    assert import_factory("pbc.nets:lenet5") is lenet5
    assert import_factory("torch.nn:Linear.forward") is nn.Linear.forward


@pytest.mark.parametrize("spec, message", [
    ("pbc.nets.lenet5", "not of the form"), ("pbc.nets:", "not of the form"),
    (":lenet5", "not of the form"), ("pbc.nets:a b", "not of the form"), (None, "not of"),
    ("pbc.no_such_module:f", "cannot import"), ("pbc.nets:no_such", "no attribute"),
    ("pbc.nets:WEIGHTED", "not callable"),
])
def test_import_factory_errors(spec, message):
    with pytest.raises(ValueError, match=message) as err:
        import_factory(spec)
    assert "\n" not in str(err.value)
