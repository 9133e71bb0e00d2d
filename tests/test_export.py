"""``pbc export`` to TorchScript, ONNX and a plain state dict: each file, read back by its own
loader, computes the quantised network's function (TorchScript and ONNX at two batch sizes, on
random inputs), and the state dict rebuilds the network strictly, bit for bit.  The int8
format is tested in test_lowbit.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import one_line_error

from pbc.cli import main
from pbc.compression.export import read_export
from pbc.defaults import EXPORT_FILES
from pbc.export import (
    OnnxNetwork,
    load_state_dict_export,
    save_onnx,
    save_state_dict,
    save_torchscript,
)
from pbc.io import ArtefactError, StageError
from pbc.nets import Architecture, LayerSpec, build_network

BATCHES = (1, 7)   # two batch sizes; the example the ONNX exporter traces has 2


def _onnx_extra():
    for name in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(name)


def every_kind():
    """A network with every layer kind a compressed network may hold (conv, batch norm,
    max-pool, flatten, select, linear, ReLU), random weights and statistics."""
    arch = Architecture("every-kind", (1, 6, 6), (
        LayerSpec("conv", "conv1", 1, 4, 3, 1), LayerSpec("batchnorm", "bn1", 4, 4),
        LayerSpec("relu", "relu0"), LayerSpec("maxpool", "pool1", kernel=2),
        LayerSpec("flatten", "flatten"), LayerSpec("select", "fc1_select", 36, 20),
        LayerSpec("linear", "fc1", 20, 16), LayerSpec("relu", "relu1"),
        LayerSpec("linear", "fc2", 16, 10)))
    net = build_network(arch)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for v in net.state_dict().values():
            if v.is_floating_point():
                v.copy_(torch.rand(v.shape, generator=gen) + 0.5)
    net.fc1_select.index = torch.randperm(36, generator=gen)[:20].sort().values
    return arch, net.eval()


@pytest.fixture(scope="module", params=["lenet300", "lenet5", "every-kind"])
def quantised(request, trained_runs):
    """(architecture, quantised network) of a shared compressed tiny run, or
    :func:`every_kind`."""
    if request.param == "every-kind":
        return every_kind()
    return read_export(trained_runs.path(request.param, "gnj", "compressed") / "quantised.pt")


def _agree(back, net, arch: Architecture, atol: float):
    torch.manual_seed(0)
    for n in BATCHES:
        x = torch.randn(n, *arch.input_shape)
        with torch.no_grad():
            want, got = net(x), back(x)
        assert got.shape == want.shape == (n, 10)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=atol)


def test_torchscript_computes_the_quantised_network(quantised, tmp_path):
    arch, net = quantised
    save_torchscript(tmp_path / "m.pt", arch, net)
    extra = {"pbc_arch.json": ""}
    back = torch.jit.load(str(tmp_path / "m.pt"), _extra_files=extra)
    _agree(back, net, arch, atol=1e-6)
    assert Architecture.from_dict(json.loads(extra["pbc_arch.json"])) == arch


def test_torchscript_loads_without_pbc(trained_runs, tmp_path):
    """A fresh interpreter runs the file through torch alone: pbc is never imported."""
    arch, net = read_export(trained_runs.path("lenet300", "gnj", "compressed") / "quantised.pt")
    save_torchscript(tmp_path / "m.pt", arch, net)
    code = ("import sys, torch\n"
            "m = torch.jit.load(sys.argv[1])\n"
            "y = m(torch.zeros(3, 1, 28, 28))\n"
            "assert 'pbc' not in sys.modules, 'pbc was imported'\n"
            "print(tuple(y.shape))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.pt")], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "(3, 10)"


def test_onnx_computes_the_quantised_network(quantised, tmp_path):
    _onnx_extra()
    import onnx

    arch, net = quantised
    save_onnx(tmp_path / "m.onnx", arch, net)
    back = OnnxNetwork(tmp_path / "m.onnx")
    _agree(back, net, arch, atol=1e-5)
    model = onnx.load(str(tmp_path / "m.onnx"))
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param == "batch" and not batch.HasField("dim_value")     # dynamic
    meta = {p.key: p.value for p in model.metadata_props}
    assert Architecture.from_dict(json.loads(meta["pbc.arch"])) == arch
    assert list((tmp_path).iterdir()) == [tmp_path / "m.onnx"]      # weights inside the file


def test_state_dict_rebuilds_strictly_bit_for_bit(quantised, tmp_path):
    arch, net = quantised
    written = save_state_dict(tmp_path / "m.state_dict.pt", arch, net)
    meta_path = tmp_path / "m.state_dict.json"
    assert written == {"arch_path": str(meta_path)}
    state = torch.load(tmp_path / "m.state_dict.pt", weights_only=True)   # a plain state dict
    want = net.state_dict()
    assert state.keys() == want.keys()
    assert all(torch.equal(state[k], want[k]) for k in want)
    meta = json.loads(meta_path.read_text())           # what a user without the helper does
    rebuilt = build_network(Architecture.from_dict(meta["arch"]))
    rebuilt.load_state_dict(state, strict=True)
    back = load_state_dict_export(tmp_path / "m.state_dict.pt")
    x = torch.randn(5, *arch.input_shape)
    with torch.no_grad():
        assert torch.equal(back(x), net(x)) and torch.equal(rebuilt.eval()(x), net(x))


def test_state_dict_that_does_not_fit_its_architecture_is_refused(trained_runs, tmp_path):
    arch, net = read_export(trained_runs.path("lenet300", "gnj", "compressed") / "quantised.pt")
    path = tmp_path / "m.state_dict.pt"
    save_state_dict(path, arch, net)
    state = torch.load(path, weights_only=True)
    state["fc9.weight"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(ArtefactError, match="do not match"):
        load_state_dict_export(path)
    with pytest.raises(StageError, match="suffix"):
        save_state_dict(tmp_path / "m.json", arch, net)


def test_export_command_writes_each_format_and_compares_errors(trained_runs, tmp_path, capsys):
    run = trained_runs.copy(tmp_path / "run", "lenet300", "gnj", "compressed")
    formats = ["torchscript", "state-dict"]
    if all(_installed(p) for p in ("onnx", "onnxscript", "onnxruntime")):
        formats.append("onnx")
    for fmt in formats:
        assert main(["export", str(run), "--format", fmt]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0].startswith(f"{run / EXPORT_FILES[fmt]}: ") and fmt in out[0]
        quantised, back = (float(w.rstrip(",")) for w in out[1].split()[4::2])
        assert out[1].startswith("test error: quantised (float32)")
        assert back == pytest.approx(quantised, abs=0.011)     # at most one of 100 images
    assert (run / "model.state_dict.json").is_file()


def test_onnx_without_the_extra_names_it(trained_runs, tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxscript" else real(name, *a))
    run = trained_runs.path("lenet300", "gnj", "compressed")
    with pytest.raises(SystemExit) as e:
        main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
    assert e.value.code == 2
    one_line_error(capsys.readouterr().err, "onnxscript", "pbc[onnx]")
    assert not (tmp_path / "m.onnx").exists()


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
