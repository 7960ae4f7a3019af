"""The MQTT clients of edgecloud: thin, thread-safe wrappers over paho-mqtt 2.x.

Nothing paho-typed leaks out of this module; paho itself is wrapped by the private
transport `edgecloud.resource._paho` (pinned version, contract-tested).

    with MqttClient("mqtt://127.0.0.1:1883", src="detector-0") as c:
        c.connect()
        c.subscribe("sites/+/frames/#", lambda d: print(d.topic, d.body), wait=5)
        c.publish("sites/cloud/frames/1", {"w": 640})
        c.flush(5)

Two clients share one base (`mqtt_base.BaseClient`):
- `MqttClient` (components, tools): paho retransmits what a dropped connection left
  unacknowledged, before anything newer; its queue of waiting publishes is bounded, and a
  full queue blocks the publisher up to `publish_timeout` s, then raises
  `BackpressureError` (never silent loss, never unbounded memory).
- `OwnerResendClient` (the bridge's publishers): the owner, not paho, resends; see its
  docstring.

What the base adds to paho:
- envelopes (`edgecloud.resource.codec`) on publish; on receive, decoding (or, with
  `decode_bodies=False`, only the envelope id) and duplicate suppression by envelope id
  (`codec.RecentIds`);
- automatic reconnect with 0.1..5 s backoff and re-subscription of every pattern;
  `subscribe(..., wait=s)` returns once the broker acknowledged the subscription;
- several handlers per client, matched by MQTT wildcards; a failing handler or a malformed
  payload is logged and counted in `stats`, never fatal;
- its own in-flight window for QoS>0 publishes. paho's own window rescans its whole
  queue on every PUBACK (quadratic under load), so paho runs unlimited and this wrapper
  holds back what exceeds `max_inflight`;
- manual acknowledgement (`manual_ack=True`): a subscription made with `ack="manual"`
  leaves each message unacknowledged until its owner calls `ack(delivery)` (e.g. after
  handling it on another thread, or after committing it to disk); other subscriptions
  are acknowledged when their handlers return. Acknowledgements always go out in receive
  order (`_paho.AckSequencer`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from edgecloud.errors import UserError
from edgecloud.log import get_logger
from edgecloud.resource._paho import topic_matches
from edgecloud.resource.mqtt_base import BaseClient, Delivery, Handler, parse_url

log = get_logger("mqtt")

MAX_QUEUED = 10_000
MAX_QUEUED_BYTES = 64 << 20
PUBLISH_TIMEOUT_S = 5.0

__all__ = ["BackpressureError", "BaseClient", "Delivery", "Handler", "MqttClient",
           "OwnerResendClient", "parse_url", "topic_matches"]


class BackpressureError(UserError):
    """A publish could not be queued: the broker has stopped acknowledging for too long."""


class MqttClient(BaseClient):
    """The client of components and tools: paho retransmits, publishing is bounded."""

    def __init__(self, url: str, client_id: str | None = None, *,
                 max_queued: int = MAX_QUEUED, max_queued_bytes: int = MAX_QUEUED_BYTES,
                 publish_timeout: float = PUBLISH_TIMEOUT_S, **kwargs: Any) -> None:
        """See `BaseClient.__init__` for the common arguments.

        max_queued / max_queued_bytes: publishes waiting beyond the in-flight window
        (while the broker is slow or the connection is down). When either bound is
        reached, `publish` blocks until the broker acknowledges enough; after
        `publish_timeout` s without room it raises `BackpressureError`. On the network
        thread (inside a handler) it cannot wait for acknowledgements: it raises at once.
        """
        super().__init__(url, client_id, **kwargs)
        self.max_queued = max(1, max_queued)
        self.max_queued_bytes = max_queued_bytes
        self.publish_timeout = publish_timeout

    def _after_connack(self) -> None:
        with self._lock:
            self._hold = False
            self._pump()

    def _connection_lost(self) -> None:
        self._hold = self._ever_connected

    def _full(self, size: int) -> bool:
        return (len(self._pending) >= self.max_queued
                or (self._pending_bytes + size > self.max_queued_bytes and bool(self._pending)))

    def publish_raw(self, topic: str, data: bytes, qos: int = 1, retain: bool = False,
                    token: Any = None) -> bool:
        """Publish bytes as they are; True once queued. `token` goes to `on_delivered`.

        Thread-safe. Beyond `max_inflight` the message waits in memory and goes out as
        acknowledgements come back (and after a reconnect); beyond `max_queued` it blocks,
        then raises `BackpressureError` (see `__init__`).
        """
        if qos == 0:
            self._paho.publish(topic, data, 0, retain)
            self.stats["published"] += 1
            return True
        with self._lock:
            if self._inflight < self.max_inflight and not self._pending and not self._hold:
                self._send(topic, data, qos, retain, token)
            else:
                if self._full(len(data)):
                    self._wait_for_room(len(data), topic)
                self._pending.append((topic, data, qos, retain, token))
                self._pending_bytes += len(data)
            self.stats["published"] += 1
        return True

    def _wait_for_room(self, size: int, topic: str) -> None:
        # Caller holds self._lock; the wait releases it so acknowledgements get in.
        on_network_thread = threading.current_thread() is self._paho.network_thread
        deadline = time.monotonic() + (0 if on_network_thread else self.publish_timeout)
        while self._full(size):
            left = deadline - time.monotonic()
            if left <= 0:
                self.stats["queue_full"] += 1
                state = "connected" if self._connected.is_set() else "not connected"
                raise BackpressureError(
                    f"MQTT broker {self.url} ({state}) has not acknowledged "
                    f"{self._inflight + len(self._pending)} messages for "
                    f"{self.publish_timeout:g} s; publish to {topic!r} "
                    "refused. The broker is down, overloaded or partitioned away, or this "
                    "sender is faster than it: check the broker, or send less")
            self._changed.wait(left)


class OwnerResendClient(BaseClient):
    """A publisher whose owner resends (the bridge's): paho never retransmits.

    When the connection drops, every unacknowledged publish (in flight or waiting) is
    forgotten (never sent again, `on_delivered` never fires for it; counted in
    stats["forgotten"]) and later publishes are refused (`publish_raw` returns False,
    counted in stats["dropped_offline"]) until the owner calls `resume()`; so are
    publishes before the first connection. `on_reconnect()` is called (network thread;
    keep it short) once each connection is up; the owner then calls `resume()` and
    publishes again, oldest first, what it still needs. So nothing older than the new
    connection can overtake the owner's resends. Its queue is unbounded: the owner
    bounds what it hands over (`outstanding`).
    """

    def __init__(self, url: str, client_id: str | None = None, *,
                 on_reconnect: Callable[[], None] | None = None, **kwargs: Any) -> None:
        super().__init__(url, client_id, **kwargs)
        self.on_reconnect = on_reconnect
        self._blocked = True  # until resume() after the first on_reconnect
        self._up = False  # a CONNACK was handled and no drop seen since

    def _after_connack(self) -> None:
        with self._lock:
            self._up = self._connected.is_set()
        if self._up and self.on_reconnect is not None:
            try:
                self.on_reconnect()
            except Exception:
                log.exception("on_reconnect callback failed", broker=self.url)

    def _forget_unacked(self) -> None:
        """Connection gone: drop every unacknowledged publish, block new ones until
        resume(). Also clears paho's copies so it cannot retransmit them."""
        with self._lock:
            self._blocked = True
            self._up = False
            forgotten = len(self._tokens) + len(self._pending)
            self._paho.forget_outgoing()
            self._tokens.clear()
            self._pending.clear()
            self._pending_bytes = 0
            self._inflight = 0
            self.stats["forgotten"] += forgotten
            self._changed.notify_all()

    def _before_reconnect(self) -> None:
        self._forget_unacked()

    def _connection_lost(self) -> None:
        self._forget_unacked()

    def resume(self) -> bool:
        """Accept publishes again after `on_reconnect`.

        Returns False (and stays blocked) if the connection dropped again meanwhile; another
        `on_reconnect` follows the next connection.
        """
        with self._lock:
            if self._up:
                self._blocked = False
            return not self._blocked

    @property
    def accepting(self) -> bool:
        """False while publishes are refused (between a drop and `resume`)."""
        return not self._blocked

    def publish_raw(self, topic: str, data: bytes, qos: int = 1, retain: bool = False,
                    token: Any = None) -> bool:
        """Publish bytes as they are; False if refused (not resumed since a drop).

        Thread-safe, never blocks: beyond `max_inflight` the message waits in memory.
        """
        if qos == 0:
            self._paho.publish(topic, data, 0, retain)
            self.stats["published"] += 1
            return True
        with self._lock:
            if self._blocked:
                self.stats["dropped_offline"] += 1
                return False
            if self._inflight < self.max_inflight and not self._pending:
                self._send(topic, data, qos, retain, token)
            else:
                self._pending.append((topic, data, qos, retain, token))
                self._pending_bytes += len(data)
            self.stats["published"] += 1
        return True
