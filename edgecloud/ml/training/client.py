"""The federated client: keeps the published global model, trains on its own data, sends a
compressed update.

The client holds the model version the server last published. A round's broadcast is
either the *delta* from the previous version (compressed like the updates: what the
WAN carries every round) or the full fp32 model (for a client that missed a round or
just joined). After local training it returns ``local - global`` — clipped for DP if
asked — compressed with error feedback: the residual stays here, on the client.

Example::

    client = FLClient(FashionCNN(), x, y, compression="topk", ratio=0.01)
    client.load_full(plan.full, plan.base_version)
    reply = client.fit({"lr": 0.05, "local_steps": 50, "round": 1})
    reply.payload          # bytes for the file service; reply.num_examples, reply.metrics
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from edgecloud.ml.training.compression import ErrorFeedback, Fp32, decode, make_compressor
from edgecloud.ml.training.dp import clip_update
from edgecloud.ml.training.models import train_epoch

Arrays = list[np.ndarray]


def get_weights(model: nn.Module) -> Arrays:
    """The model's state as float32 numpy arrays, in ``state_dict`` order."""
    return [t.detach().cpu().numpy().astype(np.float32, copy=True)
            for t in model.state_dict().values()]


def set_weights(model: nn.Module, arrays: Arrays) -> None:
    """Load arrays produced by :func:`get_weights` (same architecture) into ``model``."""
    keys = list(model.state_dict())
    if len(keys) != len(arrays):
        raise ValueError(f"model has {len(keys)} tensors, got {len(arrays)} arrays")
    model.load_state_dict({k: torch.from_numpy(np.asarray(a, np.float32).copy())
                           for k, a in zip(keys, arrays, strict=True)})


@dataclass
class ClientUpdate:
    """A client's answer to a round: the encoded update and what it trained on."""

    payload: bytes
    num_examples: int
    metrics: dict[str, Any] = field(default_factory=dict)


class FLClient:
    """One federated participant training ``model`` on ``(x, y)``, which never leave it."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                 compression: str = "fp32", ratio: float = 0.01, error_feedback: bool = True,
                 dp_clip: float | None = None, seed: int = 0) -> None:
        self.model = model
        self.x, self.y = x, y
        self.ef = ErrorFeedback(make_compressor(compression, ratio), enabled=error_feedback)
        self.dp_clip = dp_clip
        self.seed = seed
        self.weights: Arrays | None = None
        self.version = -1

    def adopt_initial(self, full_sha256: str) -> bool:
        """Take this client's own freshly built model as version 0 if it is the one the
        server published (same seed, same architecture: its fp32 encoding has the same
        sha256) — the initial model then never crosses the WAN. False if it differs."""
        import hashlib

        mine = get_weights(self.model)
        if hashlib.sha256(Fp32().encode(mine)).hexdigest() != full_sha256:
            return False
        self.weights, self.version = mine, 0
        return True

    def load_full(self, payload: bytes, version: int) -> None:
        """Adopt a full published model (fp32 payload) as version ``version``."""
        self.weights = decode(payload)
        self.version = version

    def apply_delta(self, payload: bytes, version: int) -> None:
        """Move from ``version - 1`` to ``version`` by a broadcast delta."""
        if self.weights is None or self.version != version - 1:
            raise ValueError(f"client holds version {self.version}; a delta to {version} "
                             "needs the full model")
        self.weights = [w + d for w, d in zip(self.weights, decode(payload), strict=True)]
        self.version = version

    def train(self, config: dict[str, Any]) -> tuple[Arrays, int, dict[str, Any]]:
        """Train from the held global model; ``(delta, examples, metrics)``, uncompressed.

        Config keys: ``lr`` (0.05), ``batch_size`` (32), ``epochs`` (1), ``local_steps``
        (cap on optimiser steps), ``mu`` (FedProx proximal weight, 0), ``round``.
        """
        if self.weights is None:
            raise ValueError("no global model yet: load_full() first")
        set_weights(self.model, self.weights)
        mu = float(config.get("mu", 0.0))
        penalty = None
        if mu > 0:
            anchor = [p.detach().clone() for p in self.model.parameters()]

            def penalty(m: nn.Module) -> torch.Tensor:
                # a sum of (at least one) tensors is a tensor; the stub says int | Tensor
                return cast(torch.Tensor, 0.5 * mu * sum(
                    ((p - a) ** 2).sum() for p, a in zip(m.parameters(), anchor, strict=True)))
        t0 = time.perf_counter()
        steps = config.get("local_steps")
        stats = train_epoch(self.model, self.x, self.y, lr=float(config.get("lr", 0.05)),
                            batch_size=int(config.get("batch_size", 32)),
                            epochs=int(config.get("epochs", 1)),
                            max_steps=int(steps) if steps is not None else None,
                            seed=self.seed * 7919 + int(config.get("round", 0)),
                            penalty=penalty)
        delta = [w - g for w, g in zip(get_weights(self.model), self.weights, strict=True)]
        metrics: dict[str, Any] = {"train_loss": stats["loss"], "steps": stats["steps"],
                                   "samples": stats["samples"],
                                   "train_s": time.perf_counter() - t0}
        if self.dp_clip is not None:
            delta, norm = clip_update(delta, self.dp_clip)
            metrics["update_norm"] = norm
        # FedAvg weighs a client by the size of its data set (McMahan et al.), not by the
        # samples of this round's steps.
        return delta, len(self.x), metrics

    def fit(self, config: dict[str, Any]) -> ClientUpdate:
        """Train and encode the update with this client's compressor and error feedback."""
        delta, n, metrics = self.train(config)
        payload = self.ef.compress(delta)
        metrics["bytes_up"] = len(payload)
        return ClientUpdate(payload, n, metrics)
