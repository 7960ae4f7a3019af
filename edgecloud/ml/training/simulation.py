"""In-process federated simulation: server and clients in one process, real payload bytes.

Every byte counted is a real encoded payload (the broadcast each client fetched and the
update it returned), the same bytes the platform application moves through the file
service. Clients train in threads; a client can be made to fail or straggle in chosen
rounds to exercise the round loop. ``secure=True`` runs the secure-aggregation protocol
(:mod:`.secagg`) among the clients every round instead of sending plain updates.

Example::

    result = run_simulation(SimConfig(clients=3, alpha=0.5, rounds=5, compression="int8"))
    result.accuracy_per_round, result.total_bytes
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgecloud.ml.training.client import ClientUpdate, FLClient, get_weights
from edgecloud.ml.training.compression import Fp32, decode
from edgecloud.ml.training.data import dirichlet_split, iid_split, load_fashion_mnist
from edgecloud.ml.training.dp import DPConfig
from edgecloud.ml.training.models import FashionCNN, evaluate
from edgecloud.ml.training.secagg import SecAggClient, decode_fixed, encode_fixed, unmask_sum
from edgecloud.ml.training.server import FLServer, RoundPlan, RoundRecord
from edgecloud.ml.training.strategy import make_strategy

Arrays = list[np.ndarray]


@dataclass
class SimConfig:
    """One simulated federated job. ``alpha=None`` splits IID."""

    clients: int = 3
    alpha: float | None = 0.5
    rounds: int = 10
    strategy: str = "fedavg"
    strategy_kw: dict[str, Any] = field(default_factory=dict)
    compression: str = "fp32"
    ratio: float = 0.01
    down_ratio: float | None = None
    error_feedback: bool = True
    lr: float = 0.05
    local_steps: int | None = 50
    epochs: int = 1
    batch_size: int = 32
    min_clients: int | None = None
    round_timeout: float | None = None
    train_limit: int | None = None
    test_limit: int | None = 2000
    seed: int = 0
    secure: bool = False
    secagg_scale: float = 2.0 ** 12
    dp: DPConfig | None = None
    fail: dict[int, list[int]] = field(default_factory=dict)
    """round -> client indices that raise in that round."""
    straggle: dict[int, list[int]] = field(default_factory=dict)
    """round -> client indices that answer only after ``round_timeout`` in that round."""
    checkpoint: Path | None = None
    eval_every: int = 1
    """Evaluate the published model every this many rounds (and always after the last)."""


@dataclass
class SimResult:
    config: SimConfig
    history: list[RoundRecord]
    final_accuracy: float

    @property
    def accuracy_per_round(self) -> list[float]:
        """Accuracy after each round (NaN where the round was not evaluated)."""
        return [r.metrics.get("accuracy", float("nan")) for r in self.history]

    @property
    def total_bytes(self) -> int:
        return sum(r.bytes_up + r.bytes_down for r in self.history)


def build_clients(cfg: SimConfig) -> tuple[list[FLClient], tuple[torch.Tensor, torch.Tensor]]:
    """The clients on their shards (Dirichlet or IID) and the test tensors."""
    train, test = load_fashion_mnist()
    if cfg.train_limit is not None:
        train = train.subset(np.random.default_rng(cfg.seed).permutation(len(train))
                             [:cfg.train_limit])
    parts = (iid_split(len(train), cfg.clients, cfg.seed) if cfg.alpha is None else
             dirichlet_split(train.labels, cfg.clients, cfg.alpha, cfg.seed))
    clients = []
    for k, part in enumerate(parts):
        x, y = train.subset(part).tensors()
        torch.manual_seed(cfg.seed)
        clients.append(FLClient(FashionCNN(), x, y, compression=cfg.compression,
                                ratio=cfg.ratio, error_feedback=cfg.error_feedback,
                                dp_clip=cfg.dp.clip if cfg.dp else None, seed=cfg.seed + k))
    if cfg.test_limit is not None:
        test = test.subset(list(range(min(cfg.test_limit, len(test)))))
    return clients, test.tensors()


def sync(client: FLClient, plan: RoundPlan) -> int:
    """Bring ``client`` to the round's base model; the broadcast bytes it needed."""
    if plan.base_version == 0 and client.version == -1 and client.adopt_initial(
            hashlib.sha256(plan.full).hexdigest()):
        return 0  # built the same initial model itself (same seed): nothing to fetch
    if plan.delta is not None and client.version == plan.base_version - 1:
        client.apply_delta(plan.delta, plan.base_version)
        return len(plan.delta)
    client.load_full(plan.full, plan.base_version)
    return len(plan.full)


def make_evaluator(test: tuple[torch.Tensor, torch.Tensor]) -> Callable[[Arrays],
                                                                         dict[str, float]]:
    from edgecloud.ml.training.client import set_weights

    model = FashionCNN()

    def evaluate_weights(weights: Arrays) -> dict[str, float]:
        set_weights(model, weights)
        return evaluate(model, *test)
    return evaluate_weights


