"""Benchmark stage: FLOP counts by hand, the timer, the CSR layer, the bench.json schema."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from pbc.bench import SparseLinear, flops, pad_linear_widths, time_forward, to_csr
from pbc.cli import main


def test_flops_of_small_layers_by_hand():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(2 * 3 * 3, 4), nn.ReLU(), nn.Linear(4, 3))
    # conv: 8×8 input → 6×6 output, 2 filters of 1×3×3: 36 · 2 · 9 = 648 MACs
    # fc: 18·4 = 72 MACs, 4·3 = 12 MACs → 732 MACs = 1464 FLOPs per example
    assert flops(net, (1, 8, 8)) == 2 * (648 + 72 + 12)
    assert flops(net, (1, 8, 8), batch=5) == 5 * 1464


def test_csr_layer_counts_nonzeros_and_matches_dense():
    lin = nn.Linear(6, 4)
    with torch.no_grad():
        lin.weight[:, :3] = 0.0                    # 12 of 24 weights stay nonzero
    csr = to_csr(nn.Sequential(lin))
    assert isinstance(csr[0], SparseLinear)
    assert flops(csr, (6,)) == 2 * 12
    x = torch.randn(5, 6)
    with torch.no_grad():
        torch.testing.assert_close(csr(x), lin(x))


def test_padding_hidden_widths_keeps_the_function():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 107), nn.ReLU(), nn.Linear(107, 33),
                        nn.ReLU(), nn.Linear(33, 10)).eval()
    padded = pad_linear_widths(net, 16)
    widths = [(m.in_features, m.out_features) for m in padded if isinstance(m, nn.Linear)]
    assert widths == [(12, 112), (112, 48), (48, 10)]
    x = torch.randn(7, 3, 4)
    with torch.no_grad():
        torch.testing.assert_close(padded(x), net(x))
    # 12·107 + 107·33 + 33·10 → 12·112 + 112·48 + 48·10 multiply-adds
    assert flops(padded, (3, 4)) == 2 * (12 * 112 + 112 * 48 + 48 * 10)


def test_timer_on_a_trivial_module():
    calls = []

    class Count(nn.Module):
        def forward(self, x):
            calls.append(1)
            return x

    r = time_forward(Count(), torch.zeros(1), repeats=7, warmup=2)
    assert len(calls) == 9 and r["repeats"] == 7
    s = r["spread"]
    assert 0 <= s["min"] <= s["q25"] <= r["median_s"] <= s["q75"] <= s["max"] < 1.0


@pytest.mark.parametrize("model", ["lenet300", "lenet5"])
def test_bench_json_schema(trained_runs, tmp_path, model):
    analysed = trained_runs.copy(tmp_path / "analysed", model, "gnj", "analysed")
    with pytest.raises(SystemExit) as e:         # bench before compress: stage order
        main(["bench", str(analysed), "--batch", "8", "--repeats", "2"])
    assert e.value.code == 2
    run = trained_runs.copy(tmp_path / model, model, "gnj", "compressed")
    assert main(["bench", str(run), "--batch", "16", "--repeats", "3", "--threads", "1"]) == 0
    rec = json.loads((run / "bench.json").read_text())
    assert {"device", "device_name", "threads", "batch", "energy_note", "variants"} <= set(rec)
    assert rec["threads"] == 1 and rec["batch"] == 16 and rec["device"] == "cpu"
    names = [v["name"] for v in rec["variants"]]
    assert names == ["dense", "dense-pad16", "pruned", "pruned-pad16", "quantised", "csr"]
    for v in rec["variants"]:
        assert {"median_s", "spread", "flops", "speedup", "ideal_speedup", "energy_j"} <= set(v)
        assert v["energy_j"] is None and v["median_s"] > 0 and v["flops"] > 0
    dense = rec["variants"][0]
    assert dense["speedup"] == 1.0 and dense["ideal_speedup"] == 1.0
    pruned = rec["variants"][2]
    assert pruned["ideal_speedup"] == pytest.approx(dense["flops"] / pruned["flops"])
    assert (run / "figures" / "bench.png").stat().st_size > 1000
