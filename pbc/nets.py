"""Named architectures as plain records, the plain-torch network they build, and its error.

An :class:`Architecture` is a JSON-able record of layer specs.  :func:`build_network` turns
it into an ``nn.Sequential`` whose state-dict keys are ``<layer>.weight`` etc.  This module
imports torch only (never Pyro): exported, compressed networks are rebuilt from it.

Layer kinds: ``linear``, ``conv``, ``relu``, ``maxpool``, ``flatten``, ``batchnorm`` and
``select`` (keeps ``out_size`` of ``in_size`` input units, by an index buffer; compressed
networks use it where structured pruning removes single inputs of a linear layer).

A network of the user's own code is an :class:`Architecture` with a ``factory``
(``"package.module:callable"``, called without arguments): its ``layers`` list the linear,
conv and batch-norm modules by dotted name and size, and :func:`build_network` calls the
factory and resizes those modules.  The callable itself travels beside the record
(``builder``) and is never imported from a file: whoever rebuilds such a network passes it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from pbc.defaults import MODELS
from pbc.graph.rebuild import import_factory, module_sizes, resize, swappable, with_biases

WEIGHTED = ("linear", "conv")
#: the most weights one layer of a network read back from a file may have (VGG-16's
#: largest has 2.4 million)
MAX_LAYER_PARAMETERS = 1 << 25


@dataclass(frozen=True)
class LayerSpec:
    """One layer: ``kind`` in linear | conv | relu | maxpool | flatten | batchnorm | select."""

    kind: str
    name: str
    in_size: int = 0
    out_size: int = 0
    kernel: int = 0
    padding: int = 0


@dataclass(frozen=True)
class Architecture:
    """A network as a record: sequential layer specs, or the sized modules of a network that
    ``factory`` builds (see the module docstring)."""

    name: str
    input_shape: tuple[int, int, int]  # (C, H, W)
    layers: tuple[LayerSpec, ...]
    factory: str | None = None
    builder: Callable[[], nn.Module] | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict:
        d = {"name": self.name, "input_shape": list(self.input_shape),
             "layers": [asdict(s) for s in self.layers]}
        if self.factory is not None:
            d["factory"] = self.factory
        return d

    @classmethod
    def from_dict(cls, d: dict, builder: Callable[[], nn.Module] | None = None
                  ) -> Architecture:
        """The record :meth:`to_dict` wrote; ``ValueError`` for sizes that are not whole
        numbers in range or a layer of more than :data:`MAX_LAYER_PARAMETERS` weights (an
        artefact read back is checked before any network is built from it).  ``builder`` is
        the factory of a record that names one (the record's own name is not imported)."""
        factory = d.get("factory")
        if factory is not None and not isinstance(factory, str):
            raise ValueError("architecture factory must be a 'package.module:callable' string")
        arch = cls(d["name"], tuple(d["input_shape"]),
                   tuple(LayerSpec(**s) for s in d["layers"]), factory, builder)
        sizes = [*arch.input_shape, *(v for s in arch.layers
                                      for v in (s.in_size, s.out_size, s.kernel, s.padding))]
        if len(arch.input_shape) != 3 or not all(
                isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 20
                for v in sizes):
            raise ValueError("architecture sizes must be whole numbers in [0, 2**20)")
        for s in arch.layers:
            if s.in_size * s.out_size * max(1, s.kernel) ** 2 > MAX_LAYER_PARAMETERS:
                raise ValueError(f"layer {s.name} declares more than {MAX_LAYER_PARAMETERS} "
                                 f"weights")
        return arch

    def weighted_layers(self) -> list[LayerSpec]:
        return [s for s in self.layers if s.kind in WEIGHTED]


def _fc(name, n_in, n_out):
    return LayerSpec("linear", name, n_in, n_out)


def _conv(name, c_in, c_out, k, padding=0):
    return LayerSpec("conv", name, c_in, c_out, k, padding)


def lenet300(input_shape=(1, 28, 28), num_classes=10) -> Architecture:
    """LeNet-300-100: 784-300-100-10 with ReLU."""
    n = input_shape[0] * input_shape[1] * input_shape[2]
    return Architecture("lenet300", tuple(input_shape), (
        LayerSpec("flatten", "flatten"),
        _fc("fc1", n, 300), LayerSpec("relu", "relu1"),
        _fc("fc2", 300, 100), LayerSpec("relu", "relu2"),
        _fc("fc3", 100, num_classes),
    ))


def lenet5(input_shape=(1, 28, 28), num_classes=10, conv_relu: bool = False) -> Architecture:
    """LeNet-5-Caffe: conv 20@5×5 → max-pool → conv 50@5×5 → max-pool → fc 500 → ReLU → fc.

    ``conv_relu``: a ReLU after each convolution as well (``lenet5-relu``), the LeNet-5 that
    Louizos et al.'s own code trains; Caffe's has none there."""
    c, h, _ = input_shape
    side = ((h - 4) // 2 - 4) // 2

    def after_conv(i: int) -> tuple[LayerSpec, ...]:
        return (LayerSpec("relu", f"relu_c{i}"),) if conv_relu else ()

    return Architecture("lenet5-relu" if conv_relu else "lenet5", tuple(input_shape), (
        _conv("conv1", c, 20, 5), *after_conv(1), LayerSpec("maxpool", "pool1", kernel=2),
        _conv("conv2", 20, 50, 5), *after_conv(2), LayerSpec("maxpool", "pool2", kernel=2),
        LayerSpec("flatten", "flatten"),
        _fc("fc1", 50 * side * side, 500), LayerSpec("relu", "relu1"),
        _fc("fc2", 500, num_classes),
    ))


def lenet5_relu(input_shape=(1, 28, 28), num_classes=10) -> Architecture:
    """LeNet-5-Caffe with a ReLU after each convolution (:func:`lenet5`)."""
    return lenet5(input_shape, num_classes, conv_relu=True)


VGG16_CHANNELS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                  512, 512, 512, "M", 512, 512, 512, "M")


def vgg16(input_shape=(3, 32, 32), num_classes=10, width: int = 1) -> Architecture:
    """VGG-16 for CIFAR-10: 13 conv 3×3 with batch norm and ReLU — (2×64)-(2×128)-(3×256)-
    (6×512), a max-pool after each block — then fc 512 → ReLU → fc ``num_classes``.
    ``width = k`` divides every layer's width by ``k`` (``vgg16-narrow``: ``k = 8``)."""
    layers, c_in, i, p = [], input_shape[0], 0, 0
    name = "vgg16" if width == 1 else "vgg16-narrow" if width == 8 else f"vgg16/{width}"
    for c in VGG16_CHANNELS:
        if c != "M":
            c //= width
        if c == "M":
            p += 1
            layers.append(LayerSpec("maxpool", f"pool{p}", kernel=2))
            continue
        i += 1
        layers += [_conv(f"conv{i}", c_in, c, 3, padding=1),
                   LayerSpec("batchnorm", f"bn{i}", c, c), LayerSpec("relu", f"relu{i}")]
        c_in = c
    side = input_shape[1] // 32
    fc = 512 // width
    layers += [LayerSpec("flatten", "flatten"), _fc("fc1", c_in * side * side, fc),
               LayerSpec("relu", "relu_fc1"), _fc("fc2", fc, num_classes)]
    return Architecture(name, tuple(input_shape), tuple(layers))


def vgg16_narrow(input_shape=(3, 32, 32), num_classes=10) -> Architecture:
    """VGG-16 at an eighth of the width ((2×8)-(2×16)-(3×32)-(6×64), fc 64): the same
    structure for quick checks and CPU budgets."""
    return vgg16(input_shape, num_classes, width=8)


ARCHITECTURES = dict(zip(MODELS, (lenet300, lenet5, lenet5_relu, vgg16, vgg16_narrow),
                         strict=True))


def parse_layer_values(text: str | None, flag: str = "value") -> dict[str, float]:
    """``"fc1=3,fc2=2.5"`` → ``{"fc1": 3.0, "fc2": 2.5}``; ValueError naming ``flag``."""
    if not text:
        return {}
    out = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"bad {flag} entry {part!r}; expected LAYER=NUMBER") from None
    return out


