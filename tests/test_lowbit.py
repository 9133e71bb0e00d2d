"""Low-bit inference: the 8-bit rule, weight and activation quantisation against their
bounds, the int8 kernels against the float arithmetic they replace, and the int8 export."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from pbc.cli import main
from pbc.compression import lowbit
from pbc.compression.export import (
    load_compressed,
    load_export,
    read_export,
    save_export,
    save_int8,
)
from pbc.io import load_torch
from pbc.nets import SelectUnits

needs_kernels = pytest.mark.skipif(not lowbit.int8_kernels("cpu"),
                                   reason="this torch build has no oneDNN int8 kernels")


def test_rule_is_at_most_256_distinct_weight_values():
    w = torch.linspace(-1, 1, 256).repeat(3, 1)                  # 256 values
    assert lowbit.fits_int8(w)
    w[0, 0] = 0.123456                                           # a 257th
    assert not lowbit.fits_int8(w)
    net = nn.Sequential(nn.Linear(256, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        net[0].weight.copy_(w)                                   # 257 values: stays float
        net[2].weight.copy_(torch.tensor([[0.5, -0.25, 0.0], [1.0, 0.5, 0.25]]))
    assert lowbit.int8_layer_names(net) == ["2"]
    fast = lowbit.lowbit_network(net)
    assert isinstance(fast[2], lowbit.Int8Linear) and fast[0] is net[0]


def test_weights_on_a_fixed_point_grid_are_stored_exactly():
    torch.manual_seed(0)
    step = 2.0 ** -6
    w = torch.randint(-127, 128, (7, 11)).float() * step          # the posterior's grid
    w[3] = torch.randint(-20, 21, (11,)).float() * step           # a unit with a small range
    q, s = lowbit.quantise_weight(w)
    assert q.dtype == torch.int8 and s.shape == (7,)
    assert torch.equal(q.float() * s[:, None], w)                 # bit for bit
    assert float(s[3]) < step or float(s[3]) == step              # never coarser than the grid


def test_weights_off_the_grid_round_within_half_a_step():
    torch.manual_seed(1)
    w = torch.randn(5, 2, 3, 3)
    q, s = lowbit.quantise_weight(w)
    err = (q.float() * s[:, None, None, None] - w).abs().amax((1, 2, 3))
    assert torch.all(err <= s / 2 + 1e-7)
    assert torch.all(q.abs().amax((1, 2, 3)) == 127)              # the range is used


def test_activation_codes_are_seven_bit_and_keep_zero_exact():
    torch.manual_seed(2)
    x = torch.randn(64, 30) * 3
    x[0, 0] = 0.0
    q, s, z = lowbit.quantise_activation(x)
    assert q.dtype == torch.uint8 and int(q.max()) <= lowbit.ACT_LEVELS
    assert int(q[0, 0]) == z                                      # 0 is represented exactly
    assert float((s * (q.float() - z) - x).abs().max()) <= s / 2 + 1e-5
    q, s, z = lowbit.quantise_activation(torch.rand(10, 4))       # ReLU-like: no negatives
    assert z == 0 and int(q.max()) == lowbit.ACT_LEVELS - 1


def _int8_vs_float(layer, x):
    """(int8 output, float output of the same dequantised weights and activations)."""
    q_layer = lowbit.to_int8(layer)
    q, s, z = lowbit.quantise_activation(x)
    with torch.no_grad():
        return q_layer(x), q_layer._reference(s * (q.float() - z))


@needs_kernels
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_int8_kernels_compute_the_dequantised_arithmetic(kind):
    torch.manual_seed(3)
    if kind == "linear":
        layer, x = nn.Linear(40, 9), torch.randn(33, 40)
    else:
        layer, x = nn.Conv2d(6, 5, 3, padding=1), torch.randn(4, 6, 7, 7)
    fast, ref = _int8_vs_float(layer, x)
    assert fast.shape == ref.shape
    # integer sums are exact; what differs is float rounding of the same products
    torch.testing.assert_close(fast, ref, atol=1e-4, rtol=1e-4)


@needs_kernels
@pytest.mark.parametrize("signed", [False, True])
def test_activation_codes_do_not_saturate_the_kernel(signed):
    """x86 kernels without VNNI sum u8·s8 pairs in 16 bits, which 8-bit activation codes
    overflow (2·255·127 > 32767): with them this layer is off by a tenth of its output."""
    torch.manual_seed(6)
    layer = nn.Linear(64, 8)
    x = torch.randn(50, 64) if signed else torch.rand(50, 64)
    fast, ref = _int8_vs_float(layer, x)
    torch.testing.assert_close(fast, ref, atol=1e-4, rtol=1e-4)


def test_without_kernels_the_same_function_runs_in_float(monkeypatch):
    torch.manual_seed(4)
    layer, x = nn.Linear(12, 4), torch.randn(8, 12)
    with torch.no_grad():
        expected = _int8_vs_float(layer, x)[1]
        monkeypatch.setattr(lowbit, "int8_kernels", lambda device="cpu": False)
        torch.testing.assert_close(lowbit.to_int8(layer)(x), expected)


def test_quantised_layer_stays_close_to_the_float_layer():
    torch.manual_seed(5)
    layer, x = nn.Linear(50, 6), torch.rand(20, 50)
    with torch.no_grad():
        y, y_fast = layer(x), lowbit.to_int8(layer)(x)
    # w_q x_q − w x = w_q (x_q − x) + (w_q − w) x: per output at most
    # Σ(|w| + s_w/2)·s_x/2 + Σ|x|·s_w/2
    _, s_x, _ = lowbit.quantise_activation(x)
    _, s_w = lowbit.quantise_weight(layer.weight)
    w_q_abs = layer.weight.abs() + s_w[:, None] / 2
    bound = w_q_abs.sum(1) * s_x / 2 + x.abs().sum(1, keepdim=True) * s_w / 2 + 1e-4
    assert torch.all((y_fast - y).abs() <= bound)


def _static_layer(kind: str, out_scale: float):
    torch.manual_seed(7)
    if kind == "linear":
        layer, x = nn.Linear(40, 9), torch.randn(33, 40)
    else:
        layer, x = nn.Conv2d(6, 5, 3, padding=1), torch.randn(4, 6, 7, 7)
    q_layer = lowbit.to_int8(layer)
    q_layer.output_scale.fill_(out_scale)
    q, s, z = lowbit.quantise_activation(x)
    with torch.no_grad():
        return q_layer, x, q_layer._reference(s * (q.float() - z))


@pytest.fixture(params=[True, False], ids=["kernels", "fallback"])
def kernels(request, monkeypatch) -> bool:
    """Run a test on oneDNN's kernels (skipped where the build has none), then on the
    float32 fallback path."""
    if request.param and not lowbit.int8_kernels("cpu"):
        pytest.skip("this torch build has no oneDNN int8 kernels")
    if not request.param:
        monkeypatch.setattr(lowbit, "int8_kernels", lambda device="cpu": False)
    return request.param


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_static_output_is_the_rounded_relu_at_the_fixed_scale(kind, kernels):
    s = 0.003                                # small: the largest outputs saturate at 255
    layer, x, y = _static_layer(kind, s)
    with torch.no_grad():
        codes = layer(x)
    assert codes.dtype == torch.uint8 and codes.shape == y.shape
    want = torch.round(torch.relu(y) / s).clamp_max(255)
    assert (want == 255).any() and (want == 0).any()
    # the kernel rounds its own float sum: at most one code from the reference's
    assert int((codes.float() - want).abs().max()) <= (1 if kernels else 0)


def test_code_input_is_read_at_its_scale_and_clamped_to_the_calibrated_range(kernels):
    torch.manual_seed(8)
    layer = lowbit.to_int8(nn.Linear(30, 6))
    codes = torch.randint(0, 256, (20, 30), dtype=torch.uint8)
    with pytest.raises(ValueError, match="input scale"):          # no scale: refused
        layer(codes)
    s = 0.05
    layer.input_scale.fill_(s)
    with torch.no_grad():
        got = layer(codes)
        want = layer._reference(s * codes.clamp_max(lowbit.ACT_LEVELS).float())
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("size", [(24, 24), (9, 7)])
def test_pair_max_pool_is_the_max_pool(size):
    torch.manual_seed(9)
    codes = torch.randint(0, 128, (3, 5, *size), dtype=torch.uint8)
    pool = lowbit.PairMaxPool2d.like(nn.MaxPool2d(2))
    want = nn.functional.max_pool2d(codes.float(), 2)
    for x in (codes, codes.contiguous(memory_format=torch.channels_last)):
        got = pool(x)
        assert got.dtype == torch.uint8
        assert torch.equal(got.float(), want)
    floats = torch.randn(3, 5, *size)
    want = nn.functional.max_pool2d(floats, 2)
    for x in (floats, floats.contiguous(memory_format=torch.channels_last)):
        got = pool(x)
        assert torch.equal(got, want)
        assert got.is_contiguous(memory_format=torch.channels_last) == (x.stride(1) == 1)


def _lenet5_relu_on_grid(step: float = 2.0 ** -6) -> nn.Sequential:
    """LeNet-5 with a ReLU after each layer and fc1's inputs selected (as a pruned export),
    random weights on a fixed-point grid."""
    torch.manual_seed(10)
    net = nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(1, 6, 5)), ("relu1", nn.ReLU()), ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(6, 8, 5)), ("relu2", nn.ReLU()), ("pool2", nn.MaxPool2d(2)),
        ("flatten", nn.Flatten()), ("fc1_select", SelectUnits(128, 100)),
        ("fc1", nn.Linear(100, 30)), ("relu3", nn.ReLU()), ("fc2", nn.Linear(30, 10))])).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.round(p / step) * step)
        net.fc1_select.index.copy_(torch.randperm(128)[:100].sort().values)
    return net


def test_calibration_fixes_scales_from_the_float_activations_and_routes_codes():
    net = _lenet5_relu_on_grid()
    x = torch.rand(200, 1, 28, 28)
    fast = lowbit.lowbit_network(net, calibration=x)
    with torch.no_grad():
        top = {"conv1": net[:2](x).max(), "conv2": net[:5](x).max(), "fc1": net[:10](x).max()}
    scales = lowbit.code_scales(fast)
    for name, value in top.items():            # a clip of the float maximum, on the grid
        fraction = scales[name] * lowbit.ACT_LEVELS / float(value)
        assert min(abs(fraction - f) for f in lowbit.CLIP_FRACTIONS) < 1e-5
    for writer, reader in (("conv1", "conv2"), ("conv2", "fc1"), ("fc1", "fc2")):
        assert float(getattr(fast, reader).input_scale) == scales[writer]
    assert float(fast.conv1.input_scale) == 0 and float(fast.fc2.output_scale) == 0
    assert [type(m).__name__ for m in fast] == [
        "Int8Conv2d", "Identity", "PairMaxPool2d", "Int8Conv2d", "Identity", "PairMaxPool2d",
        "Flatten", "SelectUnits", "Int8Linear", "Identity", "Int8Linear"]
    assert isinstance(net.relu1, nn.ReLU) and type(net.pool1) is nn.MaxPool2d  # net untouched
    with torch.no_grad():
        y, y_static = net(x), fast(x)
        y_dynamic = lowbit.lowbit_network(net)(x)
    assert y_static.dtype == torch.float32
    # 7-bit activations at a fixed scale lose about as much as at a per-batch scale
    err_static, err_dynamic = (y_static - y).abs().max(), (y_dynamic - y).abs().max()
    assert err_static <= 2 * err_dynamic and err_static < 0.05 * y.abs().max()
    assert (y_static.argmax(1) == y.argmax(1)).float().mean() > 0.9


def test_calibration_clips_a_long_tail_where_that_keeps_the_float_predictions():
    torch.manual_seed(12)
    net = nn.Sequential(OrderedDict([("fc1", nn.Linear(8, 16)), ("relu", nn.ReLU()),
                                     ("fc2", nn.Linear(16, 5))])).eval()
    x = torch.randn(400, 8)
    x[0] *= 40                       # one calibration input 40 times the others' size
    fast = lowbit.lowbit_network(net, calibration=x)
    with torch.no_grad():
        top = float(net[:2](x).max())
        predicted = net(x).argmax(1)

        def changed(fraction):
            fast.fc1.output_scale.fill_(fraction * top / lowbit.ACT_LEVELS)
            fast.fc2.input_scale.fill_(fraction * top / lowbit.ACT_LEVELS)
            return int((fast(x).argmax(1) != predicted).sum())

        chosen = lowbit.code_scales(fast)["fc1"]
        flips = [changed(f) for f in lowbit.CLIP_FRACTIONS]
    best = min(range(len(flips)), key=lambda n: (flips[n], n))      # ties: the wider clip
    assert chosen == pytest.approx(lowbit.CLIP_FRACTIONS[best] * top / lowbit.ACT_LEVELS)
    assert best > 0 and flips[best] < flips[0]   # the outlier's full range costs predictions


def test_calibration_leaves_layers_without_a_relu_link_dynamic():
    torch.manual_seed(11)
    net = nn.Sequential(OrderedDict([("fc1", nn.Linear(8, 6)), ("tanh", nn.Tanh()),
                                     ("fc2", nn.Linear(6, 6)), ("relu", nn.ReLU()),
                                     ("fc3", nn.Linear(6, 3))])).eval()
    fast = lowbit.lowbit_network(net, calibration=torch.randn(50, 8))
    assert list(lowbit.code_scales(fast)) == ["fc2"]             # fc1's tanh is no link
    assert isinstance(fast.tanh, nn.Tanh) and isinstance(fast.relu, nn.Identity)
    assert float(fast.fc2.input_scale) == 0 and float(fast.fc3.input_scale) > 0


def _on_a_coarse_grid(run, step: float = 2.0 ** -5):
    """Rewrite ``run``'s quantised export with every weight on a grid of ``step`` (a tiny
    run's posterior asks for more than 8 bits); returns its architecture."""
    arch, net = read_export(run / "quantised.pt")
    state = {k: torch.round(v / step) * step if k.endswith(".weight") else v
             for k, v in net.state_dict().items()}
    save_export(run / "quantised.pt", arch, state)
    return arch


