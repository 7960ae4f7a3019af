"""Early exit (BranchyNet): a side exit on the edge, the rest of the network in the cloud.

`EarlyExitCNN` is a small Fashion-MNIST CNN with one side branch after its first block.
Both exits are trained together (joint loss: weighted sum of their cross-entropies). At
inference the edge runs the first block and the branch; a sample whose branch prediction
has softmax entropy below `threshold` exits there, the others send the first block's
output (the crossing tensor, as in partitioning) to the cloud, which runs the rest.

    model = EarlyExitCNN()
    train_early_exit(model, train_set, epochs=2)
    rows = tradeoff(model, test_set, thresholds=[0.05, 0.3, 1.0], rate_bps=10e6, base_s=0.03)
    # exit rate, accuracy and expected latency per threshold

`EarlyExitCNN.trunk` (the same network without the branch) is also a plain model for
`Partition`: its first cut after `block1` is where the branch sits.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from edgecloud.ml.inference.partition import tensor_bytes
from edgecloud.ml.training.data import ImageSet

__all__ = ["EarlyExitCNN", "ExitResult", "TradeoffRow", "entropy", "exit_decisions",
           "train_early_exit", "tradeoff"]


class _Trunk(nn.Module):
    """The main path: block1 (edge side of the branch) then block2 and the classifier."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(),
                                  nn.Linear(128, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block2(self.block1(x)))


class EarlyExitCNN(nn.Module):
    """Fashion-MNIST CNN (1x28x28) with a side exit after block1. `forward` -> [side, main].

    Example:
        side, main = EarlyExitCNN()(torch.zeros(4, 1, 28, 28))   # logits (4, 10) each
    """

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.trunk = _Trunk(classes)
        # Cheap on purpose: the branch runs on the (slow) edge for every sample.
        self.branch = nn.Sequential(nn.Conv2d(16, 8, 3, stride=2, padding=1), nn.ReLU(),
                                    nn.Flatten(), nn.Linear(8 * 7 * 7, classes))

    def edge(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(side logits, crossing tensor) — what the edge computes for every sample."""
        h = self.trunk.block1(x)
        return self.branch(h), h

    def cloud(self, h: torch.Tensor) -> torch.Tensor:
        """Main logits from the crossing tensor — what the cloud computes."""
        return self.trunk.head(self.trunk.block2(h))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        side, h = self.edge(x)
        return [side, self.cloud(h)]

    def to_bytes(self) -> bytes:
        """The weights (a torch state dict) to ship through the file service."""
        buf = io.BytesIO()
        torch.save(self.state_dict(), buf)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> EarlyExitCNN:
        """Inverse of `to_bytes` (weights only: no pickled code is executed)."""
        model = cls()
        model.load_state_dict(torch.load(io.BytesIO(data), map_location="cpu",
                                         weights_only=True))
        return model.eval()


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Softmax entropy per row, in nats (0 = certain, ln(classes) = uniform)."""
    logp = torch.log_softmax(logits, dim=1)
    return -(logp.exp() * logp).sum(dim=1)


@dataclass
class ExitResult:
    exited: torch.Tensor
    """Bool per sample: decided by the side exit on the edge."""
    pred: torch.Tensor
    """Predicted class per sample (side exit where exited, main exit elsewhere)."""


def exit_decisions(model: EarlyExitCNN, x: torch.Tensor, threshold: float,
                   cloud: Callable[[torch.Tensor], torch.Tensor] | None = None) -> ExitResult:
    """Exit at the edge where the side exit's entropy < `threshold`; the rest goes on.

    `cloud` runs the remaining samples' crossing tensors (default: `model.cloud` here);
    pass a function that sends them through the platform to run the tail remotely.
    """
    model.eval()
    with torch.no_grad():
        side, h = model.edge(x)
        exited = entropy(side) < threshold
        pred = side.argmax(dim=1)
        rest = ~exited
        if rest.any():
            pred[rest] = (cloud or model.cloud)(h[rest]).argmax(dim=1)
    return ExitResult(exited, pred)


def train_early_exit(model: EarlyExitCNN, data: ImageSet, *, epochs: int = 2,
                     weights: Sequence[float] = (0.5, 1.0), lr: float = 2e-3,
                     batch: int = 128, seed: int = 0,
                     progress: Callable[[int, int], None] | None = None) -> list[float]:
    """Joint training (BranchyNet): loss = sum_i weights[i] * CE(exit_i). Returns epoch losses."""
    torch.manual_seed(seed)
    x, y = data.tensors()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    steps = math.ceil(len(y) / batch)
    losses = []
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(y))
        total = 0.0
        for s in range(steps):
            idx = order[s * batch:(s + 1) * batch]
            outs = model(x[idx])
            loss = sum(w * loss_fn(o, y[idx]) for w, o in zip(weights, outs, strict=True))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach())
            if progress:
                progress(epoch * steps + s + 1, epochs * steps)
        losses.append(total / steps)
    model.eval()
    return losses


@dataclass
class TradeoffRow:
    threshold: float
    exit_rate: float
    accuracy: float
    latency_s: float
    """Expected end-to-end latency per sample for the given link and measured stage times."""

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _time_per_sample(fn: Callable[[torch.Tensor], object], x: torch.Tensor,
                     repeats: int = 20) -> float:
    with torch.no_grad():
        fn(x)
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn(x)
    return (time.perf_counter() - t0) / repeats


def tradeoff(model: EarlyExitCNN, data: ImageSet, thresholds: Sequence[float], *,
             rate_bps: float, base_s: float, int8: bool = False,
             edge_slowdown: float = 1.0) -> list[TradeoffRow]:
    """Exit rate, accuracy and expected latency for each entropy threshold.

    Stage times are measured here on one sample (the edge's times multiplied by
    `edge_slowdown`, the emulated speed factor 1/speed); a sample that does not exit
    pays base_s + 8 * bytes / rate + cloud time on top of the edge time.
    """
    x, y = data.tensors()
    one = x[:1]
    edge_s = _time_per_sample(model.edge, one) * edge_slowdown
    h = model.edge(one)[1].detach()
    cloud_s = _time_per_sample(model.cloud, h)
    send_s = base_s + 8 * tensor_bytes(h.numel(), int8) / rate_bps
    rows = []
    for t in thresholds:
        r = exit_decisions(model, x, t)
        exit_rate = float(r.exited.float().mean())
        acc = float((r.pred == y).float().mean())
        rows.append(TradeoffRow(t, exit_rate, acc, edge_s + (1 - exit_rate) * (send_s + cloud_s)))
    return rows
