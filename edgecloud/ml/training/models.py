"""A small CNN for Fashion-MNIST and the plain training/evaluation loops around it.

``FashionCNN`` has ~117k parameters (two 5x5 conv blocks, one hidden dense layer): big
enough to pass 90 % test accuracy on Fashion-MNIST, small enough that a federated round
on a 2-core machine costs seconds, and its state dict (~0.47 MB in fp32) makes update
compression visible on the WAN.

Example::

    from edgecloud.ml.training.data import load_fashion_mnist
    train, test = load_fashion_mnist()
    x, y = train.subset(range(2000)).tensors()
    model = FashionCNN()
    train_epoch(model, x, y, lr=0.05)
    print(evaluate(model, *test.tensors()))   # {'loss': ..., 'accuracy': ...}
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F


class FashionCNN(nn.Module):
    """conv(1→16,5) → pool → conv(16→32,5) → pool → fc(512→128) → fc(128→10).

    No batch norm on purpose: its running statistics are not weights and averaging them
    across non-IID clients is a known source of trouble in FedAvg.
    """

    def __init__(self, num_classes: int = 10, width: int = 16, hidden: int = 128) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 5, padding=2)
        self.conv2 = nn.Conv2d(width, 2 * width, 5)
        self.fc1 = nn.Linear(2 * width * 5 * 5, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # 28 → 14
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # 14 → 10 → 5
        x = torch.flatten(x, 1)
        return self.fc2(F.relu(self.fc1(x)))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable values. Example: ``count_parameters(FashionCNN())`` → 117066."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def train_epoch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, lr: float = 0.05,
                batch_size: int = 32, momentum: float = 0.9, weight_decay: float = 0.0,
                seed: int | None = None, epochs: int = 1,
                penalty: Callable[[nn.Module], torch.Tensor] | None = None,
                max_steps: int | None = None) -> dict[str, float]:
    """Train ``model`` in place with SGD over shuffled mini-batches of ``(x, y)``.

    ``penalty(model)`` is added to the loss of every step (FedProx's proximal term uses
    it). ``max_steps`` caps the number of optimiser steps. Returns
    ``{"loss": mean training loss, "steps": n, "samples": n}``.

    Example: ``train_epoch(model, x, y, lr=0.05, epochs=2)``.
    """
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                          weight_decay=weight_decay)
    gen = torch.Generator()
    if seed is not None:
        gen.manual_seed(seed)
    else:
        gen.seed()
    total, steps, samples = 0.0, 0, 0
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), batch_size):
            if max_steps is not None and steps >= max_steps:
                break
            idx = order[start:start + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            if penalty is not None:
                loss = loss + penalty(model)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            steps += 1
            samples += len(idx)
    return {"loss": total / max(steps, 1), "steps": steps, "samples": samples}


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             batch_size: int = 1000) -> dict[str, float]:
    """``{"loss", "accuracy"}`` of ``model`` on ``(x, y)``; accuracy in [0, 1].

    Example: ``evaluate(model, *test.tensors())["accuracy"]``.
    """
    model.eval()
    loss, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        out = model(x[start:start + batch_size])
        target = y[start:start + batch_size]
        loss += float(F.cross_entropy(out, target, reduction="sum"))
        correct += int((out.argmax(1) == target).sum())
    n = max(len(x), 1)
    return {"loss": loss / n, "accuracy": correct / n}
