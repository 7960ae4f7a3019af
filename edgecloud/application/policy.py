"""Policies: the decisions of an application's in-app controller.

A policy lives in two places. In the controllers it receives reports and produces
decisions (`on_report`, `on_global`, `decisions`); in every component it answers questions
from the latest decisions without a round trip (`route`, `decide`). The same class serves
both, so an application overrides one class to change its behaviour:

    class LatencyAware(BasicPolicy):
        def on_report(self, report): ...            # controller side: learn
        def decisions(self): return {"target": ...} # controller side: publish
        def decide(self, question, value, decisions): ...  # component side: apply
"""

from __future__ import annotations

import itertools
import zlib
from typing import Any, Literal

from pydantic import BaseModel, Field

from edgecloud.application.context import Peer

Role = Literal["component", "local", "global"]


class Report(BaseModel):
    """What a component tells its controller every report interval."""

    instance: str
    component: str
    site: str
    ts: float
    queue_len: int = 0
    processed: int = 0
    throughput: float = 0.0
    latency_ms: float | None = None
    """Mean time from receipt to the end of `on_message` over the interval."""
    values: dict[str, Any] = Field(default_factory=dict)
    """Custom values from `Component.report(...)`."""


def parse_decisions(body: Any) -> dict[str, Any]:
    """A decisions payload (`topics.decisions`): a map of decision names to values.

    Parsed once by each receiver; ValueError (saying what came instead) otherwise.
    """
    if not isinstance(body, dict) or not all(isinstance(k, str) for k in body):
        kind = type(body).__name__ if not isinstance(body, dict) else "map with non-text keys"
        raise ValueError(f"decisions must be a map of names to values, got a {kind}")
    return dict(body)


class Policy:
    """Base policy: no decisions, default routing. Subclass `BasicPolicy` in applications."""

    def __init__(self, params: dict[str, Any], role: Role, site: str, node: str = "") -> None:
        self.params = dict(params)
        self.role = role
        self.site = site
        self.node = node

    def on_params(self, params: dict[str, Any]) -> None:
        """Parameters changed at run time (a controller `set` operation)."""
        self.params.update(params)

    # -- controller side ------------------------------------------------------------------
    def on_report(self, report: Report) -> None:
        """A report from a component (or, at the global controller, a site summary)."""

    def on_global(self, decisions: dict[str, Any]) -> None:
        """A local controller learns the global controller's latest decisions."""

    def decisions(self) -> dict[str, Any]:
        """Decisions to publish now to the components this controller serves."""
        return {}

    # -- component side -------------------------------------------------------------------
    def route(self, target: str, candidates: list[Peer], decisions: dict[str, Any],
              key: str | None = None) -> Peer:
        """Choose the instance of `target` for one `send`: same node first, then same
        site, then any; by key (stable hash) when given, round-robin otherwise.

        `candidates` are the current peers: the membership is live (a re-plan drops, adds
        or moves instances while this instance runs), so no choice is kept between calls
        beyond the round-robin position per pool size."""
        same_node = [p for p in candidates if self.node and p.node == self.node]
        local = [p for p in candidates if p.site == self.site]
        pool = same_node or local or candidates
        if key is not None:
            return pool[zlib.crc32(key.encode()) % len(pool)]
        counter = self._rr.setdefault((target, len(pool)), itertools.count())
        return pool[next(counter) % len(pool)]

    def decide(self, question: str, value: Any, decisions: dict[str, Any]) -> Any:
        """Answer an application question (e.g. what to do with a confidence)."""
        raise KeyError(f"policy {type(self).__name__} has no answer for {question!r}")

    @property
    def _rr(self) -> dict[tuple[str, int], itertools.count[int]]:
        if not hasattr(self, "_rr_state"):
            self._rr_state: dict[tuple[str, int], itertools.count[int]] = {}
        return self._rr_state


class BasicPolicy(Policy):
    """ACE's Basic Policy: confidence thresholds, parameters from topology params.

    `decide("confidence", c)` -> "positive" when c >= alpha, "drop" when c <= beta,
    otherwise "escalate" (send to the stronger model). alpha defaults to 0.8 and beta to
    (1 - alpha) / 2 = 0.1, as in ACE. Decisions can override both at run time.
    """

    def __init__(self, params: dict[str, Any], role: Role, site: str, node: str = "") -> None:
        super().__init__(params, role, site, node)
        self.alpha = float(self.params.get("alpha", 0.8))
        self.beta = float(self.params.get("beta", (1 - self.alpha) / 2))

    def decisions(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "beta": self.beta}

    def decide(self, question: str, value: Any, decisions: dict[str, Any]) -> Any:
        if question != "confidence":
            return super().decide(question, value, decisions)
        alpha = float(decisions.get("alpha", self.alpha))
        beta = float(decisions.get("beta", self.beta))
        if value >= alpha:
            return "positive"
        if value <= beta:
            return "drop"
        return "escalate"
