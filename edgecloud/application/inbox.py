"""A component's inbox: at-least-once delivery into its handlers, duplicates dropped.

The runner's MQTT client has a persistent session and acknowledges manually. Every
message for the component's worker (its inbox, controller commands, `subscribe`d topics)
is put here by the network thread WITHOUT an acknowledgement; the worker thread handles
the messages one at a time in arrival order and acknowledges each only after its handler
returned (or raised: a bad message is logged and counted, never redelivered forever).
Until then the broker owns it and redelivers it to the next connection of the session
(a reconnect, or the instance restarted after a crash).

Duplicates (a redelivery of what was handled but not yet acknowledged, the bridge's own
residual duplicates) are dropped by envelope id just before the handler, with
`codec.RecentIds`. With an instance directory, handled ids are also appended to
`<instance dir>/handled-ids` after the handler returns and before the acknowledgement,
and the newest `DEDUP_CAPACITY` are loaded at start, so the suppression survives the
instance's own crash. A plain write() without fsync is enough for that: the data of a
killed process's completed write() is in the kernel and reaches the file.

A handler that cannot hand its output on (`BackpressureError`: the broker has stopped
acknowledging) has not really handled its message: that message is NOT acknowledged, the
worker stops and `on_stuck` is called (the runner exits non-zero, the instance is
restarted, the broker redelivers). Any other exception counts as handled (bad message).

What remains, honestly:
- killed between the end of a handler and the write() of its id (microseconds), or
  inside a handler: that message is handled again after the restart (at least once);
- a power loss or kernel crash may lose the newest ids (no fsync): their messages, if
  redelivered, are handled again;
- ids older than the newest `DEDUP_CAPACITY` handled are forgotten, and payloads that are
  not edgecloud envelopes have no id: neither can be recognised as duplicates.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgecloud.log import KVLogger
from edgecloud.resource.codec import RecentIds
from edgecloud.resource.mqtt import BackpressureError, BaseClient, Delivery

DEDUP_CAPACITY = 50_000
JOURNAL_FILE = "handled-ids"
DRAIN_S = 3.0
"""On stop, queued messages are still handled for up to this long; the rest stay with
the broker (unacknowledged) and are delivered to the next start."""

HandleFn = Callable[[Delivery, float], None]


class HandledJournal:
    """Append-only file of the envelope ids a component instance has handled.

    One id per line, one write() each. Rewritten with only the newest ids once it holds
    twice as many as it needs (atomic replace, so a crash leaves the old or the new file).
    """

    def __init__(self, path: Path, capacity: int = DEDUP_CAPACITY) -> None:
        self.path = path
        self.capacity = capacity
        self._lines = 0
        self._fd = -1

    def load(self) -> list[str]:
        """The newest `capacity` ids, oldest first; opens the journal for appending."""
        try:
            ids = [ln for ln in self.path.read_text(errors="replace").splitlines() if ln]
        except FileNotFoundError:
            ids = []
        ids = ids[-self.capacity:]
        self._lines = len(ids)
        self._open()
        return ids

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def append(self, msg_id: str, recent: RecentIds) -> None:
        """Record `msg_id` as handled; compact from `recent` when the file grew too big."""
        os.write(self._fd, f"{msg_id}\n".encode())
        self._lines += 1
        if self._lines >= 2 * self.capacity:
            self._compact(recent)

    def _compact(self, recent: RecentIds) -> None:
        ids = list(recent)[-self.capacity:]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(f"{i}\n" for i in ids))
        os.replace(tmp, self.path)
        os.close(self._fd)
        self._open()
        self._lines = len(ids)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@dataclass(slots=True)
class _Item:
    delivery: Delivery
    handle: HandleFn
    received_at: float


@dataclass(slots=True)
class _Call:
    """A local call for the worker (`Inbox.call`): no message, nothing to acknowledge."""

    fn: Callable[[], None]


class Inbox:
    """Messages received, not yet handled nor acknowledged; one worker thread handles them.

    `put` (network thread) queues; `start` starts the worker; `stop` (any thread, never
    blocks) stops accepting and lets the worker drain what is queued for up to `DRAIN_S`;
    `join` waits for the worker. See the module docstring for the guarantees.
    """

    def __init__(self, client: BaseClient, log: KVLogger, instance_dir: str = "",
                 on_stuck: Callable[[str], None] | None = None) -> None:
        self._client = client
        self._on_stuck = on_stuck
        self._log = log
        self._queue: queue.Queue[_Item | _Call | None] = queue.Queue()
        self._journal = HandledJournal(Path(instance_dir) / JOURNAL_FILE) if instance_dir \
            else None
        self._handled = RecentIds(DEDUP_CAPACITY,
                                  self._journal.load() if self._journal else ())
        self._accepting = True
        self._deadline: float | None = None
        self._thread: threading.Thread | None = None
        self.duplicates = 0
        self.left_unhandled = 0

    def put(self, delivery: Delivery, handle: HandleFn) -> None:
        """Queue `delivery` for `handle(delivery, received_at)` on the worker."""
        if not self._accepting:
            return  # stopping: left unacknowledged, the broker delivers it to the next start
        self._queue.put(_Item(delivery, handle, time.time()))

    def call(self, fn: Callable[[], None]) -> None:
        """Queue `fn()` for the worker, in order with the messages (e.g. a hook that
        author code must not run concurrently with its handlers). Not kept on stop."""
        if self._accepting:
            self._queue.put(_Call(fn))

    def qsize(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="inbox", daemon=True)
            self._thread.start()

    def stop(self, drain_s: float = DRAIN_S) -> None:
        """Stop accepting; the worker handles what is queued for up to `drain_s`, then
        exits (what is left stays unacknowledged). Safe from any thread, the worker too."""
        if self._deadline is None:
            self._accepting = False
            self._deadline = time.monotonic() + drain_s
            self._queue.put(None)

    def join(self, patience_s: float = DRAIN_S + 1.0) -> None:
        """Wait for the worker to exit (after `stop`). A handler that does not return is
        waited for (logged after `patience_s`): teardown must not race it."""
        thread = self._thread
        if thread is None:
            if self._journal is not None:
                self._journal.close()
            return
        if thread is threading.current_thread():
            return
        thread.join(patience_s)
        if thread.is_alive():
            self._log.warning("waiting for a message handler to return before teardown",
                              waited_s=patience_s)
            thread.join()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                break
            if self._deadline is not None and time.monotonic() > self._deadline:
                self.left_unhandled = self._queue.qsize() + 1
                self._log.info("stopping with messages not handled; the broker keeps them",
                               messages=self.left_unhandled)
                break
            if not (self._call(item) if isinstance(item, _Call) else self._handle(item)):
                break
        if self._journal is not None:
            self._journal.close()

    def _handle(self, item: _Item) -> bool:
        """Handle one message; False if the worker must stop (output cannot be sent)."""
        d = item.delivery
        if d.id and d.id in self._handled:
            self.duplicates += 1
            self._client.ack(d)
            return True
        try:
            item.handle(d, item.received_at)
        except BackpressureError as exc:
            self._stop_stuck(f"a handler of {d.topic}", exc)
            return False
        except Exception:  # the handle functions log their own; this is the last guard
            self._log.exception("message handling failed", topic=d.topic)
        if d.id:
            self._handled.add(d.id)
            if self._journal is not None:
                try:
                    self._journal.append(d.id, self._handled)
                except OSError as exc:
                    self._log.warning("cannot record a handled message id", error=str(exc))
        self._client.ack(d)
        return True

    def _call(self, call: _Call) -> bool:
        """Run a local call; False if the worker must stop (its output cannot be sent)."""
        try:
            call.fn()
        except BackpressureError as exc:
            self._stop_stuck(getattr(call.fn, "__qualname__", "a local call"), exc)
            return False
        except Exception:
            self._log.exception("worker call failed")
        return True

    def _stop_stuck(self, what: str, exc: BackpressureError) -> None:
        self._accepting = False
        self.left_unhandled = self._queue.qsize() + 1
        self._log.error("stopping: output cannot be published; the messages not handled "
                        "stay with the broker", where=what, error=str(exc))
        if self._on_stuck is not None:
            self._on_stuck(str(exc))
