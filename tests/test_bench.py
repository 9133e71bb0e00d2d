"""Benchmark stage: FLOP counts by hand, the interleaved timer, subnormal weights and
flush-to-zero, the CSR layer, the bench.json schema."""

from __future__ import annotations

import copy
import json
import resource

import pytest
import torch
from torch import nn

from pbc.bench import (
    SparseLinear,
    _glibc,
    count_subnormals,
    flops,
    flush_to_zero,
    flushing,
    pad_linear_widths,
    paired_speedups,
    prepare,
    reused_memory,
    time_forward,
    time_variants,
    to_csr,
)
from pbc.cli import main
from pbc.compression import lowbit
from pbc.compression.export import load_export, save_export
from pbc.nets import build_network, lenet300

TINY = torch.finfo(torch.float32).tiny


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
    # the warm-up, then per sample torch.utils.benchmark's two untimed calls and the timed one
    assert len(calls) == 2 + 7 * 3 and r["repeats"] == 7 and len(r["times_s"]) == 7
    s = r["spread"]
    assert 0 <= s["min"] <= s["q25"] <= r["median_s"] <= s["q75"] <= s["max"] < 1.0
    assert s["iqr"] == pytest.approx(s["q75"] - s["q25"])


def test_variants_are_timed_in_rotating_turns():
    order = []

    class Tag(nn.Module):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def forward(self, x):
            order.append(self.name)
            return x

    x = torch.zeros(1)
    r = time_variants({k: (Tag(k), x) for k in "abc"}, repeats=4, warmup=1)
    assert order[:3] == ["a", "b", "c"]                          # warm-up, once each
    samples = order[3::3]                                        # each sample: 3 calls
    assert order[3:] == [k for k in samples for _ in range(3)]
    rounds = [samples[3 * i: 3 * i + 3] for i in range(4)]
    assert rounds == [list("abc"), list("bca"), list("cab"), list("abc")]
    assert all(len(v["times_s"]) == 4 for v in r.values())
    p = paired_speedups([2.0, 4.0, 6.0], [1.0, 1.0, 2.0])
    assert p["median"] == 3.0 and p["q25"] <= p["median"] <= p["q75"]


def _with_subnormal_weights(net: nn.Module, n: int = 136) -> nn.Module:
    """A copy of ``net`` with the first ``n`` weights of its first linear layer set to
    subnormal values (the smallest about 4e-44, as a pruned export held)."""
    out = copy.deepcopy(net)
    with torch.no_grad():
        w = next(m for m in out if isinstance(m, nn.Linear)).weight.view(-1)
        w[:n] = torch.linspace(4e-44, 1e-39, n)
    return out