def run_simulation(cfg: SimConfig, progress: Callable[[RoundRecord], None] | None = None,
                   resume: bool = False) -> SimResult:
    """Run ``cfg.rounds`` rounds (after a checkpoint's, if ``resume``); the history."""
    clients, test = build_clients(cfg)
    names = [f"client-{k}" for k in range(len(clients))]
    by_name = dict(zip(names, clients, strict=True))
    evaluate_weights = make_evaluator(test)
    last = cfg.rounds  # moved past a checkpoint's rounds below when resuming

    def evaluate_some(weights: Arrays) -> dict[str, float]:
        # Called by the server at the end of each round (server.round is that round).
        if server.round % cfg.eval_every == 0 or server.round >= last:
            return evaluate_weights(weights)
        return {}
    torch.manual_seed(cfg.seed)
    kw = {"min_fit_clients": cfg.min_clients or 1,
          "config": {"lr": cfg.lr, "local_steps": cfg.local_steps, "epochs": cfg.epochs,
                     "batch_size": cfg.batch_size}, "seed": cfg.seed, **cfg.strategy_kw}
    server = FLServer(make_strategy(cfg.strategy, **kw), get_weights(FashionCNN()),
                      compression=cfg.compression, ratio=cfg.ratio,
                      down_ratio=cfg.down_ratio, min_clients=cfg.min_clients, dp=cfg.dp,
                      total_clients=cfg.clients, evaluate=evaluate_some,
                      checkpoint=cfg.checkpoint, seed=cfg.seed)
    if resume and cfg.checkpoint is not None and cfg.checkpoint.exists():
        server.load(cfg.checkpoint)

    def fit(name: str, plan: RoundPlan) -> ClientUpdate:
        k = names.index(name)
        if k in cfg.fail.get(plan.round, []):
            raise ConnectionError(f"{name} dropped out in round {plan.round}")
        client = by_name[name]
        server.sent(sync(client, plan))
        update = client.fit(plan.configs[name])
        if k in cfg.straggle.get(plan.round, []):
            time.sleep((cfg.round_timeout or 0) + 1.0)
        return update

    start = server.round
    last = start + cfg.rounds
    for _ in range(start, start + cfg.rounds):
        if cfg.secure:
            record = secure_round(server, names, by_name, cfg)
        else:
            record = server.run_round(names, fit, cfg.round_timeout)
        if progress is not None:
            progress(record)
    final = evaluate_weights(server.published)["accuracy"]
    return SimResult(cfg, server.history, final)


def secure_round(server: FLServer, names: list[str], clients: dict[str, FLClient],
                 cfg: SimConfig) -> RoundRecord:
    """One round whose updates are summed by secure aggregation (the server sees only
    the masked vectors and the sum). Clients in ``cfg.fail`` for the round drop *after*
    sending their masked input; the sum still comes out (they are survivors whose
    self-masks the others' shares remove)."""
    plan = server.begin_round(names)
    ids = {name: i + 1 for i, name in enumerate(plan.clients)}
    threshold = max(1, len(plan.clients) // 2 + 1)
    sa = {name: SecAggClient(ids[name], threshold) for name in plan.clients}
    keys = {sa[n].id: sa[n].advertise() for n in plan.clients}
    boxes = {sa[n].id: sa[n].share(keys) for n in plan.clients}
    for n in plan.clients:
        me = sa[n].id
        sa[n].receive_shares({u: b[me] for u, b in boxes.items() if me in b})
    masked: dict[int, np.ndarray] = {}
    shapes: list[tuple[int, ...]] = []
    for n in plan.clients:
        server.sent(sync(clients[n], plan))
        delta, examples, _ = clients[n].train(plan.configs[n])
        shapes = [d.shape for d in delta]
        # Weighted by examples (in thousands, to keep the fixed-point sum in range); the
        # weight itself rides as the last element so the server learns only its sum.
        w = examples / 1000.0
        flat = np.concatenate([d.ravel() * w for d in delta] + [np.array([w])])
        masked[sa[n].id] = sa[n].masked_input(encode_fixed(flat, cfg.secagg_scale))
        server.accept(n, ClientUpdate(masked[sa[n].id].astype("<u4").tobytes(), examples))
    leaving = {plan.clients[k] for k in cfg.fail.get(plan.round, []) if k < len(plan.clients)}
    reveals = {sa[n].id: sa[n].unmask(set(masked), set(keys) - set(masked))
               for n in plan.clients if n not in leaving}
    length = sum(int(np.prod(s)) for s in shapes) + 1
    total = decode_fixed(unmask_sum(masked, reveals, keys, threshold, length),
                         cfg.secagg_scale)
    out, start = [], 0
    for s in shapes:
        size = int(np.prod(s))
        out.append(total[start:start + size].reshape(s))
        start += size
    return server.end_round_with_sum(out, float(total[-1]), list(plan.clients))


def payload_sizes(weights: Arrays) -> dict[str, int]:
    """Bytes of one full update in each format (for reports)."""
    from edgecloud.ml.training.compression import Int8, TopK

    return {"fp32": len(Fp32().encode(weights)), "int8": len(Int8().encode(weights)),
            "topk1%": len(TopK(0.01).encode(weights))}


__all__ = ["SimConfig", "SimResult", "run_simulation", "secure_round", "sync", "decode"]
