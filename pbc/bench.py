"""The ``bench`` stage: forward-pass time (and GPU energy) of dense vs compressed networks.

Variants, all plain torch modules in eval mode under ``torch.inference_mode``:

* ``dense`` — the original architecture holding the posterior means (nothing removed);
* ``pruned`` — the structured export (``pruned.pt``): physically smaller dense layers;
* ``dense-pad16``, ``pruned-pad16`` — the same functions with hidden linear widths padded
  with zero units to a multiple of 16 (:func:`pad_linear_widths`): more FLOPs, but widths
  CPU GEMM kernels are fast at.  Padding speeds up the dense net too, so pruning's own
  gain in that layout is ``pruned-pad16`` against ``dense-pad16``;
* ``quantised`` — the same shapes with fixed-point weights (``quantised.pt``), still float32
  arithmetic: the bit precision pays off in storage, not in float32 speed;
* ``csr`` — ``quantised`` with every linear layer's weight as a ``torch.sparse_csr`` matrix
  (convolutions stay dense: torch has no sparse convolution).

Each variant is warmed up, then timed ``repeats`` times (CUDA synchronised); the median and
the inter-quartile range go into ``bench.json`` with the variant's FLOPs (2 × multiply-adds,
sparse layers counted by their stored nonzeros) and the ideal speed-up (FLOP ratio to
``dense``) beside the measured one.  On CUDA, energy per batch comes from NVML's total
energy counter, differenced around many iterations; where NVML is absent the reason is
recorded instead of a number.
"""

from __future__ import annotations

import platform
import statistics
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from pbc.compression.export import load_export
from pbc.io import ArtefactError, read_json, write_json
from pbc.nets import plain_network
from pbc.reporting import figures
from pbc.rundir import (
    BENCH,
    BENCH_FIGURE,
    FIGURES,
    PRUNED,
    QUANTISED,
    MissingStage,
    load_trained,
)


class SparseLinear(nn.Module):
    """``y = x Wᵀ + b`` with ``W`` stored as CSR: ``x: (N, in) → (N, out)``."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            csr = linear.weight.detach().to_sparse_csr()
        self.register_buffer("weight", csr)
        self.register_buffer("bias", linear.bias.detach().clone())

    def forward(self, x):
        return torch.sparse.mm(self.weight, x.t()).t() + self.bias


def to_csr(net: nn.Sequential) -> nn.Sequential:
    """A copy of ``net`` whose ``nn.Linear`` layers use CSR weights."""
    return nn.Sequential(*[SparseLinear(m) if isinstance(m, nn.Linear) else m for m in net])


@torch.inference_mode()
def flops(net: nn.Sequential, input_shape, batch: int = 1, device="cpu") -> int:
    """FLOPs (2 × multiply-adds) of a forward pass of ``batch`` inputs (shapes found by
    running one input through ``net``); a CSR layer counts its stored nonzeros."""
    total = 0
    x = torch.zeros(1, *input_shape, device=device)
    for m in net:
        y = m(x)
        if isinstance(m, nn.Linear):
            total += 2 * m.in_features * m.out_features
        elif isinstance(m, SparseLinear):
            total += 2 * m.weight.values().numel()
        elif isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1]
            total += 2 * m.in_channels * m.out_channels * k * y.shape[-1] * y.shape[-2]
        x = y
    return total * batch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def time_forward(net: nn.Module, x: torch.Tensor, repeats: int = 20, warmup: int = 3) -> dict:
    """Median and quartiles of the wall time of ``net(x)`` over ``repeats`` timed runs."""
    for _ in range(warmup):
        net(x)
    _sync(x.device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        net(x)
        _sync(x.device)
        times.append(time.perf_counter() - t0)
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"median_s": statistics.median(times), "spread": {"q25": q[0], "q75": q[2],
            "min": min(times), "max": max(times)}, "repeats": repeats}


class NvmlEnergy:
    """GPU energy from NVML's total-energy counter (millijoules since driver load)."""

    def __init__(self, device: torch.device):
        self.handle, self.reason = None, None
        try:
            import pynvml

            pynvml.nvmlInit()
            index = device.index if device.index is not None else torch.cuda.current_device()
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
            self._read = pynvml.nvmlDeviceGetTotalEnergyConsumption
        except Exception as e:  # noqa: BLE001 - any NVML failure means "no energy reading"
            self.handle = None
            self.reason = f"NVML energy counter unavailable: {type(e).__name__}: {e}"

    def joules(self) -> float:
        return self._read(self.handle) / 1000.0


