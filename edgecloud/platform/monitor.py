"""Node readiness and the platform status document.

A node is Ready while heartbeats arrive; `check_readiness` (run periodically by
`watch_readiness`) marks it NotReady after `missed_beats` intervals of silence. Every
transition is stored as an event and handed to the `TransitionHooks` subscribers (the
controller re-plans on them). Transitions and hooks are in hooks.py, the Prometheus
collectors in metrics.py.
"""

from __future__ import annotations

import asyncio
import time

from edgecloud.log import get_logger
from edgecloud.platform.core import Platform
from edgecloud.platform.hooks import NodeTransition
from edgecloud.platform.store import NodeRow
from edgecloud.resource.protocol import (
    PlatformInfo,
    PlatformStatus,
    StatusNode,
    StatusSite,
)

log = get_logger("platform.monitor")


def silent_for(p: Platform, last_heartbeat: float | None, interval_s: float | None,
               now: float) -> float | None:
    """How long a node has been silent beyond its allowance (None: within it).

    Silence is counted from the platform's start at the earliest, so a restarted
    platform gives agents time to reconnect before declaring them lost.
    """
    interval = interval_s or p.config.heartbeat_interval_s
    allowance = p.config.missed_beats * interval
    # A restarted platform waits a while for the agents it heard from before its start:
    # nothing says they are gone, and declaring them NotReady would move every instance
    # away and back (a re-plan churn that restarts sources from their first item). Nodes
    # heard from since the start are judged by the usual allowance.
    heard_since_start = last_heartbeat is not None and last_heartbeat >= p.started_at
    if not heard_since_start and now - p.started_at <= max(p.config.startup_grace_s,
                                                           allowance):
        return None
    since = max(last_heartbeat or 0.0, p.started_at)
    return now - since if now - since > allowance else None


def is_live(p: Platform, node: NodeRow, now: float | None = None) -> bool:
    """Ready and not overdue: the nodes a placement may use. A node whose heartbeats
    stopped is excluded before the readiness checker gets round to marking it."""
    now = time.time() if now is None else now
    return node.state == "Ready" and silent_for(p, node.last_heartbeat,
                                                node.heartbeat_interval_s, now) is None


def check_readiness(p: Platform, now: float | None = None) -> list[str]:
    """Mark NotReady every Ready node silent for `missed_beats` intervals; returns them."""
    now = time.time() if now is None else now
    lost = []
    for row in p.store.nodes.heartbeat_ages():
        silent = silent_for(p, row.last_heartbeat, row.heartbeat_interval_s, now)
        if silent is None:
            continue
        interval = row.heartbeat_interval_s or p.config.heartbeat_interval_s
        reason = f"no heartbeat for {silent:.1f}s ({p.config.missed_beats} x {interval:g}s)"
        if p.store.nodes.mark_not_ready(row.id, reason):
            p.hooks.emit(NodeTransition(row.id, "NotReady", reason, now))
            lost.append(row.id)
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


def platform_status(p: Platform) -> PlatformStatus:
    """`GET /status`: the platform, the infrastructure, sites with their nodes."""
    infra = p.store.infra.current()
    by_site: dict[str, list[StatusNode]] = {}
    for row in p.store.nodes.all():
        by_site.setdefault(row.site, []).append(StatusNode.model_validate(
            row.info().model_dump(include=set(StatusNode.model_fields))))
    return PlatformStatus(
        platform=PlatformInfo(url=p.config.listen.url("http")),
        infra=infra.name if infra else None,
        sites=[StatusSite(name=s.name, kind=s.kind, broker=s.broker, files=s.files,
                          nodes=by_site.get(s.name, [])) for s in p.store.infra.sites()])
