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
* ``fast`` — ``quantised`` with the layers whose weights fit in 8 bits on int8 kernels and
  the activations between them ``uint8`` at scales fixed on the validation split
  (:mod:`pbc.compression.lowbit`; CPU only): what ``pbc export --format int8`` writes;
* ``csr`` — ``quantised`` with every linear layer's weight as a ``torch.sparse_csr`` matrix
  (convolutions stay dense: torch has no sparse convolution).

The rules that make the comparison fair:

* **no subnormal arithmetic** — every variant's weights below the smallest normal float32
  are set to 0 (they change no prediction; the exports already store them so), and the
  timing runs with flush-to-zero on (:func:`flush_to_zero`; ``bench.json`` records on which
  threads): subnormal operands take a slow path on many CPUs and would time the values, not
  the shapes;
* **one layout** — networks with convolutions run channels-last (inputs and weights), for
  every variant alike, and their 2×2 max-pools as two elementwise maxima on that layout
  (:class:`~pbc.compression.lowbit.PairMaxPool2d`, what the ``fast`` variant's codes use);
* **memory reused** — freed activations' memory serves the next call (:func:`reused_memory`):
  otherwise a large batch pays the kernel's page faults for every activation, a cost of
  memory size that would dilute every speed-up;
* **side by side** — every variant is warmed up, then the variants are timed in turn,
  ``repeats`` rounds with the order rotated each round, through
  :class:`torch.utils.benchmark.Timer` (threads set, CUDA synchronised), so a change of
  machine load hits all of them alike; ``bench.json`` holds the median and quartiles of
  each, and of the per-round speed-up over ``dense``.

Beside the measured speed-up stands the ideal one, the FLOP ratio to ``dense`` (FLOPs:
2 × multiply-adds, sparse layers counted by their stored nonzeros, int8 multiply-adds
counted like float ones — so ``fast`` may beat its FLOP ideal by the cheaper arithmetic).
The test error of each distinct function (dense, pruned, quantised, fast) is recorded too.
On CUDA, energy per batch comes from NVML's total energy counter, differenced around many
iterations; where NVML is absent the reason is recorded instead of a number.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from pbc.compression import lowbit
from pbc.compression.export import flush_subnormals, load_export
from pbc.io import ArtefactError, read_json, write_json
from pbc.nets import classification_error, plain_network
from pbc.reporting import figures
from pbc.rundir import (
    BENCH,
    BENCH_FIGURE,
    FIGURES,
    PRUNED,
    QUANTISED,
    MissingStage,
    RunDir,
    calibration_images,
    load_trained,
    run_splits,
)

#: variants whose function differs from the others' (their test errors are recorded)
DISTINCT_FUNCTIONS = ("dense", "pruned", "quantised", "fast")


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
def flops(net: nn.Module, input_shape, batch: int = 1, device="cpu") -> int:
    """FLOPs (2 × multiply-adds) of the linear and convolutional layers in a forward pass of
    ``batch`` inputs (output shapes found by running one input through ``net``, any graph);
    a CSR layer counts its stored nonzeros, an int8 layer its multiply-adds like a float one."""
    total = 0

    def count(m, _inputs, y):
        nonlocal total
        if isinstance(m, nn.Linear | lowbit.Int8Linear):
            total += 2 * m.in_features * m.out_features
        elif isinstance(m, SparseLinear):
            total += 2 * m.weight.values().numel()
        elif isinstance(m, lowbit.Int8Conv2d):
            total += 2 * m.in_channels * m.out_channels * m.kernel ** 2 * y.shape[-1] * y.shape[-2]
        elif isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
            total += 2 * k * m.out_channels * y.shape[-1] * y.shape[-2]

    hooks = [m.register_forward_hook(count) for m in net.modules()]
    try:
        net(torch.zeros(1, *input_shape, device=device))
    finally:
        for h in hooks:
            h.remove()
    return total * batch


# ------------------------------------------------------------------------- fair arithmetic
def flushing() -> str:
    """Which threads treat subnormal floats as zero now: ``"all threads"``, ``"main thread
    only"`` or ``"none"`` (a probe: a subnormal times 1, once on this thread and once over a
    tensor large enough to be split among the intra-op threads)."""
    main = int(torch.count_nonzero(_subnormals(1) * 1.0)) == 0
    spread = int(torch.count_nonzero(_subnormals(1 << 20) * 1.0)) == 0
    return "all threads" if main and spread else "main thread only" if main else "none"


def _subnormals(n: int) -> torch.Tensor:
    """``n`` float32 copies of 2^−129, a subnormal, made from its bits (no conversion that a
    flushing thread could round to 0)."""
    return torch.full((n,), 1 << 20, dtype=torch.int32).view(torch.float32)


@contextlib.contextmanager
def flush_to_zero():
    """Run the block with subnormal floats treated as zero (``torch.set_flush_denormal``) and
    yield :func:`flushing`; restore the previous setting of this thread after.

    The setting is per thread: intra-op worker threads copy it from the main thread when the
    pool starts and keep it, so a process that sets it before its first parallel operation
    (as ``pbc bench`` does) flushes on every thread, and one whose pool is already running
    flushes on the main thread only — which :func:`flushing` reports.
    """
    before = int(torch.count_nonzero(_subnormals(1) * 1.0)) == 0
    torch.set_flush_denormal(True)
    try:
        yield flushing()
    finally:
        torch.set_flush_denormal(before)


M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4                  # glibc's mallopt parameters
GLIBC_DEFAULTS = {M_TRIM_THRESHOLD: 128 * 1024, M_MMAP_MAX: 65536}


def _glibc():
    """The C library when it is glibc (its ``mallopt`` and ``malloc_trim``), else ``None``."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


@contextlib.contextmanager
def reused_memory():
    """Run the block with freed memory kept for reuse by glibc's ``malloc`` and yield what
    was set (a sentence for ``bench.json``); restore glibc's defaults and return the memory
    after.

    By default glibc maps each block above its mmap threshold (at most 32 MiB) afresh from
    the kernel and unmaps it when freed, so every forward pass of a large batch faults in
    and zeroes its activations' pages again — time that grows with activation memory, not
    with arithmetic, and that a caching allocator (jemalloc, tcmalloc) does not pay.  With
    ``mmap`` off (``M_MMAP_MAX = 0``) and
    trimming deferred (``M_TRIM_THRESHOLD``), a freed activation's pages serve the next
    one.  Elsewhere than glibc nothing is changed.
    """
    libc = _glibc()
    if libc is None:
        yield "system allocator, unchanged (not glibc)"
        return
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
    try:
        yield "glibc malloc, freed memory reused (M_MMAP_MAX 0, M_TRIM_THRESHOLD 2^31-1)"
    finally:
        for param, value in GLIBC_DEFAULTS.items():
            libc.mallopt(param, value)
        libc.malloc_trim(0)


@torch.no_grad()
def without_subnormals(net: nn.Module) -> nn.Module:
    """``net`` with every parameter and floating buffer value below the smallest normal float
    set to 0, in place; returns it."""
    for tensors in (dict(net.named_parameters()), dict(net.named_buffers())):
        flushed = flush_subnormals({k: v.data for k, v in tensors.items()
                                    if not v.is_sparse and v.layout == torch.strided})
        for k, v in flushed.items():
            tensors[k].data.copy_(v)
    return net


def count_subnormals(net: nn.Module) -> int:
    """Nonzero parameter and buffer values of ``net`` below the smallest normal float."""
    n = 0
    for t in [*net.parameters(), *net.buffers()]:
        if t.is_floating_point() and t.layout == torch.strided:
            n += int(((t != 0) & (t.abs() < torch.finfo(t.dtype).tiny)).sum())
    return n


def _uses_conv(net: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d | lowbit.Int8Conv2d) for m in net.modules())


def prepare(net: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    """A variant made ready to time: subnormals flushed, on ``device``, eval mode, ReLUs in
    place (one pass over the activation instead of a read and a write to a new tensor:
    every variant is timed without grad), and channels-last when asked (float convolution
    weights; int8 layers pack their own), its 2×2 max-pools then
    :class:`~pbc.compression.lowbit.PairMaxPool2d` (the same function)."""
    net = without_subnormals(net).to(device).eval()
    for m in net.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = True
    if channels_last:
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.to(memory_format=torch.channels_last)
        for parent in list(net.modules()):
            for name, m in parent.named_children():
                if type(m) is nn.MaxPool2d:
                    setattr(parent, name, lowbit.PairMaxPool2d.like(m))
    return net


# --------------------------------------------------------------------------------- timing
def _summary(times: list[float]) -> dict:
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"median_s": statistics.median(times),
            "spread": {"q25": q[0], "q75": q[2], "iqr": q[2] - q[0], "min": min(times),
                       "max": max(times)},
            "times_s": times, "repeats": len(times)}


def time_variants(cases: dict[str, tuple[nn.Module, torch.Tensor]], repeats: int = 20,
                  warmup: int = 3, threads: int | None = None) -> dict[str, dict]:
    """Time ``net(x)`` for each ``name: (net, x)`` side by side.

    Each case runs ``warmup`` untimed calls; then ``repeats`` rounds take one sample of each
    case, the order rotated by one each round (so no case always follows the same one).  A
    sample is :meth:`torch.utils.benchmark.Timer.timeit` of one call, which sets
    ``threads`` intra-op threads (default the current number), synchronises CUDA and runs
    two untimed calls of the same case first.  Returns per case the median, quartiles and
    extremes of the seconds per call, and the samples (``times_s``).
    """
    # imported here: torch.utils.benchmark pulls in torch's C++-extension builder (setuptools,
    # and a CUDA-runtime warning on CUDA builds without one) on every command otherwise
    from torch.utils import benchmark

    threads = threads or torch.get_num_threads()
    names = list(cases)
    calls, timers = {}, {}
    for name, (net, x) in cases.items():
        @torch.inference_mode()
        def call(net=net, x=x):
            return net(x)

        calls[name] = call
        timers[name] = benchmark.Timer("call()", globals={"call": call}, num_threads=threads,
                                       label=name)
    for name in names:
        for _ in range(warmup):
            calls[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(timers[name].timeit(1).mean)
    return {name: _summary(t) for name, t in times.items()}


def time_forward(net: nn.Module, x: torch.Tensor, repeats: int = 20, warmup: int = 3) -> dict:
    """Median and quartiles of the wall time of ``net(x)`` over ``repeats`` timed runs."""
    return time_variants({"net": (net, x)}, repeats, warmup)["net"]


def paired_speedups(base: list[float], other: list[float]) -> dict:
    """Per-round speed-ups ``base[r] / other[r]``: median and quartiles."""
    ratios = [b / o for b, o in zip(base, other, strict=True)]
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return {"median": statistics.median(ratios), "q25": q[0], "q75": q[2]}


# --------------------------------------------------------------------------------- energy
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


# ------------------------------------------------------------------------------- variants
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
            out.append(copy.deepcopy(m))
    return nn.Sequential(*out).eval()


def variants(run: Path, dense: nn.Module, device: torch.device | str = "cpu", builder=None,
             calibration: torch.Tensor | None = None
             ) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """The timed networks (``dense`` is the posterior-mean net of the original shape) and,
    for variants left out, the reason (``builder``: the factory of a network of the user's
    code, which gets the dense, pruned and quantised variants; ``calibration``: the images
    the ``fast`` variant's static activation scales are fixed on)."""
    quantised = load_export(run / QUANTISED, builder)
    pruned = load_export(run / PRUNED, builder)
    if not isinstance(dense, nn.Sequential):
        return ({"dense": dense.eval(), "pruned": pruned, "quantised": quantised},
                dict.fromkeys(("dense-pad16", "pruned-pad16", "fast", "csr"),
                              "built for sequential networks only"))
    nets = {"dense": dense.eval(), "dense-pad16": pad_linear_widths(dense, 16),
            "pruned": pruned, "pruned-pad16": pad_linear_widths(pruned, 16),
            "quantised": quantised}
    skipped = {}
    if lowbit.int8_kernels(device):
        nets["fast"] = lowbit.lowbit_network(load_export(run / QUANTISED),
                                             calibration=calibration)
    else:
        skipped["fast"] = f"no int8 kernels on {torch.device(device).type}"
    nets["csr"] = to_csr(load_export(run / QUANTISED)).eval()
    return nets, skipped


def bench(run_dir, batch: int = 8192, device: str = "cpu", threads: int | None = None,
          repeats: int = 20, warmup: int = 3, test_error: bool = True) -> dict:
    """Time every variant of a compressed run side by side; write ``bench.json`` and a bar
    chart (see the module docstring for the rules)."""
    run = Path(run_dir)
    if not (run / QUANTISED).is_file():
        raise MissingStage(f"{run}: no compressed network; run `pbc compress {run}` first")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ArtefactError("device 'cuda' requested but CUDA is not available")
    with RunDir(run).writing("pbc bench"):
        record = _bench(run, batch, dev, threads or torch.get_num_threads(), repeats, warmup,
                        test_error)
        write_json(run / BENCH, record)
        figures.bench_chart(record, run / FIGURES / BENCH_FIGURE)
    return record


def _bench(run: Path, batch: int, dev: torch.device, threads: int, repeats: int, warmup: int,
           test_error: bool) -> dict:
    trained = load_trained(run)
    config, arch = trained.config, trained.arch
    dense = plain_network(arch, trained.method.plain_state(trained.net))
    _, data = run_splits(config)
    nets, skipped = variants(run, dense, dev, arch.builder, calibration_images(data))
    subnormals = {k: count_subnormals(v) for k, v in nets.items()}
    channels_last = _uses_conv(dense)
    nets = {k: prepare(v, dev, channels_last) for k, v in nets.items()}
    x = torch.rand(batch, *arch.input_shape, device=dev)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    load_before = _load_average()
    with flush_to_zero() as flush, reused_memory() as allocator:
        timed = time_variants({k: (m, x) for k, m in nets.items()}, repeats, warmup, threads)
        meter = NvmlEnergy(dev) if dev.type == "cuda" else None
        energy = {k: energy_per_batch(m, x, meter) if meter else None for k, m in nets.items()}
        errors = _test_errors(data, nets, dev) if test_error else {}
    load_after = _load_average()
    base = timed["dense"]
    dense_flops = flops(nets["dense"], arch.input_shape, batch, dev)
    rows = []
    for name, m in nets.items():
        row = {"name": name, **timed[name], "flops": flops(m, arch.input_shape, batch, dev),
               "energy_j": energy[name], "subnormal_weights_flushed": subnormals[name],
               "test_error": errors.get(name)}
        row["speedup"] = base["median_s"] / row["median_s"]
        row["speedup_paired"] = paired_speedups(base["times_s"], row["times_s"])
        row["ideal_speedup"] = dense_flops / row["flops"]
        rows.append(row)
    fast = nets.get("fast", nn.Sequential())
    int8 = [n for n, m in fast.named_children() if isinstance(m, lowbit.Int8Layer)]
    codes = lowbit.code_scales(fast)
    return {"run": str(run), "model": config.model, "prior": config.prior,
            "device": str(dev), "device_name": _device_name(dev), "threads": threads,
            "batch": batch, "repeats": repeats, "warmup": warmup, "torch": torch.__version__,
            "timer": "torch.utils.benchmark.Timer; variants interleaved, order rotated "
                     "each round",
            "flush_to_zero": flush, "memory_format": ("channels_last" if channels_last
                                                     else "contiguous"),
            "relu": "in place",
            "max_pool": ("2x2 pools as two elementwise maxima (PairMaxPool2d)"
                         if channels_last else "torch"),
            "allocator": allocator,
            "load_average": {"before": load_before, "after": load_after},
            "int8_layers": int8, "uint8_activations": codes, "int8_kernels": (
                "oneDNN qlinear/qconv2d (torch.ops.onednn), int8 weights, 7-bit uint8 "
                "activations: static (scales and clips fixed on the validation split) after "
                "the layers in uint8_activations, quantised per call elsewhere"
                if int8 else None),
            "skipped": skipped,
            "energy_note": (meter.reason if meter else "CPU run: no energy counter") or
            "NVML total energy, differenced over ≥ 2 s per variant",
            "variants": rows}


def _test_errors(data, nets: dict[str, nn.Module], dev: torch.device) -> dict[str, float]:
    """Test error of each variant in :data:`DISTINCT_FUNCTIONS` (batches of 8192, as timed)."""
    return {k: classification_error(nets[k], data.test_x, data.test_y, batch_size=8192,
                                    device=dev)
            for k in DISTINCT_FUNCTIONS if k in nets}


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"{cpu_model()} ({os.cpu_count()} CPUs)"


def read_bench(run_dir) -> dict:
    return read_json(Path(run_dir) / BENCH)
