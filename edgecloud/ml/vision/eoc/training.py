"""Training the EOC on COC-labelled crops: the trunk's logistic head or EdgeNet from scratch,
with a held-out comparison against COC (TrainReport)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from edgecloud.ml.vision.eoc.classifier import EdgeClassifier
from edgecloud.ml.vision.eoc.nets import EdgeNet, TrunkNet
from edgecloud.ml.vision.eoc.preprocess import _MEAN, _STD, Progress, _resize_batch


@dataclass
class TrainReport:
    """Edge classifier vs COC labels on the held-out split (threshold 0.5)."""

    query: str
    n_train: int
    n_val: int
    pos_train: int
    pos_val: int
    epochs: int
    seconds: float
    accuracy: float
    precision: float
    recall: float
    f1: float
    losses: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return asdict(self)


def _stratified_split(labels: np.ndarray, val_frac: float,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    train, val = [], []
    for cls in (0, 1):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_val = int(round(len(idx) * val_frac)) if len(idx) > 1 else 0
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.concatenate(train), np.concatenate(val)


def _augment(batch: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """Random crop ``size`` from a larger uint8 NHWC batch, random horizontal flip,
    random brightness/contrast; returns a normalised NCHW float batch."""
    n, h, w, _ = batch.shape
    ys = torch.randint(0, h - size + 1, (n,), generator=gen)
    xs = torch.randint(0, w - size + 1, (n,), generator=gen)
    out = torch.stack([batch[i, y : y + size, x : x + size] for i, (y, x) in
                       enumerate(zip(ys.tolist(), xs.tolist(), strict=True))])
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(2)
    x = out.permute(0, 3, 1, 2).float()
    gain = 1.0 + 0.2 * (torch.rand(n, 1, 1, 1, generator=gen) - 0.5)
    bias = 20.0 * (torch.rand(n, 1, 1, 1, generator=gen) - 0.5)
    x = (x * gain + bias).clamp(0, 255)
    return (x - _MEAN) / _STD


def _metrics(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float, float, float]:
    tp = int(((pred == 1) & (truth == 1)).sum())
    fp = int(((pred == 1) & (truth == 0)).sum())
    fn = int(((pred == 0) & (truth == 1)).sum())
    acc = float((pred == truth).mean()) if len(truth) else math.nan
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return acc, prec, rec, f1


def _fit_mobilenet(train_x: torch.Tensor, train_y: torch.Tensor, input_size: int, epochs: int,
                   batch_size: int, lr: float, width: float, gen: torch.Generator,
                   progress: Progress | None) -> tuple[EdgeNet, list[float]]:
    """Train :class:`EdgeNet` from scratch: class-balanced BCE, AdamW, one-cycle schedule."""
    pos = float(train_y.sum())
    neg = float(len(train_y) - pos)
    pos_weight = torch.tensor(neg / pos if pos and neg else 1.0)
    net = EdgeNet(width=width)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = max(1, math.ceil(len(train_y) / batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs *
                                                steps_per_epoch)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    losses: list[float] = []
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(train_y), generator=gen)
        total = 0.0
        for b in range(steps_per_epoch):
            sel = order[b * batch_size : (b + 1) * batch_size]
            if len(sel) < 2:  # BatchNorm needs more than one sample
                continue
            x = _augment(train_x[sel], input_size, gen)
            loss = loss_fn(net(x), train_y[sel])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(sel)
        losses.append(total / max(1, len(train_y)))
        if progress:
            progress("train", epoch + 1, epochs)
    return net, losses


@torch.inference_mode()
def _trunk_features(net: TrunkNet, images: torch.Tensor, batch_size: int,
                    progress: Progress | None, done: int, total: int) -> torch.Tensor:
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].permute(0, 3, 1, 2).float()
        out.append(net.features((x - _MEAN) / _STD))
        if progress:
            progress("features", done + min(i + batch_size, len(images)), total)
    return torch.cat(out)


def _fit_trunk(train_x: torch.Tensor, train_y: torch.Tensor, blocks: int, l2: float,
               batch_size: int, progress: Progress | None) -> tuple[TrunkNet, list[float]]:
    """Fit the logistic head of a pretrained :class:`TrunkNet` on the crops and their mirror
    images (the trunk stays frozen: a few hundred crops are too few to fine-tune it)."""
    net = TrunkNet.pretrained(blocks).eval()
    images = torch.cat([train_x, train_x.flip(2)])  # NHWC: dim 2 is width
    targets = torch.cat([train_y, train_y])
    feats = _trunk_features(net, images, batch_size, progress, 0, len(images))
    mu, sd = feats.mean(0), feats.std(0) + 1e-6
    z = (feats - mu) / sd
    w = torch.zeros(z.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")
    losses: list[float] = []

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(z @ w + b, targets)
        loss = loss + l2 * (w * w).sum()
        loss.backward()
        losses.append(float(loss.detach()))
        return loss

    opt.step(closure)
    with torch.no_grad():
        net.mu.copy_(mu)
        net.sd.copy_(sd)
        net.head.weight.copy_(w.detach().unsqueeze(0))
        net.head.bias.copy_(b.detach())
    if progress:
        progress("train", 1, 1)
    return net, losses[-1:]


def train_edge_classifier(
    crops: Sequence[np.ndarray],
    labels: Sequence[int] | np.ndarray,
    epochs: int = 12,
    progress: Progress | None = None,
    seed: int = 0,
    query: str = "car",
    input_size: int | None = None,
    val_frac: float = 0.2,
    batch_size: int = 64,
    lr: float = 3e-3,
    width: float = 0.35,
    arch: str = "lite0-trunk",
    blocks: int = 12,
    l2: float = 0.01,
) -> tuple[EdgeClassifier, TrainReport]:
    """Train an :class:`EdgeClassifier` on COC-labelled crops.

    ``arch="lite0-trunk"`` (default): a frozen ImageNet trunk (:class:`TrunkNet`, ``blocks``
    blocks, 128x128 inputs) and a logistic head fitted by L-BFGS with L2 penalty ``l2`` on
    the crops and their mirror images; ``epochs``, ``lr`` and ``width`` do not apply.
    ``arch="mobilenetv2"``: :class:`EdgeNet` from scratch for ``epochs`` (96x96), the
    positive BCE term weighted by ``negatives / positives``, random crops of
    ``input_size`` from crops resized to ``input_size * 1.125``, flips, brightness/contrast
    jitter. Either way ``val_frac`` of each class is held out and the report compares the
    model (threshold 0.5) with COC's labels there. Deterministic for a given ``seed`` (on
    one thread).
    """
    if arch not in ("lite0-trunk", "mobilenetv2"):
        raise ValueError(f"arch must be 'lite0-trunk' or 'mobilenetv2', not {arch!r}")
    y = np.asarray(labels, dtype=np.int64)
    if len(crops) != len(y):
        raise ValueError(f"{len(crops)} crops but {len(y)} labels")
    if len(y) < 2:
        raise ValueError("need at least two crops to train")
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    train_idx, val_idx = _stratified_split(y, val_frac, rng)
    train_y = torch.from_numpy(y[train_idx]).float()
    net: EdgeNet | TrunkNet
    if arch == "lite0-trunk":
        input_size = input_size or 128
        train_x = torch.from_numpy(_resize_batch([crops[i] for i in train_idx], input_size))
        net, losses = _fit_trunk(train_x, train_y, blocks, l2, batch_size, progress)
        epochs = 1
    else:
        input_size = input_size or 96
        big = int(round(input_size * 1.125))
        train_x = torch.from_numpy(_resize_batch([crops[i] for i in train_idx], big))
        net, losses = _fit_mobilenet(train_x, train_y, input_size, epochs, batch_size, lr,
                                     width, gen, progress)

    clf = EdgeClassifier(net, query, input_size)
    val_y = y[val_idx]
    if len(val_idx):
        pred = (clf.confidence([crops[i] for i in val_idx]) > 0.5).astype(np.int64)
        acc, prec, rec, f1 = _metrics(pred, val_y)
    else:
        acc = prec = rec = f1 = math.nan
    report = TrainReport(
        query=query, n_train=len(train_idx), n_val=len(val_idx),
        pos_train=int(train_y.sum()), pos_val=int(val_y.sum()), epochs=epochs,
        seconds=time.perf_counter() - t0, accuracy=acc, precision=prec, recall=rec, f1=f1,
        losses=losses,
    )
    clf.metadata["training"] = {k: v for k, v in report.as_dict().items() if k != "losses"}
    clf.metadata["training"]["arch"] = arch
    return clf, report
