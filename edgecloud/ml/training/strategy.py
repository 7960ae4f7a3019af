"""Federated strategies in the spirit of Flower's: who trains, with what config, how to merge.

A :class:`Strategy` owns four small decisions of a round; the server
(:mod:`edgecloud.ml.training.server`) owns the loop, the transport and the failures:

- :meth:`Strategy.select_clients` — which of the available clients train this round;
- :meth:`Strategy.configure_fit` — the config each selected client gets (lr, steps, mu...);
- :meth:`Strategy.aggregate_fit` — merge the clients' updates (weighted mean of deltas);
- :meth:`Strategy.apply` — move the global weights by the merged update (FedAvg adds it,
  FedAdam takes an Adam step on it).

Updates are *deltas* ``local weights - global weights``, lists of numpy arrays.
Secure aggregation only reveals a sum, so the server may call :meth:`apply` directly
with ``sum / total``.

A strategy of your own in a few lines::

    class FedAvgM(FedAvg):
        def __init__(self, momentum=0.9, **kw):
            super().__init__(**kw)
            self.momentum, self.velocity = momentum, None

        def apply(self, rnd, weights, update):
            self.velocity = update if self.velocity is None else [
                self.momentum * v + u for v, u in zip(self.velocity, update)]
            return [w + v for w, v in zip(weights, self.velocity)]
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Arrays = list[np.ndarray]


@dataclass
class FitResult:
    """What one client returned for a round: its update (delta) and how many examples."""

    client: str
    update: Arrays
    num_examples: int
    metrics: dict[str, Any] = field(default_factory=dict)


def weighted_mean(updates: list[Arrays], weights: list[float]) -> Arrays:
    """Per-tensor mean of ``updates`` weighted by ``weights``.

    Example: ``weighted_mean([[np.array([1.])], [np.array([4.])]], [1, 2])`` → ``[[3.]]``.
    """
    if not updates:
        raise ValueError("no updates to average")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("weights must sum to a positive number")
    out = [np.zeros_like(a, dtype=np.float64) for a in updates[0]]
    for upd, w in zip(updates, weights, strict=True):
        for acc, a in zip(out, upd, strict=True):
            acc += (w / total) * a
    return [a.astype(np.float32) for a in out]


class Strategy:
    """Base class: select everyone (or a fraction), same config for all, weighted mean.

    ``min_fit_clients``: a round needs that many answers to change the model;
    ``fraction_fit``: share of available clients selected per round (at least
    ``min_fit_clients``); ``config``: sent to every client (e.g. ``lr``, ``local_steps``).
    """

    name = "strategy"

    def __init__(self, *, min_fit_clients: int = 1, fraction_fit: float = 1.0,
                 config: dict[str, Any] | None = None, seed: int = 0) -> None:
        if min_fit_clients < 1:
            raise ValueError("min_fit_clients must be >= 1")
        if not 0 < fraction_fit <= 1:
            raise ValueError("fraction_fit must be in (0, 1]")
        self.min_fit_clients = min_fit_clients
        self.fraction_fit = fraction_fit
        self.config = dict(config or {})
        self.seed = seed

    def select_clients(self, rnd: int, available: list[str]) -> list[str]:
        """A seeded sample of ``fraction_fit`` of ``available`` (all by default)."""
        n = max(self.min_fit_clients, round(self.fraction_fit * len(available)))
        if n >= len(available):
            return sorted(available)
        return sorted(random.Random(self.seed * 100_003 + rnd).sample(sorted(available), n))

    def configure_fit(self, rnd: int, clients: list[str]) -> dict[str, dict[str, Any]]:
        """Per-client config for round ``rnd``; the round number is always included."""
        return {c: {**self.config, "round": rnd} for c in clients}

    def aggregate_fit(self, rnd: int, weights: Arrays, results: list[FitResult]) -> Arrays:
        """New global weights from the round's results (the mean weighted by examples)."""
        mean = weighted_mean([r.update for r in results],
                             [float(r.num_examples) for r in results])
        return self.apply(rnd, weights, mean)

    def apply(self, rnd: int, weights: Arrays, update: Arrays) -> Arrays:
        """Move ``weights`` by the aggregated ``update``."""
        raise NotImplementedError

    # Checkpoints: strategies with server-side state (FedAdam's moments) override these.
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state