def is_factory_name(name: str) -> bool:
    """Whether a model name is ``"package.module:callable"`` (the user's own network)."""
    return ":" in name


def make_architecture(name: str, input_shape, num_classes: int = 10,
                      builder: Callable[[], nn.Module] | None = None) -> Architecture:
    """The named architecture, or for ``"package.module:callable"`` the network that callable
    builds (``builder``: that callable, imported by name when not given)."""
    if is_factory_name(name):
        return factory_architecture(name, tuple(input_shape), num_classes, builder)
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(ARCHITECTURES)} or "
                         f"name your own as package.module:callable")
    return ARCHITECTURES[name](tuple(input_shape), num_classes)


def factory_architecture(name: str, input_shape: tuple[int, int, int], num_classes: int,
                         builder: Callable[[], nn.Module] | None = None) -> Architecture:
    """The record of the network ``builder()`` returns (``builder``: the callable ``name``
    names, imported when not given): its linear, conv and batch-norm modules by dotted name
    with their sizes.  ``ValueError`` when it is not an ``nn.Module`` mapping
    ``(1, *input_shape)`` to ``(1, num_classes)`` logits."""
    builder = builder or import_factory(name)
    net = builder()
    if not isinstance(net, nn.Module):
        raise ValueError(f"{name} returned a {type(net).__name__}, not a torch nn.Module")
    with torch.no_grad():
        try:
            out = net.eval()(torch.zeros(1, *input_shape))
        except Exception as e:  # the user's code: any failure is a one-line refusal
            raise ValueError(f"{name}: the network does not take inputs of shape "
                             f"{(1, *input_shape)} ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{name}: expected logits of shape (1, {num_classes}) for one input, "
                         f"got {shape}")
    return Architecture(name, tuple(input_shape), sized_modules(with_biases(net)), name, builder)


