"""Channel dependencies of any torch network, traced with ``torch.fx``.

:func:`trace` runs :func:`torch.fx.symbolic_trace` and ``ShapeProp`` on a zeros input
``(1, *input_shape)`` and gives every traced activation with at least two dimensions a
*layout*: the channel id of each position along its dimension 1.  Ids are global integers;
each producer (a ``Conv2d`` with ``groups == 1`` or a ``Linear`` on ``(N, F)`` inputs)
allocates a block of fresh ids for its outputs (its *space*), and a union-find over ids
records which channels must go together.  The rules:

* producers allocate a new space for their outputs and *consume* their input layout;
* per-channel ops keep the layout: batch norm (1-D / 2-D), depthwise convolution
  (``groups == in_channels == out_channels``), element-wise activations, dropout, identity,
  pooling (module or functional), interpolation, scalar arithmetic, and reductions over
  spatial dimensions only;
* element-wise tensor-tensor ops (``+``, ``-``, ``*``, ``/``, ``torch.maximum`` ...) unite
  the channels of their operands position by position (a residual add ties the channels of
  both producers); an operand broadcast along dimension 1 has its own channels fixed;
* ``torch.cat(dim=1)`` concatenates layouts (``cat`` along another dimension unites them);
* flattening ``(N, C, *S) → (N, C·P)`` (``torch.flatten(x, 1)``, ``nn.Flatten``,
  ``x.view(x.size(0), -1)``, ``x.reshape(N, -1)``; ``P = prod(S)`` from ``ShapeProp``) maps
  channel ``c`` to positions ``c·P … c·P + P − 1``;
* anything else that takes a tensor is *unrecognised*: every channel reaching it is fixed
  (never removed) and its output gets a fresh fixed space.  The network input and every
  channel that reaches the output are fixed as well.

The graph holds channel ids only; :func:`pbc.graph.masks.graph_masks` turns per-group keep
masks into per-module unit masks.  This module imports torch and numpy only.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

#: parameter-free modules whose output channel ``c`` depends on input channel ``c`` only
KEEP_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign,
    nn.LogSigmoid, nn.Tanhshrink, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.AlphaDropout, nn.Identity, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
    nn.Upsample, nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d,
)
KEEP_FUNCTIONS = {
    F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu,
    F.gelu, F.silu, F.mish, F.hardtanh, F.hardswish, F.hardsigmoid, F.softplus, F.sigmoid,
    torch.sigmoid, F.tanh, torch.tanh, F.dropout, F.dropout1d, F.dropout2d, F.alpha_dropout,
    F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.interpolate,
    torch.clamp, torch.clip, torch.abs, torch.exp, torch.neg, torch.square, operator.neg,
}
KEEP_METHODS = {
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clip",
    "abs", "exp", "neg", "square", "contiguous", "clone", "detach", "float", "to",
}
ELEMENTWISE_FUNCTIONS = {
    operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul,
    operator.truediv, operator.itruediv, operator.pow, torch.add, torch.sub, torch.mul,
    torch.div, torch.pow, torch.maximum, torch.minimum,
}
ELEMENTWISE_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "pow"}
FLATTEN_METHODS = {"view", "reshape"}
REDUCE_FUNCTIONS = {torch.mean, torch.sum, torch.amax, torch.amin}
REDUCE_METHODS = {"mean", "sum", "amax", "amin"}
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass
class ChannelGraph:
    """Channel ids of a traced network and the union-find that ties them.

    Attributes
    ----------
    layouts : node name → ``(C,)`` int array, the channel id of each position along dim 1
    kinds : module name → ``"conv"`` | ``"linear"`` (producers) | ``"batchnorm"`` |
        ``"depthwise"`` (per-channel modules), for every module the graph can resize
    inputs : module name → ``(in,)`` ids of the module's input positions
    outputs : producer name → ``(out,)`` ids of its own output channels (its space)
    unrecognised : names of the nodes handled conservatively (their channels fixed)
    """

    input_shape: tuple[int, ...]
    layouts: dict[str, np.ndarray] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    unrecognised: list[str] = field(default_factory=list)
    parent: list[int] = field(default_factory=list)
    fixed: list[bool] = field(default_factory=list)

    def new(self, n: int, fixed: bool = False) -> np.ndarray:
        """``n`` fresh channel ids (a new space), fixed or not: ``(n,)`` int array."""
        start = len(self.parent)
        self.parent += range(start, start + n)
        self.fixed += [fixed] * n
        return np.arange(start, start + n)

    def find(self, i: int) -> int:
        """The representative of channel ``i``'s class (with path halving)."""
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def unite(self, a: np.ndarray, b: np.ndarray) -> None:
        """Tie channel ``a[k]`` to ``b[k]`` for every position ``k``; a class is fixed when
        any of its channels is."""
        for x, y in zip(a.tolist(), b.tolist(), strict=True):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[ry] = rx
                self.fixed[rx] = self.fixed[rx] or self.fixed[ry]

    def fix(self, ids: np.ndarray) -> None:
        """Mark the classes of ``ids`` as never removable."""
        for i in np.asarray(ids).tolist():
            self.fixed[self.find(i)] = True

    def roots(self) -> np.ndarray:
        """``(n_ids,)`` the class representative of every channel id."""
        return np.array([self.find(i) for i in range(len(self.parent))], dtype=np.int64)

    def is_fixed(self, ids: np.ndarray) -> np.ndarray:
        """``(len(ids),)`` bool: whether each channel's class is fixed."""
        return np.array([self.fixed[self.find(i)] for i in np.asarray(ids).tolist()], bool)