def test_int8_export_round_trip(trained_runs, tmp_path):
    run = trained_runs.copy(tmp_path / "run", "lenet5", "gnj", "compressed")
    arch = _on_a_coarse_grid(run)
    quantised = load_export(run / "quantised.pt")
    x = torch.rand(16, *arch.input_shape)
    fast = lowbit.lowbit_network(load_export(run / "quantised.pt"), calibration=x)
    names = save_int8(tmp_path / "m.int8.pt", arch, fast)
    assert names == lowbit.int8_layer_names(quantised) == ["conv1", "conv2", "fc1", "fc2"]
    for name in names:                        # on the grid: the int8 weights are exact
        assert torch.equal(getattr(fast, name).dequantised_weight(),
                           getattr(quantised, name).weight)
    raw = load_torch(tmp_path / "m.int8.pt")                      # weights_only=True
    assert raw["state_dict"]["fc1.weight_int8"].dtype == torch.int8
    assert "fc1.weight" not in raw["state_dict"]
    assert list(lowbit.code_scales(fast)) == ["fc1"]              # fc1 → ReLU → fc2
    back = load_compressed(tmp_path / "m.int8.pt")
    assert [type(m) for m in back] == [type(m) for m in fast]
    assert lowbit.code_scales(back) == lowbit.code_scales(fast)
    assert float(back.fc2.input_scale) == lowbit.code_scales(fast)["fc1"]
    with torch.no_grad():
        assert torch.equal(back(x), fast(x))
    # a file written before static scales loads as dynamic quantisation throughout
    for key in [k for k in raw["state_dict"] if k.endswith(("input_scale", "output_scale"))]:
        del raw["state_dict"][key]
    torch.save(raw, tmp_path / "old.int8.pt")
    old = load_compressed(tmp_path / "old.int8.pt")
    assert lowbit.code_scales(old) == {} and isinstance(old[-2], nn.ReLU)
    with torch.no_grad():
        assert torch.equal(old(x), lowbit.lowbit_network(quantised)(x))