def sized_modules(net: nn.Module) -> tuple[LayerSpec, ...]:
    """The layer specs of a factory network's sized modules, by dotted name: ``linear`` and
    ``conv`` for the layers that become Bayesian (:func:`pbc.graph.rebuild.swappable`),
    ``batchnorm``, and ``fixed`` for any other linear or conv module (grouped, another
    padding mode, a subclass), which keeps its weights."""
    specs = []
    for name, rec in module_sizes(net).items():
        kind = rec["kind"]
        if kind != "batchnorm" and not swappable(net.get_submodule(name)):
            kind = "fixed"
        specs.append(LayerSpec(kind, name, rec["in"], rec["out"]))
    return tuple(specs)


class SelectUnits(nn.Module):
    """Keep the input units listed in the ``index`` buffer: ``(N, in) → (N, len(index))``."""

    def __init__(self, in_size: int, out_size: int):
        super().__init__()
        self.in_size = in_size
        self.register_buffer("index", torch.arange(out_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(1, self.index)


def plain_layer(spec: LayerSpec) -> nn.Module:
    if spec.kind == "linear":
        return nn.Linear(spec.in_size, spec.out_size)
    if spec.kind == "conv":
        return nn.Conv2d(spec.in_size, spec.out_size, spec.kernel, padding=spec.padding)
    if spec.kind == "relu":
        return nn.ReLU()
    if spec.kind == "maxpool":
        return nn.MaxPool2d(spec.kernel)
    if spec.kind == "flatten":
        return nn.Flatten()
    if spec.kind == "batchnorm":
        return nn.BatchNorm2d(spec.out_size)
    if spec.kind == "select":
        return SelectUnits(spec.in_size, spec.out_size)
    raise ValueError(f"unknown layer kind {spec.kind!r}")


def build_network(arch: Architecture) -> nn.Module:
    """The plain torch network of ``arch``; state-dict keys are ``<layer>.weight`` etc.

    A sequential record gives an ``nn.Sequential``; a factory's record the factory's network
    with every linear and conv module given a bias (the Bayesian layers have one) and resized
    to the record's sizes (dotted keys, ``layer1.0.conv1.weight``)."""
    if arch.factory is None:
        return nn.Sequential(OrderedDict((s.name, plain_layer(s)) for s in arch.layers))
    if arch.builder is None:
        raise ValueError(f"{arch.name} is built by the user's code ({arch.factory}): pass "
                         f"that factory to rebuild it (pbc never imports code a file names)")
    net = with_biases(arch.builder())
    have = module_sizes(net)
    sizes = {}
    for s in arch.layers:
        old = have.get(s.name, {"kind": s.kind})
        rec = {**old, "in": s.in_size, "out": s.out_size}
        if old.get("groups", 1) != 1 and old["groups"] == old["in"] == old["out"]:
            rec["groups"] = s.in_size          # a depthwise conv: one group per channel
        sizes[s.name] = rec
    return resize(net, sizes)


def plain_network(arch: Architecture, state: dict[str, torch.Tensor]) -> nn.Sequential:
    """:func:`build_network` of ``arch`` holding ``state`` (on the CPU), in eval mode."""
    net = build_network(arch)
    net.load_state_dict({k: v.cpu() for k, v in state.items()}, strict=True)
    return net.eval()


@torch.no_grad()
def classification_error(net: nn.Module, x: torch.Tensor, y: torch.Tensor,
                         batch_size: int = 1000, device: str | torch.device = "cpu") -> float:
    """Fraction of ``x: (N, ...)`` that the deterministic ``net`` misclassifies."""
    was_training = net.training
    net.eval()
    wrong = 0
    for i in range(0, x.shape[0], batch_size):
        xb = x[i:i + batch_size].to(device, non_blocking=True)
        yb = y[i:i + batch_size].to(device, non_blocking=True)
        wrong += (net(xb).argmax(-1) != yb).sum().item()
    net.train(was_training)
    return wrong / max(1, x.shape[0])