def _shape(node) -> tuple[int, ...] | None:
    """The traced tensor shape of ``node``'s value, ``None`` for anything else."""
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if isinstance(meta, TensorMetadata) else None


def _first(node: fx.Node, g: ChannelGraph) -> tuple:
    """The first argument's node, layout and shape (at least 2-D), or ``(None, None, None)``."""
    x = node.args[0] if node.args else None
    s = _shape(x)
    if s is None or x.name not in g.layouts or len(s) < 2:
        return None, None, None
    return x, g.layouts[x.name], s


def _same_channels(out, s) -> bool:
    return out is not None and s is not None and len(out) >= 2 and out[:2] == s[:2]


def _keep(node, g, out):
    """A per-channel op: the output keeps the layout of the first argument, provided no other
    tensor enters and batch and channel sizes are unchanged."""
    x, lay, s = _first(node, g)
    others = [a for a in node.all_input_nodes if a is not x and _shape(a) is not None]
    return lay if x is not None and not others and _same_channels(out, s) else None


def _elementwise(node, g, out):
    """Element-wise tensor-tensor op: aligned operands are tied position by position."""
    if out is None or len(out) < 2:
        return None
    layout = None
    for a in node.all_input_nodes:
        s = _shape(a)
        if s is None:
            continue
        k = len(s) - len(out) + 1          # the operand's dimension aligned with dim 1
        if k == 1 and s[1] == out[1] and a.name in g.layouts:
            if layout is None:
                layout = g.layouts[a.name]
            else:
                g.unite(layout, g.layouts[a.name])
        elif k < 0 or s[k] == 1:           # broadcast along channels: read by all of them
            if a.name in g.layouts:
                g.fix(g.layouts[a.name])
        else:                              # per-channel tensor without a layout (a constant)
            return None
    return layout


def _cat(node, g, out):
    tensors = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    if out is None or len(out) < 2 or not isinstance(tensors, (list, tuple)) or not all(
            _shape(t) is not None and len(_shape(t)) == len(out) and t.name in g.layouts
            for t in tensors) or not isinstance(dim, int):
        return None
    lays = [g.layouts[t.name] for t in tensors]
    if dim % len(out) == 1:
        return np.concatenate(lays)
    if any(len(lay) != len(lays[0]) for lay in lays):
        return None
    for lay in lays[1:]:
        g.unite(lays[0], lay)
    return lays[0]


def _flat(node, g, out, start, end):
    """``(N, C, *S) → (N, C·P)``: channel ``c`` becomes positions ``c·P … c·P + P − 1``."""
    x, lay, s = _first(node, g)
    if x is None or out is None or start != 1 or end not in (-1, len(s) - 1):
        return None
    p = int(np.prod(s[2:], dtype=np.int64))
    return np.repeat(lay, p) if out == (s[0], s[1] * p) else None


def _view(node, g, out):
    """``x.view(N, -1)`` / ``reshape``: only the ``-1`` form, so pruned sizes still fit."""
    shape = node.args[1:]
    if len(shape) == 1 and isinstance(shape[0], (list, tuple)):
        shape = tuple(shape[0])
    return _flat(node, g, out, 1, -1) if len(shape) == 2 and shape[1] == -1 else None


def _reduce(node, g, out):
    """A mean / sum / max over dimensions other than batch and channel keeps the layout."""
    x, lay, s = _first(node, g)
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if x is None or dims is None or out is None or len(out) < 2 or out[:2] != s[:2]:
        return None
    dims = (dims,) if isinstance(dims, int) else dims
    if not isinstance(dims, (list, tuple)) or not all(isinstance(d, int) for d in dims):
        return None
    return lay if {d % len(s) for d in dims}.isdisjoint({0, 1}) else None