def test_export_command_writes_int8_and_compares_errors(trained_runs, tmp_path, capsys):
    analysed = trained_runs.path("lenet300", "gnj", "analysed")
    with pytest.raises(SystemExit) as e:                          # export before compress
        main(["export", str(analysed)])
    assert e.value.code == 2
    run = trained_runs.copy(tmp_path / "run", "lenet300", "gnj", "compressed")
    if not lowbit.int8_layer_names(load_export(run / "quantised.pt")):
        with pytest.raises(SystemExit) as e:                      # nothing fits in 8 bits
            main(["export", str(run)])
        assert e.value.code == 2
    _on_a_coarse_grid(run)
    assert main(["export", str(run), "--format", "int8"]) == 0
    out = capsys.readouterr().out
    assert "int8 layers fc1, fc2, fc3" in out and "test error: quantised (float32)" in out
    assert "uint8 activations after fc1 (scale" in out and "fc2 (scale" in out
    assert (run / "model.int8.pt").stat().st_size < (run / "quantised.pt").stat().st_size
    back = load_compressed(run / "model.int8.pt")
    assert [n for n, m in back.named_children() if isinstance(m, lowbit.Int8Layer)] == \
        ["fc1", "fc2", "fc3"]
    assert list(lowbit.code_scales(back)) == ["fc1", "fc2"]
    assert not any(isinstance(m, nn.ReLU) for m in back)
