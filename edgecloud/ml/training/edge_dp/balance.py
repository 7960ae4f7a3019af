"""Who computes how much of the global batch: measured throughput in, shares out.

:class:`ThroughputTracker` keeps, per worker, an exponentially weighted moving average
(EWMA) of the samples per second the coordinator *measured* for it (samples of its share
/ seconds from sending its task to receiving its result — compute and transfer, as the
synchronous step experiences them). :func:`plan_shares` turns that into integer shares
summing to the global batch: ``equal`` ignores the rates; ``aware`` gives each worker a
share proportional to its rate, so in a synchronous step every worker finishes at about
the same time instead of everybody waiting for the slowest. A worker not yet measured
(just joined) is planned at the mean rate of the others.

Example::

    t = ThroughputTracker(alpha=0.5)
    t.observe("a", 30, 0.1); t.observe("b", 30, 0.3)      # 300/s and 100/s
    plan_shares("aware", 64, ["a", "b"], t)               # {'a': 48, 'b': 16}
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Literal

Policy = Literal["equal", "aware"]


class ThroughputTracker:
    """EWMA of measured samples/s per worker (``alpha`` = weight of the newest sample)."""

    def __init__(self, alpha: float = 0.3) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], not {alpha}")
        self.alpha = alpha
        self.rates: dict[str, float] = {}

    def observe(self, name: str, samples: int, seconds: float) -> float:
        """Fold in one measurement; returns the new estimate."""
        if samples <= 0 or seconds <= 0:
            return self.rates.get(name, 0.0)
        rate = samples / seconds
        old = self.rates.get(name)
        self.rates[name] = rate if old is None else self.alpha * rate + (1 - self.alpha) * old
        return self.rates[name]

    def rate(self, name: str) -> float | None:
        return self.rates.get(name)

    def forget(self, name: str) -> None:
        self.rates.pop(name, None)


def split_batch(total: int, weights: Mapping[str, float], minimum: int = 1) -> dict[str, int]:
    """Integer shares of ``total`` proportional to ``weights`` (largest remainder).

    Every worker gets at least ``minimum`` samples so it keeps being measured (a worker
    given nothing would never show it got faster).

    Example: ``split_batch(10, {"a": 3, "b": 1})`` → ``{'a': 7, 'b': 3}`` (7.5/2.5 rounded
    by remainder, ties to the first).
    """
    names = list(weights)
    if not names:
        return {}
    if total < minimum * len(names):
        raise ValueError(f"a batch of {total} cannot give {len(names)} workers "
                         f"{minimum} samples each")
    w = [max(float(weights[n]), 0.0) for n in names]
    if not all(math.isfinite(x) for x in w) or sum(w) <= 0:
        w = [1.0] * len(names)
    free = total - minimum * len(names)
    ideal = [free * x / sum(w) for x in w]
    shares = [math.floor(x) for x in ideal]
    order = sorted(range(len(names)), key=lambda i: (-(ideal[i] - shares[i]), i))
    for i in order[: free - sum(shares)]:
        shares[i] += 1
    return {n: s + minimum for n, s in zip(names, shares, strict=True)}


def plan_shares(policy: Policy, total: int, workers: Iterable[str],
                tracker: ThroughputTracker, minimum: int = 1) -> dict[str, int]:
    """The shares of the next steps under ``policy`` (``"equal"`` or ``"aware"``)."""
    names = list(workers)
    if policy == "equal":
        return split_batch(total, dict.fromkeys(names, 1.0), minimum)
    if policy != "aware":
        raise ValueError(f"unknown policy {policy!r}: use 'equal' or 'aware'")
    known = [r for n in names if (r := tracker.rate(n))]
    default = sum(known) / len(known) if known else 1.0
    return split_batch(total, {n: tracker.rate(n) or default for n in names}, minimum)
