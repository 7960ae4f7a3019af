"""Node state transitions and their in-process subscribers.

A module of its own so that `core` (which holds the hooks) and `monitor` (which emits
transitions) both depend on it instead of on each other.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from edgecloud.log import get_logger
from edgecloud.resource.protocol import NodeState

log = get_logger("platform.hooks")


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
