"""The platform's configuration and its in-process state shared by API and tasks.

`Platform` bundles the store, the authenticator, the transition hooks, the metrics
registry and the assignment notifier. The next layers (controller, orchestrator) take a
`Platform` and use `set_assignment` and `hooks.subscribe`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, Field

from edgecloud.platform.auth import Authenticator, read_admin_token_hash
from edgecloud.platform.hooks import TransitionHooks
from edgecloud.platform.metrics import make_registry
from edgecloud.platform.store import Store
from edgecloud.resource.runtime import InstanceSpec
from edgecloud.service import Endpoint


class PlatformConfig(BaseModel):
    """Config of `python -m edgecloud.platform.server CONFIG.json`."""

    listen: Endpoint
    db_url: str = Field(description="SQLAlchemy URL, e.g. sqlite:////abs/platform.db or "
                                    "postgresql+psycopg://user:pw@host/db")
    admin_token_file: Path
    heartbeat_interval_s: float = Field(5.0, gt=0)
    missed_beats: int = Field(3, ge=1)
    startup_grace_s: float = Field(
        30.0, ge=0, description="after the platform (re)starts, nodes not heard from since "
                                "get this long to heartbeat before they are declared "
                                "NotReady (an embedded `up` starts agents last; a real "
                                "site's agents back off up to ~10 s)")
    metrics_require_auth: bool = Field(
        False, description="require the admin token on /metrics (default: open, as "
                           "Prometheus exporters usually are; it carries no secrets)")


class AssignmentNotifier:
    """Wakes long-polls waiting on a node's assignment; `notify` works from any thread.

    One asyncio.Event per node with waiters: `notify` sets it and drops it, the next
    waiter creates a fresh one. A waiter takes its event *before* reading the revision,
    so a change between the read and the wait is never lost.
    """

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closing = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def event_for(self, node_id: str) -> asyncio.Event:
        """Call in the event loop."""
        ev = self._events.get(node_id)
        if ev is None or self.closing:
            ev = self._events[node_id] = asyncio.Event()
            if self.closing:
                ev.set()
        return ev

    def notify(self, node_id: str) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._fire, node_id)

    def wake_all(self) -> None:
        """Release every waiter (shutdown: long-polls return their current state)."""
        self.closing = True
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._fire_all)

    def _fire(self, node_id: str) -> None:
        ev = self._events.pop(node_id, None)
        if ev is not None:
            ev.set()

    def _fire_all(self) -> None:
        for node_id in list(self._events):
            self._fire(node_id)


class Platform:
    """Everything a running platform holds in memory, built from its config."""

    def __init__(self, config: PlatformConfig) -> None:
        self.config = config
        admin_hash = read_admin_token_hash(config.admin_token_file)
        self.store = Store(config.db_url)
        self.auth = Authenticator(self.store, admin_hash)
        self.hooks = TransitionHooks()
        self.notifier = AssignmentNotifier()
        self.registry = make_registry(self.store)
        self.started_at = time.time()
        self.heartbeat_listeners: list[Callable[[str], None]] = []
        """Called with the node id after every heartbeat (keep them quick)."""

    def set_assignment(self, node_id: str, instances: list[InstanceSpec]) -> int:
        """Replace the desired instances of node `node_id`; wakes its long-poll.

        Returns the new revision. Raises KeyError for an unknown node.
        """
        rev = self.store.nodes.set_assignment(
            node_id, [s.model_dump(mode="json") for s in instances])
        self.notifier.notify(node_id)
        return rev

    def close(self) -> None:
        self.store.close()