def _module(node, g, out, m):
    """A call of a leaf module: producer, per-channel module, keep-module or flatten."""
    name = node.target
    if isinstance(m, KEEP_MODULES):
        return _keep(node, g, out)
    if type(m) is nn.Flatten:
        return _flat(node, g, out, m.start_dim, m.end_dim)
    x, lay, s = _first(node, g)
    if x is None or len(node.all_input_nodes) != 1:
        return None
    per_channel = (type(m) in BATCHNORMS and s[1] == m.num_features
                   and _same_channels(out, s))
    depthwise = (type(m) is nn.Conv2d and len(s) == 4 and m.groups > 1
                 and m.groups == m.in_channels == m.out_channels)
    producer = ((type(m) is nn.Conv2d and len(s) == 4 and m.groups == 1)
                or (type(m) is nn.Linear and len(s) == 2))
    if not (per_channel or depthwise or producer):
        return None
    kind = ("batchnorm" if per_channel else "depthwise" if depthwise
            else "conv" if type(m) is nn.Conv2d else "linear")
    if name in g.inputs:                   # a module called twice reads one layout
        g.unite(g.inputs[name], lay)
    else:
        g.inputs[name] = lay
    g.kinds[name] = kind
    if not producer:
        return lay
    if name not in g.outputs:
        g.outputs[name] = g.new(out[1])
    return g.outputs[name]


def _rule(node, g, out, modules):
    """The layout of ``node``'s output by the rules above, ``None`` when none applies."""
    t = node.target
    if node.op == "call_module":
        return _module(node, g, out, modules[t])
    if node.op == "call_function":
        if t in KEEP_FUNCTIONS:
            return _keep(node, g, out)
        if t in ELEMENTWISE_FUNCTIONS:
            return _elementwise(node, g, out)
        if t is torch.cat:
            return _cat(node, g, out)
        if t is torch.flatten:
            a, k = node.args, node.kwargs
            return _flat(node, g, out, a[1] if len(a) > 1 else k.get("start_dim", 0),
                         a[2] if len(a) > 2 else k.get("end_dim", -1))
        if t is torch.reshape:
            return _view(node, g, out)
        if t in REDUCE_FUNCTIONS:
            return _reduce(node, g, out)
    if node.op == "call_method":
        if t in KEEP_METHODS:
            return _keep(node, g, out)
        if t in ELEMENTWISE_METHODS:
            return _elementwise(node, g, out)
        if t == "flatten":
            a, k = node.args, node.kwargs
            return _flat(node, g, out, a[1] if len(a) > 1 else k.get("start_dim", 0),
                         a[2] if len(a) > 2 else k.get("end_dim", -1))
        if t in FLATTEN_METHODS:
            return _view(node, g, out)
        if t in REDUCE_METHODS:
            return _reduce(node, g, out)
    return None


def _holds_tensor(node: fx.Node) -> bool:
    meta = node.meta.get("tensor_meta")
    if isinstance(meta, (list, tuple)) and not isinstance(meta, TensorMetadata):
        return any(isinstance(m, TensorMetadata) for m in meta)
    return isinstance(meta, TensorMetadata)


def trace(module: nn.Module, input_shape: tuple[int, ...]) -> ChannelGraph:
    """The :class:`ChannelGraph` of ``module`` for inputs ``x: (N, *input_shape)``.

    The module is traced symbolically and its shapes propagated on zeros ``(1,
    *input_shape)`` in eval mode and without gradients; its training flags and buffers are
    left as they were.  Module names in the graph are those of ``module.named_modules()``.
    """
    gm = fx.symbolic_trace(module)
    modules = dict(module.named_modules())
    flags = {m: m.training for m in gm.modules()}
    buffers = [(b, b.clone()) for b in gm.buffers()]
    param = next(module.parameters(), None)
    x = torch.zeros((1, *input_shape), device=param.device if param is not None else "cpu")
    try:
        gm.eval()
        with torch.no_grad():
            ShapeProp(gm).propagate(x)
    finally:
        for m, flag in flags.items():
            m.training = flag
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
    g = ChannelGraph(tuple(input_shape))
    untouchable = set()
    for node in gm.graph.nodes:
        out = _shape(node)
        if node.op in ("placeholder", "get_attr"):
            if out is not None and len(out) >= 2:
                g.layouts[node.name] = g.new(out[1], fixed=True)
            continue
        if node.op == "output":
            for a in node.all_input_nodes:
                if a.name in g.layouts:
                    g.fix(g.layouts[a.name])
            continue
        if not _holds_tensor(node):        # x.size(0), x.shape: no channel values read
            continue
        lay = _rule(node, g, out, modules)
        if lay is None:                    # unrecognised: fix what reaches it
            g.unrecognised.append(node.name)
            for a in node.all_input_nodes:
                if a.name in g.layouts:
                    g.fix(g.layouts[a.name])
            if node.op == "call_module":
                untouchable.add(node.target)
            if out is not None and len(out) >= 2:
                g.layouts[node.name] = g.new(out[1], fixed=True)
        elif out is not None and len(out) >= 2:
            g.layouts[node.name] = lay
    for name in untouchable:               # also called in a way the graph cannot follow
        for ids in (g.inputs.get(name), g.outputs.get(name)):
            if ids is not None:
                g.fix(ids)
    return g

