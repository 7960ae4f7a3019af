"""The Fashion-MNIST CNN the compression reports use, its training, and a weight cache.

``edgecloud.ml.training.models.FashionCNN`` did not exist when this package was written, so
the model is defined here: two conv-BN-ReLU-pool stages and a two-layer head, ~420k
parameters (1.7 MB fp32), ~91 % test accuracy after two epochs. ``fashion_student()`` is the
same shape at a quarter of the width, the student of the distillation report.

Trained weights are cached (safetensors, no pickle) under ``~/.cache/edgecloud/models``
(``XDG_CACHE_HOME`` respected), keyed by architecture and training settings.

Example::

    model = load_or_train_fashion_cnn()          # trains once (~2 min on 1 core), then cached
    acc = accuracy(model, *load_fashion_mnist()[1].tensors())
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "FashionNet",
    "fashion_cnn",
    "fashion_student",
    "load_or_train_fashion_cnn",
    "models_cache_dir",
    "train_classifier",
]

Progress = Callable[[int, int], None]  # (done, total) steps


class FashionNet(nn.Module):
    """conv(c1)-BN-ReLU-pool, conv(c2)-BN-ReLU-pool, linear(hidden)-ReLU-dropout, linear(10).

    Input (N, 1, 28, 28) normalised as ``ImageSet.tensors()``; output logits (N, 10).
    """

    def __init__(self, c1: int = 32, c2: int = 64, hidden: int = 128,
                 dropout: float = 0.25) -> None:
        super().__init__()
        self.config = {"c1": c1, "c2": c2, "hidden": hidden}
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1, bias=False), nn.BatchNorm2d(c1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(c2 * 7 * 7, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def fashion_cnn() -> FashionNet:
    """The reference model (~420k parameters)."""
    return FashionNet(32, 64, 128)


def fashion_student() -> FashionNet:
    """The distillation student (~27k parameters, 1/16 of the teacher's)."""
    return FashionNet(8, 16, 32)


def models_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/edgecloud/models`` (default ``~/.cache/edgecloud/models``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgecloud" / "models"


def train_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: float = 1,
                     batch_size: int = 128, lr: float = 1e-3, seed: int = 0,
                     progress: Progress | None = None) -> nn.Module:
    """Adam + cross-entropy over ``epochs`` (fractions allowed) of shuffled mini-batches.

    >>> train_classifier(fashion_student(), x[:512], y[:512], epochs=1)  # doctest: +SKIP
    """
    gen = torch.Generator().manual_seed(seed)
    steps = max(1, int(epochs * len(x) / batch_size))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    order = torch.randperm(len(x), generator=gen)
    pos = 0
    for step in range(steps):
        if pos + batch_size > len(x):
            order, pos = torch.randperm(len(x), generator=gen), 0
        idx = order[pos:pos + batch_size]
        pos += batch_size
        opt.zero_grad()
        loss_fn(model(x[idx]), y[idx]).backward()
        opt.step()
        if progress:
            progress(step + 1, steps)
    return model.eval()


def load_or_train_fashion_cnn(epochs: float = 2, seed: int = 0, cache: Path | None = None,
                              progress: Progress | None = None) -> FashionNet:
    """The reference model trained on the 60k training images, from the cache if there.

    >>> model = load_or_train_fashion_cnn()  # doctest: +SKIP
    """
    from safetensors.torch import load_file, save_file

    from edgecloud.ml.training.data import load_split

    model = fashion_cnn()
    cfg = model.config
    path = (cache or models_cache_dir()) / (
        f"fashion-cnn-c{cfg['c1']}-{cfg['c2']}-h{cfg['hidden']}-e{epochs:g}-s{seed}.safetensors")
    if path.is_file():
        model.load_state_dict(load_file(str(path)))
        return model.eval()
    torch.manual_seed(seed)
    x, y = load_split("train").tensors()
    train_classifier(model, x, y, epochs=epochs, seed=seed, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(path)  # atomic: a concurrent reader never sees half a file
    return model.eval()
