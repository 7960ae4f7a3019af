"""Crops to network inputs: resize, BGR -> RGB, normalise; the progress callback type."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np
import torch

#: progress(stage, done, total): called while building a training set or training.
Progress = Callable[[str, int, int], None]

_MEAN = 127.0
_STD = 128.0


def _resize_batch(crops: Sequence[np.ndarray], size: int) -> np.ndarray:
    """BGR uint8 crops -> RGB uint8 array (N, size, size, 3)."""
    out = np.empty((len(crops), size, size, 3), dtype=np.uint8)
    for i, crop in enumerate(crops):
        if crop.ndim == 2:
            crop = cv2.cvtColor(crop, cv2.COLOR_GRAY2BGR)
        out[i] = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)[..., ::-1]
    return out


def _to_tensor(batch: np.ndarray | torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(batch).permute(0, 3, 1, 2).float()
    return (x - _MEAN) / _STD
