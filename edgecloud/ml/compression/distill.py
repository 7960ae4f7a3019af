"""Knowledge distillation (Hinton et al. 2015): a small student learns a teacher's soft
outputs at temperature T, mixed with the hard labels.

``loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)``

Example::

    student = distill(teacher, fashion_student(), x, y, DistillConfig(epochs=1))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DistillConfig", "distill", "distillation_loss"]


@dataclass(frozen=True)
class DistillConfig:
    """Temperature, soft/hard mix, and the training loop's settings."""

    temperature: float = 4.0
    alpha: float = 0.7
    epochs: float = 1.0
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      labels: torch.Tensor | None, temperature: float,
                      alpha: float) -> torch.Tensor:
    """The mixed loss above; without labels only the soft term (alpha taken as 1)."""
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, dim=1),
                    F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)
    if labels is None:
        return soft
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, labels)


def distill(teacher: nn.Module, student: nn.Module, x: torch.Tensor,
            y: torch.Tensor | None = None, config: DistillConfig | None = None,
            progress: Callable[[int, int], None] | None = None) -> nn.Module:
    """Train ``student`` (in place, returned) on ``x`` to match ``teacher``.

    The teacher runs in eval mode under ``no_grad``; ``y`` (optional) adds the hard-label
    term. Steps = ``epochs * len(x) / batch_size``.
    """
    cfg = config or DistillConfig()
    gen = torch.Generator().manual_seed(cfg.seed)
    steps = max(1, int(cfg.epochs * len(x) / cfg.batch_size))
    opt = torch.optim.Adam(student.parameters(), lr=cfg.lr)
    teacher.eval()
    student.train()
    for step in range(steps):
        idx = torch.randint(0, len(x), (cfg.batch_size,), generator=gen)
        with torch.no_grad():
            t_logits = teacher(x[idx])
        loss = distillation_loss(student(x[idx]), t_logits, None if y is None else y[idx],
                                 cfg.temperature, cfg.alpha)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if progress:
            progress(step + 1, steps)
    return student.eval()
