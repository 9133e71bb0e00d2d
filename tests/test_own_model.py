"""The user's own network (``--model package.module:callable``) through the architecture
record, structured pruning along its dependency graph, and the compressed files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pbc.compression.export import load_compressed, save_export
from pbc.compression.masks import kept_weight_mask, propagate_masks
from pbc.compression.plan import structured_export
from pbc.io import ArtefactError
from pbc.nets import Architecture, build_network, make_architecture, plain_network
from pbc.zoo import resnet8_narrow

FACTORY = "pbc.zoo:resnet8_narrow"


@pytest.fixture(scope="module")
def arch():
    return make_architecture(FACTORY, (1, 28, 28), 10)


def _random_bn(net: torch.nn.Module, gen: torch.Generator) -> None:
    """Batch-norm statistics and affine parameters far from the identity, so that a
    channel whose weights are all zero still leaves its batch norm as a non-zero constant."""
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(generator=gen)
            m.running_var.uniform_(0.5, 2.0, generator=gen)
            m.weight.data.uniform_(0.5, 1.5, generator=gen)
            m.bias.data.normal_(generator=gen)


def test_record_lists_sized_modules_and_round_trips(arch):
    names = [s.name for s in arch.weighted_layers()]
    assert names[:3] == ["conv1", "layers.0.conv1", "layers.0.conv2"]
    assert "layers.1.shortcut.0" in names and names[-1] == "fc"
    assert {s.kind for s in arch.layers} == {"conv", "linear", "batchnorm"}
    d = arch.to_dict()
    assert d["factory"] == FACTORY
    again = Architecture.from_dict(d, resnet8_narrow)
    assert again == arch
    # the bias-free convs of the factory's network get a (zero) bias: the Bayesian layers have one
    net = build_network(again)
    assert net.get_submodule("layers.0.conv1").bias is not None
    assert torch.equal(net.get_submodule("layers.0.conv1").bias, torch.zeros(4))


def test_a_record_alone_never_imports_its_factory(arch):
    bare = Architecture.from_dict(arch.to_dict())
    with pytest.raises(ValueError, match="pass that factory"):
        build_network(bare)


def test_wrong_factories_are_refused_in_one_line():
    with pytest.raises(ValueError, match="expected logits of shape"):
        make_architecture(FACTORY, (1, 28, 28), 7)
    with pytest.raises(ValueError, match="cannot import"):
        make_architecture("no_such_package_xyz:net", (1, 28, 28), 10)
    with pytest.raises(ValueError, match="not a torch nn.Module"):
        make_architecture("builtins:dict", (1, 28, 28), 10)


def test_pruned_network_equals_the_masked_dense_network(arch):
    """Known answer: the physically pruned network computes what the full network computes
    with every pruned weight set to zero — exactly, batch-norm constants included, because a
    channel leaves only when no layer reads it any more."""
    gen = torch.Generator().manual_seed(0)
    dense = build_network(arch).eval()
    _random_bn(dense, gen)
    rng = np.random.default_rng(0)
    groups = {s.name: rng.random(s.in_size if s.kind == "linear" else s.out_size) < 0.6
              for s in arch.weighted_layers()}
    for g in groups.values():
        g[0] = True                                # no layer left without units
    masks = propagate_masks(arch, groups)
    structured = structured_export(arch, dense.state_dict(), masks)
    pruned = plain_network(structured.arch, structured.state)

    masked = {k: v.clone() for k, v in dense.state_dict().items()}
    for s in arch.weighted_layers():
        w = masked[f"{s.name}.weight"]
        w *= torch.from_numpy(np.array(kept_weight_mask(s.kind, tuple(w.shape), *masks[s.name])))
        if s.kind == "conv":
            masked[f"{s.name}.bias"] *= torch.from_numpy(masks[s.name][1])
    reference = plain_network(arch, masked)
    x = torch.randn(6, 1, 28, 28, generator=gen)
    torch.testing.assert_close(pruned(x), reference(x), rtol=0, atol=1e-5)
    kept = sum(structured.state[f"{n}.weight"].numel() for n in structured.weighted)
    total = sum(dense.state_dict()[f"{s.name}.weight"].numel() for s in arch.weighted_layers())
    assert kept < total


def test_a_factory_export_loads_only_with_its_factory(arch, tmp_path):
    net = build_network(arch).eval()
    save_export(tmp_path / "net.pt", arch, net.state_dict())
    with pytest.raises(ArtefactError, match="pbc.zoo:resnet8_narrow"):
        load_compressed(tmp_path / "net.pt")
    again = load_compressed(tmp_path / "net.pt", builder=resnet8_narrow)
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(again(x), net(x))


# ------------------------------------------------------------------- through the command line
MYMODELS = '''
import torch
from torch import nn


class TinyResNet(nn.Module):
    """A skip connection (an addition) and a branch (a concatenation), with batch norm."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.left = nn.Conv2d(8, 8, 3, padding=1)
        self.right = nn.Conv2d(8, 4, 1)
        self.merge = nn.Conv2d(12, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = x + torch.relu(self.left(x))
        x = torch.cat([x, torch.relu(self.right(x))], 1)
        x = torch.relu(self.merge(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def tiny_resnet():
    return TinyResNet()
'''


def test_own_network_through_the_command_line(tmp_path, monkeypatch, capsys):
    """``--model mymodels:tiny_resnet`` (a skip connection and a branch) trains one epoch on
    generated data, is analysed, compressed and evaluated; the TorchScript and ONNX exports
    predict what the pruned, quantised network in memory predicts."""
    from conftest import make_idx_dataset, tiny_train_args

    from pbc.cli import main
    from pbc.compression.export import load_export
    from pbc.graph.rebuild import import_factory

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mymodels.py").write_text(MYMODELS)
    data = make_idx_dataset(tmp_path / "data")
    run = tmp_path / "run"
    assert main(tiny_train_args(data, run, model="mymodels:tiny_resnet")) == 0
    assert main(["analyse", str(run), "--draws", "8", "--no-figures"]) == 0
    assert main(["compress", str(run)]) == 0
    assert main(["evaluate", str(run)]) == 0
    assert main(["evaluate", str(run), "--samples", "4"]) == 0
    assert (run / "predictive.json").is_file()
    out = capsys.readouterr().out
    assert "monte carlo: error" in out and "posterior mean: error" in out

    quantised = load_export(run / "quantised.pt", import_factory("mymodels:tiny_resnet"))
    x = torch.rand(7, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = quantised(x)
    assert main(["export", str(run), "--format", "torchscript"]) == 0
    scripted = torch.jit.load(str(run / "model.torchscript.pt"))
    torch.testing.assert_close(scripted(x), expected, rtol=0, atol=1e-5)
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from pbc.export import OnnxNetwork

    assert main(["export", str(run), "--format", "onnx"]) == 0
    torch.testing.assert_close(OnnxNetwork(run / "model.onnx")(x), expected, rtol=0, atol=1e-4)
    # a compressed file alone names no code to import: evaluate needs the factory
    assert main(["evaluate", str(run / "model.pbcz")]) == 1
    assert main(["evaluate", str(run / "model.pbcz"), "--factory",
                 "mymodels:tiny_resnet"]) == 0


def test_the_readme_example_model_goes_through_the_graph(tmp_path, monkeypatch):
    """The README's "Your own model" code, as written: its factory gives a record, a
    Bayesian net with a site per layer, and a pruned network of the same graph."""
    from pathlib import Path

    from pbc import bayesianize

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("## Your own model"):]
    code = section[section.index("```python\n") + 10:]
    (tmp_path / "readme_models.py").write_text(code[:code.index("```")])
    monkeypatch.chdir(tmp_path)
    arch = make_architecture("readme_models:tiny_resnet", (1, 28, 28), 10)
    assert [s.name for s in arch.weighted_layers()] == ["stem", "block", "head"]
    net = bayesianize(arch.builder(), prior="gnj")
    assert [layer.site for layer in net.bayes_layers()] == ["stem", "block", "head"]
    groups = {"stem": np.array([True] * 6 + [False] * 2), "block": np.array([False] * 8),
              "head": np.ones(8, bool)}
    # the skip connection ties stem's and block's channels: those stem keeps stay
    masks = propagate_masks(arch, groups)
    assert masks["block"][1].sum() == 0 and masks["stem"][1].sum() == 6
    structured = structured_export(arch, build_network(arch).state_dict(), masks)
    assert structured.state["block.weight"].shape == (6, 6, 3, 3)


class _Grouped(torch.nn.Module):
    """A grouped (not depthwise) conv between two Bayesian ones."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(1, 8, 3)
        self.g = torch.nn.Conv2d(8, 8, 3, groups=2)
        self.dw = torch.nn.Conv2d(8, 8, 3, groups=8)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x):
        x = self.dw(torch.relu(self.g(torch.relu(self.a(x)))))
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))


def test_grouped_convolutions_keep_their_groups_through_the_record():
    arch = make_architecture("x:grouped", (1, 28, 28), 10, builder=_Grouped)
    assert {s.name: s.kind for s in arch.layers} == {"a": "conv", "g": "fixed", "dw": "fixed",
                                                     "fc": "linear"}
    net = build_network(arch)
    assert net.g.groups == 2 and net.dw.groups == 8
