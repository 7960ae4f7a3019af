"""The federated server: the round loop around a :class:`~.strategy.Strategy`.

A round is ``begin_round`` (select clients, their configs, the broadcast), any number of
``accept`` calls (updates as they arrive), and ``end_round`` (aggregate the answers
received, publish, checkpoint). Transports drive it: :meth:`FLServer.run_round` with
callables and a per-round timeout (the in-process simulation), or the aggregator
component of ``examples/federated`` with messages and the file service.

Reality it tolerates:

- ``min_clients``: fewer available clients than that and the round does not start
  (:class:`NotEnoughClients`); fewer *answers* and the round is recorded as failed and
  the model does not move;
- per-round ``timeout``: stragglers and clients that fail are left out, the round
  completes with those that answered; nothing waits on a failed client;
- checkpoint after every round (``checkpoint``); :meth:`FLServer.load` resumes.

What is published: the server keeps its exact model ``x`` and the model ``p`` the
clients hold. Each round it broadcasts ``C(x - p)`` with the job's compressor and sets
``p += decode(...)`` — the difference not yet sent stays in ``x - p`` (error feedback on
the downlink, as in double-compression schemes), so both directions shrink. A client
that missed a version fetches ``p`` in full (fp32).

Example::

    server = FLServer(FedAvg(min_fit_clients=2), get_weights(model), compression="int8")
    record = server.run_round(["a", "b", "c"], fit, timeout=60)   # fit(client, plan)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecloud.ml.training.client import ClientUpdate
from edgecloud.ml.training.compression import Fp32, decode, make_compressor
from edgecloud.ml.training.dp import DPConfig, RDPAccountant, add_gaussian_noise
from edgecloud.ml.training.strategy import FitResult, Strategy

Arrays = list[np.ndarray]


class NotEnoughClients(RuntimeError):
    """Fewer clients available than the job's minimum."""


@dataclass
class RoundPlan:
    """What a round sends: to whom, with which config, and the model to start from.

    A client at version ``base_version - 1`` applies ``delta``; any other fetches ``full``.
    """

    round: int
    clients: list[str]
    configs: dict[str, dict[str, Any]]
    base_version: int
    delta: bytes | None
    full: bytes


@dataclass
class RoundRecord:
    """What happened in one round (one row of the history)."""

    round: int
    selected: list[str]
    answered: list[str]
    dropped: list[str]
    ok: bool
    bytes_up: int = 0
    bytes_down: int = 0
    duration_s: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)