class FedAvg(Strategy):
    """FedAvg (McMahan et al. 2017): ``w + server_lr * weighted mean of the deltas``.

    Example: ``FedAvg(min_fit_clients=2, config={"lr": 0.05, "local_steps": 50})``.
    """

    name = "fedavg"

    def __init__(self, *, server_lr: float = 1.0, **kw: Any) -> None:
        super().__init__(**kw)
        self.server_lr = server_lr

    def apply(self, rnd: int, weights: Arrays, update: Arrays) -> Arrays:
        return [(w + self.server_lr * u).astype(np.float32)
                for w, u in zip(weights, update, strict=True)]


class FedProx(FedAvg):
    """FedProx (Li et al. 2020): FedAvg whose clients add ``mu/2 * ||w - w_global||^2``.

    The proximal term is applied in the client's training loop; the strategy only ships
    ``mu`` in the config. Example: ``FedProx(mu=0.01)``.
    """

    name = "fedprox"

    def __init__(self, *, mu: float = 0.01, **kw: Any) -> None:
        super().__init__(**kw)
        if mu < 0:
            raise ValueError("mu must be >= 0")
        self.mu = mu

    def configure_fit(self, rnd: int, clients: list[str]) -> dict[str, dict[str, Any]]:
        return {c: {**cfg, "mu": self.mu} for c, cfg in super().configure_fit(rnd,
                                                                              clients).items()}


class FedAdam(Strategy):
    """FedAdam (Reddi et al. 2021, "Adaptive Federated Optimization").

    The mean delta is a pseudo-gradient ``Δ``; the server keeps Adam moments:
    ``m = β1 m + (1-β1) Δ``, ``v = β2 v + (1-β2) Δ²``, ``w += η m / (√v + τ)``
    (no bias correction, as in the paper's Algorithm 2 and Flower).

    Example: ``FedAdam(eta=0.01, beta1=0.9, beta2=0.99, tau=1e-3)``.
    """

    name = "fedadam"

    def __init__(self, *, eta: float = 0.01, beta1: float = 0.9, beta2: float = 0.99,
                 tau: float = 1e-3, **kw: Any) -> None:
        super().__init__(**kw)
        self.eta, self.beta1, self.beta2, self.tau = eta, beta1, beta2, tau
        self.m: Arrays | None = None
        self.v: Arrays | None = None

    def apply(self, rnd: int, weights: Arrays, update: Arrays) -> Arrays:
        if self.m is None or self.v is None:
            self.m = [np.zeros_like(u, dtype=np.float64) for u in update]
            self.v = [np.zeros_like(u, dtype=np.float64) for u in update]
        out = []
        for i, (w, u) in enumerate(zip(weights, update, strict=True)):
            self.m[i] = self.beta1 * self.m[i] + (1 - self.beta1) * u
            self.v[i] = self.beta2 * self.v[i] + (1 - self.beta2) * np.square(u, dtype=float)
            out.append((w + self.eta * self.m[i] / (np.sqrt(self.v[i]) + self.tau))
                       .astype(np.float32))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"m": self.m, "v": self.v}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.m, self.v = state.get("m"), state.get("v")


STRATEGIES: dict[str, type[Strategy]] = {"fedavg": FedAvg, "fedprox": FedProx,
                                         "fedadam": FedAdam}


def make_strategy(name: str, **kw: Any) -> Strategy:
    """A shipped strategy by name. Example: ``make_strategy("fedprox", mu=0.1)``."""
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}: use {', '.join(STRATEGIES)}") from None
    return cls(**kw)