@torch.inference_mode()
def energy_per_batch(net, x, meter: NvmlEnergy, min_seconds: float = 2.0) -> float | None:
    """Energy (J) per forward pass, from the counter differenced over ≥ ``min_seconds``."""
    if meter.handle is None:
        return None
    _sync(x.device)
    e0, t0, n = meter.joules(), time.perf_counter(), 0
    while time.perf_counter() - t0 < min_seconds:
        net(x)
        n += 1
        _sync(x.device)
    return (meter.joules() - e0) / n


@torch.no_grad()
def pad_linear_widths(net: nn.Sequential, multiple: int = 16) -> nn.Sequential:
    """A copy of ``net`` whose hidden linear layers have output widths rounded up to a
    multiple of ``multiple`` with zero rows (zero bias), and the next linear layer zero
    columns to match; the last linear layer keeps its width.  The function is unchanged
    (a padded unit outputs 0, through ReLU too); only the layout is.

    Why: CPU GEMM kernels are much faster at aligned widths (a measurement is in
    ``benchmarks/README.md``).
    """
    mods = [m for m in net]
    linear_at = [i for i, m in enumerate(mods) if isinstance(m, nn.Linear)]
    out, extra_in = [], 0
    for i, m in enumerate(mods):
        if isinstance(m, nn.Linear):
            last = i == linear_at[-1]
            w, b = m.weight, m.bias
            if extra_in:
                w = torch.cat([w, w.new_zeros(w.shape[0], extra_in)], 1)
            pad = 0 if last else -w.shape[0] % multiple
            if pad:
                w = torch.cat([w, w.new_zeros(pad, w.shape[1])], 0)
                b = torch.cat([b, b.new_zeros(pad)])
            lin = nn.Linear(w.shape[1], w.shape[0])
            lin.weight.copy_(w)
            lin.bias.copy_(b)
            out.append(lin)
            extra_in = pad
        else:
            if extra_in and not isinstance(m, nn.ReLU):
                raise ValueError(f"cannot pad through {type(m).__name__}")
            out.append(m)
    return nn.Sequential(*out).eval()


def variants(run: Path, dense: nn.Module) -> dict[str, nn.Module]:
    """The timed networks; ``dense`` is the posterior-mean net of the original shape."""
    quantised = load_export(run / QUANTISED)
    pruned = load_export(run / PRUNED)
    return {"dense": dense.eval(), "dense-pad16": pad_linear_widths(dense, 16),
            "pruned": pruned, "pruned-pad16": pad_linear_widths(pruned, 16),
            "quantised": quantised, "csr": to_csr(quantised).eval()}


def bench(run_dir, batch: int = 8192, device: str = "cpu", threads: int | None = None,
          repeats: int = 20, warmup: int = 3) -> dict:
    """Time every variant of a compressed run; write ``bench.json`` and a bar chart."""
    run = Path(run_dir)
    if not (run / QUANTISED).is_file():
        raise MissingStage(f"{run}: no compressed network; run `pbc compress {run}` first")
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ArtefactError("device 'cuda' requested but CUDA is not available")
    trained = load_trained(run)
    config, arch = trained.config, trained.arch
    dense = plain_network(arch, trained.method.plain_state(trained.net))
    nets = {k: v.to(dev) for k, v in variants(run, dense).items()}
    x = torch.rand(batch, *arch.input_shape, device=dev)
    meter = NvmlEnergy(dev) if dev.type == "cuda" else None
    rows = []
    for name, m in nets.items():
        row = {"name": name, **time_forward(m, x, repeats, warmup),
               "flops": flops(m, arch.input_shape, batch, dev)}
        row["energy_j"] = energy_per_batch(m, x, meter) if meter else None
        rows.append(row)
    base = rows[0]
    for row in rows:
        row["speedup"] = base["median_s"] / row["median_s"]
        row["ideal_speedup"] = base["flops"] / row["flops"]
    record = {"run": str(run), "model": config.model, "prior": config.prior,
              "device": str(dev), "device_name": _device_name(dev),
              "threads": torch.get_num_threads(), "batch": batch, "repeats": repeats,
              "warmup": warmup, "torch": torch.__version__,
              "energy_note": (meter.reason if meter else "CPU run: no energy counter") or
              "NVML total energy, differenced over ≥ 2 s per variant",
              "variants": rows}
    write_json(run / BENCH, record)
    figures.bench_chart(record, run / FIGURES / BENCH_FIGURE)
    return record


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return platform.processor() or platform.machine()


def read_bench(run_dir) -> dict:
    return read_json(Path(run_dir) / BENCH)
