"""Small networks written the way a user writes their own: plain torch modules built by a
factory, which pbc reaches only through ``--model package.module:callable``.

``pbc.zoo:resnet8`` is the residual network of the studies: a ResNet in the style of He et
al. (2016) for 28×28 grey images — a stride-2 3×3 stem, three stages of one basic block each
(16, 32, 64 channels; the second and third halve the resolution and add through a 1×1
strided projection), global average pooling and a linear classifier: 8 weighted layers on the
main path, 77 thousand weights.  Channels are tied through the additions, so pruning it needs
the dependency graph of :mod:`pbc.graph`.
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``; the shortcut is the identity,
    or a strided 1×1 conv with batch norm where the width or resolution changes.
    ``x: (N, c_in, H, W) → (N, c_out, H / stride, W / stride)``."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Stem, one :class:`BasicBlock` per entry of ``widths`` (stride 2 after the first),
    global average pooling, linear head.  ``x: (N, in_channels, H, W) → (N, num_classes)``."""

    def __init__(self, widths=(16, 32, 64), in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        blocks, c = [], widths[0]
        for i, w in enumerate(widths):
            blocks.append(BasicBlock(c, w, stride=1 if i == 0 else 2))
            c = w
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.pool(self.layers(x))
        return self.fc(torch.flatten(x, 1))


def resnet8() -> ResNet:
    """ResNet-8 for 28×28 grey images and 10 classes (see the module docstring)."""
    return ResNet((16, 32, 64))


def resnet8_narrow() -> ResNet:
    """:func:`resnet8` at a quarter of the width (4, 8, 16 channels): the same graph for
    quick checks."""
    return ResNet((4, 8, 16))
