"""Low-bit inference: layers whose quantised weights fit in 8 bits run on integer kernels.

Torch only (never Pyro).  A layer qualifies when its quantised weights take at most
:data:`MAX_CODES` distinct values — the posterior bit precision's fixed-point codebook, or a
DC/SWS codebook, has ≤ 256 entries — since 256 values are what an 8-bit weight can name.
Such a layer stores

* ``weight_int8: (out, in[, k, k])`` int8 and ``weight_scale: (out,)`` float32, with
  ``w ≈ weight_scale[o] · weight_int8[o, …]``: per output unit, the power-of-two step of the
  fixed-point grid when the weights lie on it within ±127 steps (then exactly), else the
  symmetric step ``max|w_o| / 127``;
* ``bias: (out,)`` float32;

and computes ``y = s_x s_w (q_x − z_x) q_wᵀ + b`` with 8-bit integer products and 32-bit
integer sums, where the activation ``x`` is quantised per call (dynamic quantisation: one
scale ``s_x`` and zero point ``z_x`` from the batch's minimum and maximum) to
:data:`ACT_LEVELS` + 1 levels of ``uint8``.  Activations use 7 bits, not 8: x86 CPUs without
VNNI multiply ``uint8 × int8`` pairs into saturating 16-bit sums (``vpmaddubsw``), and
``2 · 255 · 127`` overflows them; ``2 · 127 · 127`` does not.

Kernels: oneDNN's ``onednn::qlinear_pointwise`` and ``onednn::qconv2d_pointwise`` on plain
``uint8``/``int8`` tensors (the kernels PyTorch's x86 int8 path lowers to), so nothing here
builds a quantized-dtype tensor or touches the deprecated ``torch.ao.quantization`` API.
Where they are absent (a build without oneDNN, or a CUDA tensor) the same arithmetic runs as
float32 on the dequantised integers: same function, no speed-up (:func:`int8_kernels`).

**Static activations** (:func:`calibrate`).  Between two int8 layers joined by a ReLU (and
max-pools, flattening and :class:`~pbc.nets.SelectUnits`), the activation need not go back
to float32: the first layer's kernel applies the ReLU and writes ``uint8`` codes
``round(relu(y) / s)`` at a scale ``s`` fixed beforehand — a clip ``c`` over
:data:`ACT_LEVELS` — the max-pool runs on the codes (max commutes with a positive scale),
and the next layer reads them with ``s`` and zero point 0.  Codes above :data:`ACT_LEVELS`
(activations beyond the clip) are clamped to it by the reader.  The clip is the largest
activation on calibration images (the validation split) times the one of
:data:`CLIP_FRACTIONS` at which the int8 network's predictions on them differ least from
the float network's, chosen link by link in network order (ties: the wider clip).  Hidden
activations have long tails, so the largest value leaves the typical ones few of the 127
steps.  Such a layer holds ``output_scale = s`` and its reader ``input_scale = s``; a scale
of 0 means float32 output, or dynamic input quantisation.  The ReLU it absorbs becomes
``nn.Identity`` and the max-pools :class:`PairMaxPool2d` (:func:`route_codes`, which
rebuilds the same structure from the scales when an export is loaded).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from pbc.nets import SelectUnits, classification_error

MAX_CODES = 256     # distinct weight values an int8 weight can name
WEIGHT_LEVELS = 127  # symmetric int8 weights: −127 … 127
ACT_LEVELS = 127    # activations: uint8 codes 0 … 127 (7 bits; see the module docstring)
#: the clips a static activation scale may take, as fractions of the calibrated maximum
CLIP_FRACTIONS = tuple(2.0 ** (-k / 4) for k in range(9))      # 1 … 1/4


def int8_kernels(device: torch.device | str = "cpu") -> bool:
    """Whether oneDNN's int8 kernels run on ``device`` (CPU builds with oneDNN only)."""
    return (torch.device(device).type == "cpu" and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.onednn, "qlinear_pointwise"))