class FLServer:
    """Holds the global model and runs rounds of ``strategy``."""

    def __init__(self, strategy: Strategy, initial: Arrays, *, compression: str = "fp32",
                 ratio: float = 0.01, down_ratio: float | None = None,
                 min_clients: int | None = None, dp: DPConfig | None = None,
                 total_clients: int | None = None,
                 evaluate: Callable[[Arrays], dict[str, float]] | None = None,
                 checkpoint: Path | None = None, seed: int = 0) -> None:
        self.strategy = strategy
        self.compression = compression
        self.down = make_compressor(compression, down_ratio or ratio)
        self.min_clients = min_clients or strategy.min_fit_clients
        self.dp = dp
        self.total_clients = total_clients
        self.evaluate = evaluate
        self.checkpoint = checkpoint
        self.rng = np.random.default_rng(seed)
        self.weights = [np.asarray(a, np.float32).copy() for a in initial]
        self.published = [a.copy() for a in self.weights]
        self.version = 0
        self.round = 0
        self.delta: bytes | None = None
        self.history: list[RoundRecord] = []
        self.accountant: RDPAccountant | None = None
        self._plan: RoundPlan | None = None
        self._results: dict[str, ClientUpdate] = {}
        self._bytes_down = 0
        self._t0 = 0.0

    # -- the round, step by step ------------------------------------------------------------
    def begin_round(self, available: list[str]) -> RoundPlan:
        """Select clients and build the broadcast of round ``self.round + 1``."""
        if len(available) < self.min_clients:
            raise NotEnoughClients(f"{len(available)} clients available, the job needs "
                                   f"{self.min_clients}")
        rnd = self.round + 1
        clients = self.strategy.select_clients(rnd, list(available))
        self._plan = RoundPlan(rnd, clients, self.strategy.configure_fit(rnd, clients),
                               self.version, self.delta, Fp32().encode(self.published))
        self._results, self._bytes_down, self._t0 = {}, 0, time.monotonic()
        return self._plan

    def sent(self, nbytes: int) -> None:
        """Account ``nbytes`` of broadcast actually sent to a client this round."""
        self._bytes_down += nbytes

    def accept(self, client: str, update: ClientUpdate) -> bool:
        """Take a client's update for the current round; False if it was not selected."""
        if self._plan is None or client not in self._plan.clients:
            return False
        self._results[client] = update
        return True

    def end_round(self) -> RoundRecord:
        """Aggregate what arrived, publish the new model, checkpoint; the round's record."""
        plan = self._plan
        if plan is None:
            raise RuntimeError("end_round() without begin_round()")
        answered = sorted(self._results)
        record = RoundRecord(plan.round, plan.clients, answered,
                             sorted(set(plan.clients) - set(answered)),
                             ok=len(answered) >= self.min_clients,
                             bytes_up=sum(len(u.payload) for u in self._results.values()),
                             bytes_down=self._bytes_down)
        if record.ok:
            results = [FitResult(c, decode(u.payload), u.num_examples, u.metrics)
                       for c, u in sorted(self._results.items())]
            self._aggregate(plan.round, results)
            record.metrics["train_loss"] = float(np.mean(
                [r.metrics.get("train_loss", np.nan) for r in results]))
        self._finish(plan.round, record)
        return record

    def end_round_with_sum(self, total: Arrays, total_examples: float,
                           answered: list[str]) -> RoundRecord:
        """End a round whose updates were securely aggregated: only their weighted sum
        ``sum n_k * delta_k`` and ``sum n_k`` are known (see :mod:`.secagg`)."""
        plan = self._plan
        if plan is None:
            raise RuntimeError("end_round_with_sum() without begin_round()")
        record = RoundRecord(plan.round, plan.clients, sorted(answered),
                             sorted(set(plan.clients) - set(answered)),
                             ok=len(answered) >= self.min_clients,
                             bytes_up=sum(len(u.payload) for u in self._results.values()),
                             bytes_down=self._bytes_down)
        if record.ok:
            mean = [(t / total_examples).astype(np.float32) for t in total]
            self.weights = self.strategy.apply(plan.round, self.weights, mean)
            self._publish(plan.round)
        self._finish(plan.round, record)
        return record

    def _aggregate(self, rnd: int, results: list[FitResult]) -> None:
        if self.dp is None:
            self.weights = self.strategy.aggregate_fit(rnd, self.weights, results)
        else:
            # DP-FedAvg: clipped updates (clipped by the clients) summed, Gaussian noise of
            # std sigma * clip on the sum, divided by the number of clients (unweighted:
            # weighting by data size would break the sensitivity bound).
            total = [np.sum([r.update[i] for r in results], axis=0)
                     for i in range(len(results[0].update))]
            noisy = add_gaussian_noise(total, self.dp.noise_multiplier * self.dp.clip,
                                       self.rng)
            self.weights = self.strategy.apply(rnd, self.weights,
                                               [n / len(results) for n in noisy])
            if self.accountant is None:
                # Sampling rate: clients selected per round out of all clients.
                selected = len(self._plan.clients) if self._plan else len(results)
                q = selected / (self.total_clients or selected)
                self.accountant = RDPAccountant(self.dp.noise_multiplier, min(1.0, q))
            self.accountant.step()
        self._publish(rnd)

    def _publish(self, rnd: int) -> None:
        self.delta = self.down.encode([w - p for w, p in zip(self.weights, self.published,
                                                             strict=True)])
        self.published = [p + d for p, d in zip(self.published, decode(self.delta),
                                                 strict=True)]
        self.version = rnd

    def _finish(self, rnd: int, record: RoundRecord) -> None:
        self.round = rnd
        self._plan = None
        record.duration_s = time.monotonic() - self._t0
        if self.evaluate is not None and record.ok:
            record.metrics.update(self.evaluate(self.published))
        if self.accountant is not None and self.dp is not None:
            record.metrics["epsilon"] = self.accountant.epsilon(self.dp.delta)
        self.history.append(record)
        if self.checkpoint is not None:
            self.save(self.checkpoint)

    # -- a whole round with callables (simulation, tests) -------------------------------------
    def run_round(self, available: list[str],
                  fit: Callable[[str, RoundPlan], ClientUpdate],
                  timeout: float | None = None) -> RoundRecord:
        """One round calling ``fit(client, plan)`` for every selected client in parallel.

        Clients that raise or have not answered after ``timeout`` seconds are dropped;
        their threads are abandoned, never waited for.
        """
        plan = self.begin_round(available)
        pool = ThreadPoolExecutor(max_workers=max(1, len(plan.clients)),
                                  thread_name_prefix="fl-client")
        futures = {pool.submit(fit, c, plan): c for c in plan.clients}
        deadline = None if timeout is None else time.monotonic() + timeout
        pending = set(futures)
        while pending:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, pending = wait(pending, timeout=left, return_when=FIRST_EXCEPTION)
            for f in done:
                if f.exception() is None:
                    self.accept(futures[f], f.result())
            if deadline is not None and time.monotonic() >= deadline:
                break
        pool.shutdown(wait=False, cancel_futures=True)
        return self.end_round()

    # -- checkpoints ----------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Write the server's whole state to ``path`` (.npz, atomically)."""
        arrays: dict[str, np.ndarray] = {}
        for name, group in (("w", self.weights), ("p", self.published)):
            for i, a in enumerate(group):
                arrays[f"{name}{i}"] = a
        strat_meta = {}
        for key, value in self.strategy.state_dict().items():
            strat_meta[key] = None if value is None else len(value)
            for i, a in enumerate(value or []):
                arrays[f"s.{key}.{i}"] = np.asarray(a)
        meta = {"round": self.round, "version": self.version, "n": len(self.weights),
                "strategy": strat_meta, "history": [asdict(r) for r in self.history],
                "dp_steps": self.accountant.steps if self.accountant else None,
                "dp_rate": self.accountant.sample_rate if self.accountant else None}
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
        arrays["delta"] = np.frombuffer(self.delta or b"", np.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            # numpy's stub types **kwds as if a key could be its `allow_pickle` flag
            np.savez(fh, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, path)  # a crash mid-write leaves the previous checkpoint intact

    def load(self, path: Path) -> None:
        """Resume from a checkpoint written by :meth:`save` (same strategy class)."""
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            n = meta["n"]
            self.weights = [z[f"w{i}"].copy() for i in range(n)]
            self.published = [z[f"p{i}"].copy() for i in range(n)]
            self.strategy.load_state_dict({
                key: None if count is None else [z[f"s.{key}.{i}"].copy()
                                                 for i in range(count)]
                for key, count in meta["strategy"].items()})
            self.delta = bytes(z["delta"]) or None
        self.round, self.version = meta["round"], meta["version"]
        self.history = [RoundRecord(**r) for r in meta["history"]]
        if meta["dp_steps"] is not None and self.dp is not None:
            self.accountant = RDPAccountant(self.dp.noise_multiplier, meta["dp_rate"])
            self.accountant.steps = meta["dp_steps"]
