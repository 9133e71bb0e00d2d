"""Benchmark: one compressed network's layers on float32, oneDNN int8 and FBGEMM int8 kernels.

For each linear and conv layer of a run's quantised network (``quantised.pt``), the script
records the layer's real input at batch ``--batch`` (random images through the layers
before it) and times, side by side through ``torch.utils.benchmark`` with ``--threads``
threads, interleaved:

* ``float32`` — the layer as exported (convolutions in channels-last, as ``pbc bench`` runs
  them);
* ``onednn`` — :class:`pbc.compression.lowbit` 's int8 layer, the one ``pbc bench`` calls
  ``fast``: oneDNN's ``qlinear_pointwise``/``qconv2d_pointwise`` on plain uint8/int8
  tensors, the activation quantised per call;
* ``fbgemm`` — FBGEMM's int8 operators (``quantized::linear_dynamic``; for a conv,
  ``quantize_per_tensor`` of the input, then ``quantized::conv2d`` and ``dequantize``).
  These need quantized-dtype tensors, which torch 2.13 deprecates (a warning at every
  creation, silenced here): measured for comparison only, pbc does not use them.

It prints, per layer, the median ms of each kernel and the speed-ups over float32, then one
line per kernel with the whole network's sum::

    total <kernel> <ms> <speed-up over float32>
"""

from __future__ import annotations

import argparse
import functools
import warnings

import torch
import torch.nn.functional as F
import torch.utils.benchmark as tb
from torch import nn

from pbc.bench import flush_to_zero
from pbc.compression import lowbit
from pbc.compression.export import load_export


def layer_inputs(net: nn.Sequential, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The input of every linear and conv layer of ``net`` for ``x``."""
    seen = {}
    with torch.no_grad():
        for name, m in net.named_children():
            if isinstance(m, nn.Linear | nn.Conv2d):
                seen[name] = x
            x = m(x)
    return seen


def float32_layer(m: nn.Module, x: torch.Tensor):
    """A callable running ``m`` in float32 on ``x`` (a conv's weight in channels-last)."""
    if isinstance(m, nn.Linear):
        return functools.partial(m, x)
    w = m.weight.contiguous(memory_format=torch.channels_last)
    return functools.partial(F.conv2d, x, w, m.bias, m.stride, m.padding)


def fbgemm_layer(m: nn.Module, x: torch.Tensor):
    """A callable running ``m`` on FBGEMM's int8 operators for inputs like ``x``."""
    torch.backends.quantized.engine = "fbgemm"
    w = m.weight.detach()
    scale = (w.abs().reshape(w.shape[0], -1).amax(1) / 127).clamp_min(1e-12)
    qw = torch.quantize_per_channel(w, scale.double(), torch.zeros(w.shape[0], dtype=torch.long),
                                    0, torch.qint8)
    if isinstance(m, nn.Linear):
        packed = torch.ops.quantized.linear_prepack(qw, m.bias.detach())
        return lambda: torch.ops.quantized.linear_dynamic(x, packed, True)
    packed = torch.ops.quantized.conv2d_prepack(qw, m.bias.detach(), list(m.stride),
                                                list(m.padding), list(m.dilation), m.groups)
    x_scale = float(x.max().clamp_min(1e-12)) / 127          # 7-bit unsigned, as lowbit's
    with torch.no_grad():
        y_scale = float(m(x).abs().max().clamp_min(1e-12)) / 127

    def run():
        qx = torch.quantize_per_tensor(x, x_scale, 0, torch.quint8)
        return torch.ops.quantized.conv2d(qx, packed, y_scale, 64).dequantize()

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a compressed run directory (holds quantised.pt)")
    p.add_argument("--batch", type=int, default=8192)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    net = load_export(f"{args.run}/quantised.pt").eval()
    int8 = lowbit.lowbit_network(net, [n for n, m in net.named_children()
                                       if isinstance(m, nn.Linear | nn.Conv2d)])
    x0 = torch.rand(args.batch, 1, 28, 28)
    inputs = layer_inputs(net, x0)
    print(f"{args.run}: batch {args.batch}, {args.threads} thread(s), median of "
          f"{args.repeats} interleaved rounds")
    totals = {"float32": 0.0, "onednn": 0.0, "fbgemm": 0.0}
    with flush_to_zero(), warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore", UserWarning)     # FBGEMM's deprecated qtensors
        for name, x in inputs.items():
            m = getattr(net, name)
            if isinstance(m, nn.Conv2d):
                x = x.contiguous(memory_format=torch.channels_last)
            runs = {"float32": float32_layer(m, x),
                    "onednn": functools.partial(getattr(int8, name), x),
                    "fbgemm": fbgemm_layer(m, x)}
            times = {k: [] for k in runs}
            for k in runs:
                runs[k]()                                  # warm-up
            for r in range(args.repeats):
                order = list(runs)[r % 3:] + list(runs)[:r % 3]
                for k in order:
                    t = tb.Timer("f()", globals={"f": runs[k]}, num_threads=args.threads)
                    times[k].append(t.timeit(1).median * 1e3)
            med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
            for k in totals:
                totals[k] += med[k]
            print(f"{name:8s} {tuple(m.weight.shape)!s:18s} " + "  ".join(
                f"{k} {v:8.1f} ms ({med['float32'] / v:.2f}x)" for k, v in med.items()))
    for k, v in totals.items():
        print(f"total {k} {v:.1f} {totals['float32'] / v:.2f}")


if __name__ == "__main__":
    main()
