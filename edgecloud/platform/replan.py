"""One background worker for re-plans and assignment syncs, so that request threads
(heartbeats, node transitions) only mark work and a burst of events costs one pass."""

from __future__ import annotations

import threading
from collections.abc import Callable

from edgecloud.log import get_logger

log = get_logger("platform.replan")


class ReplanWorker:
    """Runs `replan(reasons)` after node transitions and `sync()` after heartbeats that
    may release withheld instances; requests arriving within `debounce_s` coalesce."""

    def __init__(self, replan: Callable[[str], object], sync: Callable[[], None],
                 debounce_s: float = 0.2) -> None:
        self._replan_fn = replan
        self._sync_fn = sync
        self.debounce_s = debounce_s
        self._cond = threading.Condition()
        self._reasons: list[str] = []
        self._sync_wanted = False
        self._stopping = False
        self.passes = 0
        """How many passes ran (tests check that bursts coalesce)."""
        self._thread = threading.Thread(target=self._loop, name="replan", daemon=True)
        self._thread.start()

    def replan(self, reason: str) -> None:
        with self._cond:
            self._reasons.append(reason)
            self._cond.notify()

    def sync(self) -> None:
        with self._cond:
            self._sync_wanted = True
            self._cond.notify()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stopping or self._reasons
                                    or self._sync_wanted)
                if self._stopping:
                    return
                # Let a burst (several nodes lost together, many heartbeats) arrive.
                self._cond.wait_for(lambda: self._stopping, self.debounce_s)
                if self._stopping:
                    return
                reasons, self._reasons = self._reasons, []
                self._sync_wanted = False
            try:
                if reasons:
                    self._replan_fn("; ".join(dict.fromkeys(reasons)))
                else:
                    self._sync_fn()
            except Exception:  # the next event tries again; a dead worker would not
                log.exception("re-plan failed")
            self.passes += 1
