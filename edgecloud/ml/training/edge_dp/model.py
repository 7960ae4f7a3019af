"""A small ResNet for Fashion-MNIST: the model the edge data-parallel job trains.

Three stages of one basic residual block each (16, 32, 64 channels; the last two halve the
resolution), global average pooling and a linear classifier — ~78k parameters (0.31 MB
in fp32). ResNet-32 of the anchor paper stacks five blocks per stage on CIFAR; one block
per stage keeps a training step affordable on two shared cores while keeping the shape
(identity and projection shortcuts, stride-2 stages).

GroupNorm instead of BatchNorm: every parameter of the model is then a weight the
coordinator owns, with no running statistics that each worker would update on its own
shard and that would need a separate synchronisation.

Example::

    model = FashionResNet()
    logits = model(torch.zeros(8, 1, 28, 28))   # (8, 10)
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class BasicBlock(nn.Module):
    """conv3x3 → norm → relu → conv3x3 → norm, plus the (projected) input."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = _norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = _norm(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          _norm(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class FashionResNet(nn.Module):
    """stem(1→w) → block(w) → block(2w, /2) → block(4w, /2) → avgpool → fc(4w→10)."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, 1, 1, bias=False), _norm(width),
                                  nn.ReLU())
        self.stages = nn.Sequential(BasicBlock(width, width),
                                    BasicBlock(width, 2 * width, 2),      # 28 → 14
                                    BasicBlock(2 * width, 4 * width, 2))  # 14 → 7
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