def test_subnormal_weights_do_not_reach_the_timed_network():
    """A net with subnormal weights and the same net with zeros there: the networks the
    benchmark times are identical, so a speed-up measured on them cannot depend on the
    subnormals."""
    torch.manual_seed(0)
    clean = nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 10))
    with torch.no_grad():
        clean[1].weight.view(-1)[:136] = 0.0
    dirty = _with_subnormal_weights(clean)
    assert count_subnormals(dirty) == 136 and count_subnormals(clean) == 0
    timed_dirty = prepare(copy.deepcopy(dirty), torch.device("cpu"), channels_last=False)
    timed_clean = prepare(copy.deepcopy(clean), torch.device("cpu"), channels_last=False)
    assert count_subnormals(timed_dirty) == 0
    for (k, a), (_, b) in zip(timed_dirty.state_dict().items(),
                              timed_clean.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    x = torch.rand(32, 1, 28, 28)
    with torch.no_grad():                        # the function is unchanged by the flush
        assert torch.equal(timed_dirty(x).argmax(1), dirty(x).argmax(1))


def test_exports_store_subnormal_weights_as_zero(tmp_path):
    torch.manual_seed(1)
    arch = lenet300()
    net = _with_subnormal_weights(build_network(arch))
    save_export(tmp_path / "p.pt", arch, net.state_dict())
    back = load_export(tmp_path / "p.pt")
    assert count_subnormals(back) == 0
    w_in, w_out = net.fc1.weight, back.fc1.weight
    assert torch.equal(w_out, torch.where(w_in.abs() < TINY, torch.zeros_like(w_in), w_in))


def test_flush_to_zero_sets_and_restores():
    def flushes_here():
        bits = torch.tensor([1 << 20], dtype=torch.int32).view(torch.float32)  # subnormal
        return float(bits * 1.0) == 0.0

    before = flushes_here()
    with flush_to_zero() as where:
        assert flushes_here()
        assert where in ("all threads", "main thread only") and where == flushing()
    assert flushes_here() == before


def test_conv_variants_run_channels_last_with_pair_pools():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(4 * 3 * 3, 2))
    ready = prepare(copy.deepcopy(net), torch.device("cpu"), channels_last=True)
    assert ready[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert type(ready[2]) is lowbit.PairMaxPool2d and type(net[2]) is nn.MaxPool2d
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(ready(x.contiguous(memory_format=torch.channels_last)),
                                   net(x))


def _second_allocation_page_faults() -> int:
    """Minor page faults of touching a 64 MiB tensor allocated where one was just freed."""
    first = torch.ones(1 << 24)
    del first
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    second = torch.ones(1 << 24)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del second
    return faults


@pytest.mark.skipif(_glibc() is None, reason="the allocator setting is glibc's")
def test_reused_memory_serves_a_freed_activation_without_page_faults():
    pages = (1 << 26) // resource.getpagesize()
    assert _second_allocation_page_faults() > pages // 2        # glibc default: mapped afresh
    with reused_memory() as what:
        assert "glibc" in what
        _second_allocation_page_faults()                         # the heap grows once
        assert _second_allocation_page_faults() < pages // 100
    assert _second_allocation_page_faults() > pages // 2        # defaults restored


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
    fast = ["fast"] if lowbit.int8_kernels("cpu") else []
    assert names == ["dense", "dense-pad16", "pruned", "pruned-pad16", "quantised", *fast,
                     "csr"]
    assert rec["flush_to_zero"] in ("all threads", "main thread only")
    assert rec["memory_format"] == ("channels_last" if model == "lenet5" else "contiguous")
    assert rec["relu"] == "in place"
    assert ("PairMaxPool2d" in rec["max_pool"]) == (model == "lenet5") and rec["allocator"]
    assert set(rec["uint8_activations"]) <= set(rec["int8_layers"])
    assert "torch.utils.benchmark" in rec["timer"] and rec["device_name"]
    for v in rec["variants"]:
        assert {"median_s", "spread", "flops", "speedup", "speedup_paired", "ideal_speedup",
                "energy_j", "test_error", "subnormal_weights_flushed"} <= set(v)
        assert v["energy_j"] is None and v["median_s"] > 0 and v["flops"] > 0
        assert len(v["times_s"]) == 3
        assert (v["test_error"] is not None) == (v["name"] in ("dense", "pruned", "quantised",
                                                               "fast"))
    dense = rec["variants"][0]
    assert dense["speedup"] == 1.0 and dense["ideal_speedup"] == 1.0
    pruned = rec["variants"][2]
    assert pruned["ideal_speedup"] == pytest.approx(dense["flops"] / pruned["flops"])
    by_name = {v["name"]: v for v in rec["variants"]}
    if fast:
        assert by_name["fast"]["flops"] == by_name["quantised"]["flops"]
    comp = json.loads((run / "compression.json").read_text())
    assert by_name["quantised"]["test_error"] == pytest.approx(comp["error"]["quantised"])
    assert by_name["dense"]["test_error"] == pytest.approx(comp["error"]["full"])
    assert (run / "figures" / "bench.png").stat().st_size > 1000