def fits_int8(weight: torch.Tensor) -> bool:
    """The rule: a layer runs in int8 when its weights take ≤ :data:`MAX_CODES` values."""
    return torch.unique(weight.detach()).numel() <= MAX_CODES


def quantise_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per output unit ``o``: ``(q: int8 like weight, s: (out,) float32)``, ``w ≈ s[o]·q[o]``.

    The scale is the power of two ``2^⌈log2(max|w_o| / 127)⌉`` when every weight of the unit is
    a multiple of it (a fixed-point grid: then ``s·q == w`` exactly), else ``max|w_o| / 127``.
    A unit of zeros gets scale 1.
    """
    w = weight.detach().to(torch.float64).reshape(weight.shape[0], -1)  # (out, fan_in)
    top = w.abs().amax(1)
    pow2 = torch.exp2(torch.ceil(torch.log2(top.clamp_min(1e-300) / WEIGHT_LEVELS)))
    on_grid = (torch.round(w / pow2[:, None]) * pow2[:, None] == w).all(1)
    scale = torch.where(on_grid, pow2, top / WEIGHT_LEVELS)
    scale = torch.where(top > 0, scale, torch.ones_like(scale))
    q = torch.round(w / scale[:, None]).clamp(-WEIGHT_LEVELS, WEIGHT_LEVELS)
    return q.to(torch.int8).reshape(weight.shape), scale.to(torch.float32)


def quantise_activation(x: torch.Tensor) -> tuple[torch.Tensor, float, int]:
    """Dynamic asymmetric quantisation of ``x`` (any shape) to ``uint8`` codes 0 … 127.

    ``x ≈ s·(q − z)`` with ``s = (max(x, 0) − min(x, 0)) / 126`` and ``z = round(−min/s)``, so
    0 is exact.  With 126 steps (not 127), ``x/s + z + ½`` lies in [0, 127] and truncating it
    rounds to nearest with no clamp: three passes over ``x`` (min/max, scale, cast).
    Returns ``(q, s, z)``.
    """
    lo, hi = torch.aminmax(x.detach())
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = (hi - lo) / (ACT_LEVELS - 1) if hi > lo else 1.0
    zero = int(round(-lo / scale))
    shifted = torch.addcmul(x.new_tensor(zero + 0.5), x.detach(), x.new_tensor(1.0 / scale))
    return shifted.to(torch.uint8), scale, zero


class Int8Layer(nn.Module):
    """Shared state of :class:`Int8Linear` and :class:`Int8Conv2d`; the packed weight is a
    cache (oneDNN's layout) rebuilt from ``weight_int8`` after loading or moving."""

    def __init__(self, weight_shape: tuple[int, ...]):
        super().__init__()
        self.register_buffer("weight_int8", torch.zeros(weight_shape, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(weight_shape[0]))
        self.register_buffer("bias", torch.zeros(weight_shape[0]))
        self.register_buffer("input_scale", torch.zeros(()))   # 0: quantise each call's input
        self.register_buffer("output_scale", torch.zeros(()))  # 0: float32 output
        self._packed = None
        self._zeros = torch.zeros(weight_shape[0], dtype=torch.int64)

    @classmethod
    def from_float(cls, layer: nn.Module) -> Int8Layer:
        q = cls._like(layer)
        w_int8, scale = quantise_weight(layer.weight)
        with torch.no_grad():
            q.weight_int8.copy_(w_int8)
            q.weight_scale.copy_(scale)
            q.bias.copy_(layer.bias.detach())
        return q

    def dequantised_weight(self) -> torch.Tensor:
        """``s[o] · q[o, …]`` as float32: the weights this layer computes with."""
        shape = (-1,) + (1,) * (self.weight_int8.dim() - 1)
        return self.weight_int8.float() * self.weight_scale.reshape(shape)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self._packed = None
        for key in ("input_scale", "output_scale"):     # files written before static scales
            state_dict.setdefault(prefix + key, torch.zeros(()))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def writes_codes(self) -> bool:
        """Whether this layer applies a ReLU and writes ``uint8`` codes (a static scale)."""
        return float(self.output_scale) > 0

    def _apply(self, fn, *args, **kwargs):
        self._packed = None
        return super()._apply(fn, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: float32 (quantised here, per call) or ``uint8`` codes at ``input_scale``.
        Returns float32, or ``uint8`` codes of the ReLU at ``output_scale``."""
        if x.dtype == torch.uint8:
            if not float(self.input_scale) > 0:
                raise ValueError("uint8 input to an int8 layer without an input scale")
            q, scale, zero = x.clamp_max(ACT_LEVELS), float(self.input_scale), 0
        else:
            q, scale, zero = quantise_activation(x)
        out_scale = float(self.output_scale)
        if not int8_kernels(x.device):
            y = self._reference(scale * (q.float() - zero))
            if out_scale > 0:
                return torch.round(torch.relu(y) / out_scale).clamp_max(255).to(torch.uint8)
            return y
        if self._packed is None:
            self._packed = self._pack()
        if out_scale > 0:
            return self._kernel(q, scale, zero, out_scale, torch.uint8, "relu")
        return self._kernel(q, scale, zero, 1.0, torch.float32, "none")


class Int8Linear(Int8Layer):
    """``nn.Linear`` with int8 weights and dynamic 7-bit activations: ``(N, in) → (N, out)``."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__((out_features, in_features))
        self.in_features, self.out_features = in_features, out_features

    @staticmethod
    def _like(layer: nn.Linear) -> Int8Linear:
        return Int8Linear(layer.in_features, layer.out_features)

    def _pack(self):
        return torch.ops.onednn.qlinear_prepack(self.weight_int8.contiguous(), None)

    def _kernel(self, q, scale, zero, out_scale, out_dtype, post_op):
        return torch.ops.onednn.qlinear_pointwise(
            q, scale, zero, self._packed, self.weight_scale, self._zeros, self.bias,
            out_scale, 0, out_dtype, post_op, [], "")

    def _reference(self, x):
        return F.linear(x, self.dequantised_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


class Int8Conv2d(Int8Layer):
    """``nn.Conv2d`` (stride 1, square kernel) with int8 weights and dynamic 7-bit
    activations: ``(N, C_in, H, W) → (N, C_out, H', W')``, channels-last in memory."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, padding: int = 0):
        super().__init__((out_channels, in_channels, kernel, kernel))
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel, self.padding = kernel, padding

    @staticmethod
    def _like(layer: nn.Conv2d) -> Int8Conv2d:
        if layer.stride != (1, 1) or layer.dilation != (1, 1) or layer.groups != 1 \
                or layer.kernel_size[0] != layer.kernel_size[1] \
                or layer.padding[0] != layer.padding[1]:
            raise ValueError(f"Int8Conv2d handles square stride-1 convolutions, not {layer}")
        return Int8Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size[0],
                          layer.padding[0])

    def _geometry(self):
        return [1, 1], [self.padding, self.padding], [1, 1], 1

    def _pack(self):
        stride, padding, dilation, groups = self._geometry()
        # the activation scale given here is not used by the kernel (it takes each call's)
        return torch.ops.onednn.qconv_prepack(self.weight_int8.contiguous(), self.weight_scale,
                                              1.0, 0, stride, padding, dilation, groups, None)

    def _kernel(self, q, scale, zero, out_scale, out_dtype, post_op):
        stride, padding, dilation, groups = self._geometry()
        q = q.contiguous(memory_format=torch.channels_last)
        return torch.ops.onednn.qconv2d_pointwise(
            q, scale, zero, self._packed, self.weight_scale, self._zeros, self.bias,
            stride, padding, dilation, groups, out_scale, 0, out_dtype, post_op, [], "")

    def _reference(self, x):
        return F.conv2d(x, self.dequantised_weight(), self.bias, padding=self.padding)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel}, "
                f"padding={self.padding}, int8")


def _int8_class(layer: nn.Module) -> type:
    for float_type, int8_type in ((nn.Linear, Int8Linear), (nn.Conv2d, Int8Conv2d)):
        if isinstance(layer, float_type):
            return int8_type
    raise TypeError(f"no int8 counterpart of {type(layer).__name__}")


def to_int8(layer: nn.Module) -> Int8Layer:
    """The int8 counterpart of an ``nn.Linear`` or ``nn.Conv2d``."""
    return _int8_class(layer).from_float(layer)


def empty_int8_like(layer: nn.Module) -> Int8Layer:
    """An int8 layer of ``layer``'s shape with zero weights (to load a state dict into)."""
    return _int8_class(layer)._like(layer)


def int8_layer_names(net: nn.Sequential) -> list[str]:
    """The weighted layers of ``net`` that :func:`fits_int8` selects."""
    return [name for name, m in net.named_children()
            if isinstance(m, (nn.Linear, nn.Conv2d)) and fits_int8(m.weight)]


def lowbit_network(net: nn.Sequential, names: list[str] | None = None,
                   calibration: torch.Tensor | None = None) -> nn.Sequential:
    """A copy of ``net`` (an ``nn.Sequential`` of named layers, e.g. the quantised export)
    whose layers ``names`` (default :func:`int8_layer_names`) run in int8; the rest are
    shared with ``net``.  With ``calibration`` inputs ``(N, *input_shape)``, the activations
    between int8 layers stay ``uint8`` (:func:`calibrate`); without, every int8 layer
    quantises its input per call."""
    names = int8_layer_names(net) if names is None else names
    fast = nn.Sequential(OrderedDict(
        (name, to_int8(m) if name in names else m) for name, m in net.named_children())).eval()
    if calibration is not None:
        calibrate(fast, net, calibration)
    return fast


# layers a uint8 activation passes through unchanged in meaning: codes of a max-pool are the
# max-pool of the codes, and flattening and selecting units only reorder and drop
_CODE_PASSTHROUGH = (nn.MaxPool2d, nn.Flatten, SelectUnits)


def code_links(net: nn.Sequential) -> list[tuple[int, int]]:
    """Pairs ``(i, j)`` of positions in ``net``: int8 layer ``i`` followed by a ReLU, then
    only max-pools, flattening and unit selections, then int8 layer ``j`` — where the
    activation can stay ``uint8`` from ``i`` to ``j``."""
    mods = list(net)
    links = []
    for i, m in enumerate(mods):
        if not isinstance(m, Int8Layer) or i + 1 >= len(mods) \
                or not isinstance(mods[i + 1], nn.ReLU | nn.Identity):
            continue
        j = i + 2
        while j < len(mods) and isinstance(mods[j], _CODE_PASSTHROUGH):
            j += 1
        if j < len(mods) and isinstance(mods[j], Int8Layer):
            links.append((i, j))
    return links


@torch.no_grad()
def calibrate(fast: nn.Sequential, net: nn.Sequential, x: torch.Tensor,
              batch_size: int = 1000) -> dict[str, float]:
    """Fix the static scales of ``fast`` (:func:`lowbit_network` of ``net``) in place: for
    each link ``(i, j)`` of :func:`code_links`, ``s = f · max relu(net[i](·)) / ACT_LEVELS``
    over the calibration inputs ``x`` — the float network's activations, so no layer's
    maximum depends on another's rounding — becomes layer ``i``'s ``output_scale`` and layer
    ``j``'s ``input_scale``; then :func:`route_codes`.  The clip fraction ``f`` is the
    :data:`CLIP_FRACTIONS` entry at which ``fast`` changes the fewest of ``net``'s predicted
    classes on ``x``, chosen link by link in network order with the later links at their
    maximum (ties go to the wider clip).  Returns the scales by layer name."""
    links = code_links(fast)
    watched = {i for i, _ in links}
    top = dict.fromkeys(watched, 0.0)
    mods = list(net)
    predicted = []
    for k in range(0, x.shape[0], batch_size):
        h = x[k:k + batch_size]
        for i, m in enumerate(mods):
            h = m(h)
            if i in watched:
                top[i] = max(top[i], float(h.max()))
        predicted.append(h.argmax(1))
    predicted = torch.cat(predicted)
    fast_mods = list(fast)

    def clip(i, j, fraction):
        s = fraction * top[i] / ACT_LEVELS if top[i] > 0 else 1.0
        fast_mods[i].output_scale.fill_(s)
        fast_mods[j].input_scale.fill_(s)

    for i, j in links:
        clip(i, j, 1.0)
    route_codes(fast)
    for i, j in links:
        if top[i] > 0:
            flips = []          # the share of x whose class fast changes, per fraction
            for f in CLIP_FRACTIONS:
                clip(i, j, f)
                flips.append(classification_error(fast, x, predicted, batch_size))
            clip(i, j, CLIP_FRACTIONS[min(range(len(flips)), key=lambda n: (flips[n], n))])
    return code_scales(fast)


def code_scales(fast: nn.Sequential) -> dict[str, float]:
    """The layers of ``fast`` that write ``uint8`` codes, and their scales."""
    return {name: float(m.output_scale) for name, m in fast.named_children()
            if isinstance(m, Int8Layer) and m.writes_codes}


def route_codes(fast: nn.Sequential) -> nn.Sequential:
    """Give ``fast`` the structure its scales call for, in place: after each int8 layer
    that writes codes, the ReLU it applies becomes ``nn.Identity`` and the max-pools up to
    the next int8 layer :class:`PairMaxPool2d`.  Returns ``fast``."""
    mods = list(fast)
    names = [name for name, _ in fast.named_children()]
    for i, j in code_links(fast):
        if not mods[i].writes_codes:
            continue
        setattr(fast, names[i + 1], nn.Identity())
        for k in range(i + 2, j):
            if isinstance(mods[k], nn.MaxPool2d) and not isinstance(mods[k], PairMaxPool2d):
                setattr(fast, names[k], PairMaxPool2d.like(mods[k]))
    return fast


class PairMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` that takes ``uint8`` codes and runs fast on channels-last floats: a
    2×2, stride-2 pool without padding as two elementwise maxima over the channels-last
    layout, ``(N, H, W, C) → (N, H/2, 2, W·C) → (N, H/2, W/2, 2, C) → (N, H/2, W/2, C)``
    (rows paired, then columns; each maximum reads two contiguous runs).  torch's uint8
    max-pool refuses large channels-last batches, and its channels-last float pool is slower
    on CPU.  Other geometries, and float inputs in the contiguous layout, go to
    ``F.max_pool2d``.  ``(N, C, H, W) → (N, C, ⌊H/2⌋, ⌊W/2⌋)``, channels-last."""

    @classmethod
    def like(cls, pool: nn.MaxPool2d) -> PairMaxPool2d:
        return cls(pool.kernel_size, pool.stride, pool.padding, pool.dilation,
                   pool.return_indices, pool.ceil_mode)

    def _pairs(self) -> bool:
        def two(v):
            return v in (2, (2, 2))

        return (two(self.kernel_size) and two(self.stride) and self.padding in (0, (0, 0))
                and self.dilation in (1, (1, 1)) and not self.ceil_mode
                and not self.return_indices)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        codes = x.dtype == torch.uint8
        if not self._pairs() or not (codes or x.is_contiguous(
                memory_format=torch.channels_last)):
            return super().forward(x.contiguous() if codes else x)
        n, c, h, w = x.shape
        h2, w2 = h // 2, w // 2
        z = x[:, :, :2 * h2, :2 * w2].permute(0, 2, 3, 1).contiguous()   # (N, H, W, C)
        z = z.reshape(n * h2, 2, w2, 2 * c)
        z = torch.maximum(z[:, 0], z[:, 1]).reshape(n * h2, w2, 2, c)      # rows paired
        z = torch.maximum(z[:, :, 0], z[:, :, 1])                          # columns paired
        return z.reshape(n, h2, w2, c).permute(0, 3, 1, 2)
