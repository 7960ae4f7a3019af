"""What every compression report measures: serialized size, CPU latency, accuracy.

Sizes are the bytes of ``torch.save(state_dict)`` (the file a model ships as) or of the
ONNX file; latency is the median of single-sample (batch 1) forward passes on the CPU
after a warm-up, with whatever thread count the caller set (reports use 1 thread).

Example::

    size = serialized_bytes(model)
    ms = latency_ms(model, x[:1])
    acc = accuracy(model, x, y)
"""

from __future__ import annotations

import gzip
import io
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["Predictor", "accuracy", "agreement", "gzip_bytes", "latency_ms", "predict",
           "serialized_bytes", "sparsity"]

Predictor = Callable[[torch.Tensor], torch.Tensor]
"""Anything that maps a batch to logits: an nn.Module, a quantized GraphModule, ONNX."""


def serialized_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``.

    >>> serialized_bytes(nn.Linear(256, 256)) > 256 * 256 * 4
    True
    """
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def gzip_bytes(model: nn.Module) -> int:
    """Bytes of the serialized state dict after gzip (level 6): what unstructured sparsity
    saves in storage and transfer even though the dense file keeps every zero."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return len(gzip.compress(buf.getvalue(), compresslevel=6))


@torch.inference_mode()
def latency_ms(model: Predictor, example: torch.Tensor, runs: int = 50, warmup: int = 5) -> float:
    """Median wall time in ms of ``model(example)`` over ``runs`` calls after ``warmup``."""
    for _ in range(warmup):
        model(example)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        model(example)
        times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times)


@torch.inference_mode()
def predict(model: Predictor, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Logits of ``x`` in batches (concatenated)."""
    if isinstance(model, nn.Module):
        model.eval()
    return torch.cat([torch.as_tensor(model(x[i:i + batch_size]))
                      for i in range(0, len(x), batch_size)])


def accuracy(model: Predictor, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy in [0, 1]."""
    return float((predict(model, x, batch_size).argmax(1) == y).float().mean())


def agreement(reference: torch.Tensor, logits: torch.Tensor) -> float:
    """Share of samples whose top-1 class equals the reference logits' top-1."""
    return float((reference.argmax(1) == logits.argmax(1)).float().mean())


def sparsity(model: nn.Module) -> float:
    """Share of zero weights over the Conv and Linear weights (biases and BN excluded).

    >>> sparsity(nn.Linear(4, 4).requires_grad_(False).apply(lambda m: m.weight.zero_()))
    1.0
    """
    zeros = total = 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            w = m.weight.detach()
            zeros += int((w == 0).sum())
            total += w.numel()
    return zeros / total if total else 0.0
