"""Node readiness, transition hooks, status document and Prometheus metrics.

A node is Ready while heartbeats arrive; `check_readiness` (run periodically by
`watch_readiness`) marks it NotReady after `missed_beats` intervals of silence. Every
transition is stored as an event and handed to the `TransitionHooks` subscribers (the
controller re-plans on them).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.engine import RowMapping

from edgecloud.log import get_logger
from edgecloud.platform.store import Store
from edgecloud.resource.protocol import NodeInfo, NodeState

if TYPE_CHECKING:
    from edgecloud.platform.core import Platform

log = get_logger("platform.monitor")


@dataclass(frozen=True)
class NodeTransition:
    """A node changed state (`state` is the new one)."""

    node_id: str
    state: NodeState
    reason: str
    ts: float


TransitionHook = Callable[[NodeTransition], None]


class TransitionHooks:
    """In-process subscribers to node state transitions.

    Hooks run synchronously in the thread that saw the transition (a request worker or
    the readiness checker): keep them quick, hand long work to your own thread or queue.
    """

    def __init__(self) -> None:
        self._hooks: list[TransitionHook] = []
        self._lock = threading.Lock()

    def subscribe(self, hook: TransitionHook) -> Callable[[], None]:
        """Add `hook`; returns a function that removes it."""
        with self._lock:
            self._hooks.append(hook)

        def unsubscribe() -> None:
            with self._lock:
                if hook in self._hooks:
                    self._hooks.remove(hook)

        return unsubscribe

    def emit(self, t: NodeTransition) -> None:
        log.info("node state", node=t.node_id, state=t.state, reason=t.reason)
        with self._lock:
            hooks = list(self._hooks)
        for hook in hooks:
            try:
                hook(t)
            except Exception:  # a faulty subscriber must not break heartbeats
                log.exception("transition hook failed", node=t.node_id)


def check_readiness(p: Platform, now: float | None = None) -> list[str]:
    """Mark NotReady every Ready node silent for `missed_beats` intervals; returns them.

    Silence is counted from the platform's start at the earliest, so a restarted
    platform gives agents time to reconnect before declaring them lost.
    """
    now = time.time() if now is None else now
    lost = []
    for row in p.store.heartbeat_ages():
        interval = row["heartbeat_interval_s"] or p.config.heartbeat_interval_s
        since = max(row["last_heartbeat"] or 0.0, p.started_at)
        if now - since <= p.config.missed_beats * interval:
            continue
        reason = f"no heartbeat for {now - since:.1f}s ({p.config.missed_beats} x {interval:g}s)"
        if p.store.mark_not_ready(row["id"], reason):
            p.hooks.emit(NodeTransition(row["id"], "NotReady", reason, now))
            lost.append(row["id"])
    return lost


async def watch_readiness(p: Platform, stop: asyncio.Event) -> None:
    """Background task: run `check_readiness` a few times per heartbeat interval."""
    tick = min(1.0, p.config.heartbeat_interval_s / 3)
    while not stop.is_set():
        try:
            await asyncio.to_thread(check_readiness, p)
        except Exception:  # e.g. the database is briefly unavailable: try again next tick
            log.exception("readiness check failed")
        try:
            await asyncio.wait_for(stop.wait(), tick)
        except TimeoutError:
            pass


# -- documents -------------------------------------------------------------------------------
def _ts(epoch: float | None) -> datetime | None:
    return datetime.fromtimestamp(epoch, UTC) if epoch is not None else None


def node_info(row: RowMapping) -> NodeInfo:
    return NodeInfo(name=row["name"], id=row["id"], site=row["site"], state=row["state"],
                    declared=row["declared"], joined=row["joined_at"] is not None,
                    labels=row["labels"], resources=row["resources"], speed=row["speed"],
                    last_heartbeat=_ts(row["last_heartbeat"]), metrics=row["metrics"],
                    agent_version=row["agent_version"], hostname=row["hostname"],
                    assignment_revision=row["assignment_revision"])


def status_document(p: Platform) -> dict[str, Any]:
    """`GET /status`: the platform, the infrastructure, sites with their nodes."""
    infra = p.store.current_infra()
    by_site: dict[str, list[dict[str, Any]]] = {}
    for row in p.store.nodes():
        by_site.setdefault(row["site"], []).append(
            node_info(row).model_dump(mode="json", include={
                "name", "id", "state", "labels", "resources", "last_heartbeat", "metrics"}))
    return {
        "platform": {"url": p.config.listen.url("http")},
        "infra": infra[0] if infra else None,
        "sites": [{"name": s["name"], "kind": s["kind"], "broker": s["broker"],
                   "files": s["files"], "nodes": by_site.get(s["name"], [])}
                  for s in p.store.sites()],
    }


# -- Prometheus ------------------------------------------------------------------------------
class NodeCollector(Collector):
    """Per-node gauges and counters, read from the store at scrape time.

    Reading the store (not process-local gauges) keeps values right across platform
    restarts. Instance and SDK metrics will be further collectors on the same registry.
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        labels = ["site", "node"]
        ready = GaugeMetricFamily("edgecloud_node_ready", "1 if the node is Ready", labels=labels)
        cpu = GaugeMetricFamily("edgecloud_node_cpu_percent", "node CPU use (percent)",
                                labels=labels)
        mem_used = GaugeMetricFamily("edgecloud_node_memory_used_bytes", "node memory in use",
                                     labels=labels)
        mem_total = GaugeMetricFamily("edgecloud_node_memory_total_bytes", "node memory",
                                      labels=labels)
        last = GaugeMetricFamily("edgecloud_node_last_heartbeat_seconds",
                                 "unix time of the last heartbeat", labels=labels)
        beats = CounterMetricFamily("edgecloud_node_heartbeats", "heartbeats received",
                                    labels=labels)
        for row in self.store.nodes():
            key = [row["site"], row["name"]]
            ready.add_metric(key, 1.0 if row["state"] == "Ready" else 0.0)
            beats.add_metric(key, float(row["heartbeats"]))
            m = row["metrics"] or {}
            if "cpu_percent" in m:
                cpu.add_metric(key, float(m["cpu_percent"]))
                mem_used.add_metric(key, float(m["memory_used"]))
                mem_total.add_metric(key, float(m["memory_total"]))
            if row["last_heartbeat"] is not None:
                last.add_metric(key, float(row["last_heartbeat"]))
        yield from (ready, cpu, mem_used, mem_total, last, beats)


def make_registry(store: Store) -> CollectorRegistry:
    """A registry per platform (not the global one), so tests can run several in-process."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(store))
    return registry
