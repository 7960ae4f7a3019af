"""The common base of edgecloud's MQTT clients (see `edgecloud.resource.mqtt`).

`BaseClient` is the connection, subscriptions, receiving (decode, dedup, ordered manual
acknowledgements) and the in-flight window; its subclasses in `mqtt.py` decide what
happens to unacknowledged publishes when a connection drops.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Self
from urllib.parse import urlsplit

from edgecloud.errors import UserError
from edgecloud.log import get_logger
from edgecloud.resource._paho import (
    AckSequencer,
    MQTTErrorCode,
    PahoTransport,
    error_string,
    topic_matches,
)
from edgecloud.resource.codec import PayloadError, RecentIds, decode, encode, peek_id

log = get_logger("mqtt")

Handler = Callable[["Delivery"], None]
AckMode = Literal["auto", "manual"]
DEDUP_CAPACITY = 100_000


@dataclass(slots=True)
class Delivery:
    """A message received from the broker (the wire view; components see `sdk.Message`).

    `body`, `id`, `src`, `ts` come from the envelope (id "" if none). A client made with
    `decode_bodies=False` fills only `id` (read with `codec.peek_id`); `body` is None.
    """

    topic: str
    body: Any
    src: str
    id: str
    ts: float
    qos: int
    raw: bytes
    retain: bool = False
    mid: int = 0  # MQTT packet id
    ticket: tuple[int, int] | None = None  # place in the acknowledgement order (QoS>0)


def parse_url(url: str) -> tuple[str, int]:
    """`mqtt://host:port` (also tcp://, or bare host:port) -> (host, port); default port 1883."""
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
        raise UserError(f"invalid MQTT broker URL {url!r}; expected mqtt://HOST:PORT")
    try:
        port = parts.port or 1883
    except ValueError:
        raise UserError(f"invalid port in MQTT broker URL {url!r}") from None
    return parts.hostname, port


@dataclass(slots=True)
class _Sub:
    qos: int
    handlers: list[Handler]
    ack: AckMode


class BaseClient:
    """A connection to one MQTT 3.1.1 broker; see `edgecloud.resource.mqtt`."""

    def __init__(self, url: str, client_id: str | None = None, *, clean_session: bool = True,
                 src: str = "", keepalive: int = 30, max_inflight: int = 1000,
                 manual_ack: bool = False, dedup: bool = True, decode_bodies: bool = True,
                 on_delivered: Callable[[Any], None] | None = None) -> None:
        """Create a client (not yet connected; call `connect` or `start`).

        clean_session=False needs a stable `client_id`: the broker then keeps the
        subscriptions and queues QoS>0 messages while the client is away.
        max_inflight: unacknowledged QoS>0 publishes on the wire; the rest wait in memory.
        manual_ack: allow `subscribe(..., ack="manual")`; see the module docstring.
        dedup: drop received messages whose envelope id was seen recently (at receipt;
            with manual acks the owner deduplicates when it handles, see `sdk.Inbox`).
        decode_bodies: False reads only envelope ids (`Delivery.body` is None).
        on_delivered: called with the `token` of a publish when the broker acknowledged it
            (QoS>0), from the network thread; keep it short.
        """
        if not clean_session and not client_id:
            raise ValueError("clean_session=False needs a stable client_id")
        self.url = url
        self.host, self.port = parse_url(url)
        self.client_id = client_id or f"ec-{src or 'client'}-{uuid.uuid4().hex[:10]}"
        self.src = src
        self.keepalive = keepalive
        self.max_inflight = max(1, max_inflight)
        self.manual_ack = manual_ack
        self.dedup = dedup
        self.decode_bodies = decode_bodies
        self.on_delivered = on_delivered
        self.stats: dict[str, int] = {
            "received": 0, "published": 0, "malformed": 0, "handler_errors": 0,
            "duplicates_dropped": 0, "queue_full": 0, "reconnects": 0, "forgotten": 0,
            "dropped_offline": 0, "unrouted": 0,
        }
        self._paho = PahoTransport(self.client_id, clean_session, manual_ack)
        self._paho.max_inflight_messages_set(0)  # our own window, see module docstring
        self._paho.max_queued_messages_set(0)
        # paho annotates the delays as int but only adds them to its clock: 0.1 s works.
        self._paho.reconnect_delay_set(min_delay=0.1, max_delay=5)  # type: ignore[arg-type]
        self._paho.on_connect = self._on_connect
        self._paho.after_connack = self._after_connack
        self._paho.before_reconnect = self._reconnecting
        self._paho.on_disconnect = self._on_disconnect
        self._paho.on_message = self._on_message
        self._paho.on_publish = self._on_publish
        self._paho.on_subscribe = self._on_subscribe
        self._acks = AckSequencer(self._paho)
        # paho calls on_publish while holding its out-message lock; publishing takes the same
        # lock. Using that one re-entrant lock for our state keeps a single lock order (no
        # deadlock) and lets on_publish find the token of a mid published a moment ago.
        self._lock: threading.RLock = self._paho.out_lock
        self._changed = threading.Condition(self._lock)  # room, SUBACKs, connection state
        self._tokens: dict[int, Any] = {}
        self._pending: deque[tuple[str, bytes, int, bool, Any]] = deque()
        self._pending_bytes = 0
        self._inflight = 0
        self._hold = False  # set while reconnecting: new publishes wait in _pending
        self._subs: dict[str, _Sub] = {}
        self._wildcards: set[str] = set()  # patterns with + or # (the rest match exactly)
        self._match_cache: dict[str, tuple[list[Handler], bool]] = {}
        self._sub_mids: dict[int, list[str]] = {}  # SUBSCRIBE packet id -> its patterns
        self._subacked: set[str] = set()  # patterns acknowledged on this connection
        self._seen = RecentIds(DEDUP_CAPACITY)
        self._connected = threading.Event()
        self._ever_connected = False
        self._started = False
        self._closing = False
        self._last_error = ""

    # -- connection --------------------------------------------------------------------
    def connect(self, timeout: float = 10.0) -> Self:
        """Connect, retrying until `timeout`; raise UserError naming the broker if unreachable.

        Afterwards the client reconnects by itself whenever the connection drops.
        """
        self.start()
        if not self._connected.wait(timeout):
            self._closing = True
            self._paho.disconnect()
            self._paho.loop_stop()
            self._started = False
            self._closing = False
            why = f" ({self._last_error})" if self._last_error else ""
            raise UserError(f"cannot connect to MQTT broker {self.url} within {timeout:g}s{why}; "
                            "is the broker running and the address right?", exit_code=1)
        return self

    def start(self) -> Self:
        """Start connecting in the background and return at once; retries forever."""
        if not self._started:
            self._started = True
            self._closing = False
            self._paho.connect_async(self.host, self.port, keepalive=self.keepalive)
            self._paho.loop_start()
        return self

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        """Block until (re)connected or `timeout`; True if connected."""
        return self._connected.wait(timeout)

    def close(self, flush_timeout: float = 1.0) -> None:
        """Flush briefly (publishes still unacknowledged after that are lost), disconnect."""
        if not self._started:
            return
        if self._connected.is_set() and flush_timeout > 0:
            self.flush(flush_timeout)
        self._closing = True
        self._paho.disconnect()
        self._paho.loop_stop()
        self._started = False
        self._connected.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if reason.is_failure:
            self._last_error = f"broker refused: {reason}"
            log.warning("connect refused", broker=self.url, reason=str(reason))
            return
        if self._ever_connected:
            self.stats["reconnects"] += 1
            log.info("reconnected", broker=self.url, client=self.client_id,
                     session_present=bool(flags.session_present))
        self._ever_connected = True
        # Snapshot and flag together: a subscribe() either lands in this snapshot or sees
        # the flag set and subscribes itself; none falls in between.
        with self._lock:
            subs = [(p, s.qos) for p, s in self._subs.items()]
            if subs:
                # Always re-subscribe: a broker restart (or amqtt, which keeps sessions in
                # memory only) may have forgotten the session even if we asked to keep it.
                self._send_subscribe(subs)
            self._connected.set()
            self._changed.notify_all()

    def _send_subscribe(self, subs: list[tuple[str, int]]) -> None:
        # Caller holds self._lock, so the SUBACK handler cannot look for the mid too early.
        rc, mid = self._paho.subscribe(subs)
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
            self._sub_mids[mid] = [p for p, _ in subs]

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: Any,
                      properties: Any) -> None:
        with self._lock:
            patterns = self._sub_mids.pop(mid, [])
            for pattern, reason in zip(patterns, reasons, strict=False):
                if reason.is_failure:
                    log.warning("subscription refused", broker=self.url, pattern=pattern,
                                reason=str(reason))
                else:
                    self._subacked.add(pattern)
            self._changed.notify_all()

    def _after_connack(self) -> None:
        """paho has handled a CONNACK: it sent on_connect, then its retransmissions."""

    def _reconnecting(self) -> None:
        # Before every (re)connection attempt. Tickets are voided on_disconnect already;
        # again here in case a connection ended without that callback.
        self._acks.reset()
        self._before_reconnect()

    def _before_reconnect(self) -> None:
        """Runs before every (re)connection attempt (subclasses)."""

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        self._acks.reset()  # the broker redelivers what we had not acknowledged
        with self._lock:
            self._connected.clear()
            self._subacked.clear()
            self._sub_mids.clear()
            self._connection_lost()
        self._last_error = str(reason)
        if not self._closing:
            log.warning("connection lost, reconnecting", broker=self.url, client=self.client_id,
                        reason=str(reason))

    def _connection_lost(self) -> None:
        """Caller holds self._lock."""

    # -- publishing --------------------------------------------------------------------
    def publish(self, topic: str, body: Any, qos: int = 1, retain: bool = False) -> bool:
        """Publish `body` in an envelope; see `publish_raw` for the result."""
        return self.publish_raw(topic, encode(body, src=self.src), qos, retain)

    def publish_raw(self, topic: str, data: bytes, qos: int = 1, retain: bool = False,
                    token: Any = None) -> bool:
        """Publish bytes as they are (subclasses say what a full queue or a drop does)."""
        raise NotImplementedError

    def _send(self, topic: str, data: bytes, qos: int, retain: bool, token: Any) -> None:
        # Caller holds self._lock.
        info = self._paho.publish(topic, data, qos, retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            # paho keeps NO_CONN messages and sends them after the reconnect; anything else
            # would be a bug in our arguments.
            raise ValueError(f"publish to {topic!r} failed: {error_string(info.rc)}")
        self._tokens[info.mid] = token
        self._inflight += 1

    def _pump(self) -> None:
        """Send waiting publishes while the window has room. Caller holds self._lock."""
        pending = self._pending
        sent = False
        while pending and self._inflight < self.max_inflight and not self._hold:
            item = pending.popleft()
            self._pending_bytes -= len(item[1])
            self._send(*item)
            sent = True
        if sent:
            self._changed.notify_all()

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any,
                    properties: Any) -> None:
        with self._lock:
            if mid not in self._tokens:
                return  # a QoS 0 publish
            token = self._tokens.pop(mid)
            self._inflight -= 1
            if self.on_delivered is not None:
                try:
                    self.on_delivered(token)
                except Exception:
                    log.exception("on_delivered callback failed", broker=self.url)
            self._pump()
            if not self._inflight:
                self._changed.notify_all()

    @property
    def outstanding(self) -> int:
        """QoS>0 publishes not yet acknowledged by the broker (in flight + waiting)."""
        with self._lock:
            return self._inflight + len(self._pending)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every QoS>0 publish is acknowledged; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._inflight or self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.05))
        return True

    # -- subscribing -------------------------------------------------------------------
    def subscribe(self, pattern: str, handler: Handler, qos: int = 1, *,
                  ack: AckMode = "auto", wait: float | None = None) -> bool:
        """Call `handler(delivery)` for every message matching `pattern` (MQTT wildcards).

        Handlers run on the network thread, one message at a time, in arrival order; a
        handler registered on several matching patterns runs once per message.
        ack="manual" (needs manual_ack=True): messages stay unacknowledged until
        `ack(delivery)`. wait: block up to `wait` s until the broker acknowledged the
        subscription (on the current connection); returns False if it did not.
        """
        if ack == "manual" and not self.manual_ack:
            raise ValueError("ack='manual' needs a client made with manual_ack=True")
        with self._lock:
            old = self._subs.get(pattern)
            if old is None:
                self._subs[pattern] = _Sub(qos, [handler], ack)
                if "+" in pattern or "#" in pattern:
                    self._wildcards.add(pattern)
            else:
                old.qos, old.handlers = max(qos, old.qos), [*old.handlers, handler]
                old.ack = "manual" if "manual" in (ack, old.ack) else "auto"
            self._match_cache.clear()
            if self._connected.is_set():
                self._subacked.discard(pattern)
                self._send_subscribe([(pattern, self._subs[pattern].qos)])
        return True if wait is None else self.wait_subscribed(pattern, wait)

    def wait_subscribed(self, pattern: str, timeout: float) -> bool:
        """Block until the broker acknowledged `pattern` on the current connection."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while pattern not in self._subacked:
                left = deadline - time.monotonic()
                if left <= 0 or pattern not in self._subs:
                    return False
                self._changed.wait(left)
        return True

    def unsubscribe(self, pattern: str) -> None:
        """Drop every handler of `pattern` and unsubscribe from the broker."""
        with self._lock:
            self._subs.pop(pattern, None)
            self._wildcards.discard(pattern)
            self._subacked.discard(pattern)
            self._match_cache.clear()
            if self._connected.is_set():
                self._paho.unsubscribe(pattern)

    def ack(self, delivery: Delivery) -> None:
        """Acknowledge a received message (no-op for QoS 0, auto-acked or acked ones).

        The PUBACK goes out once every message received before it is acknowledged too.
        """
        if delivery.ticket is not None:
            self._acks.done(delivery.ticket)

    def _route(self, topic: str) -> tuple[list[Handler], bool]:
        """Handlers of `topic` (each once) and whether their owner acknowledges."""
        cached = self._match_cache.get(topic)
        if cached is None:
            with self._lock:
                exact = self._subs.get(topic)
                subs = [exact] if exact is not None else []
                subs += [self._subs[p] for p in self._wildcards if topic_matches(p, topic)]
                handlers = list(dict.fromkeys(h for s in subs for h in s.handlers))
                cached = handlers, any(s.ack == "manual" for s in subs)
                if len(self._match_cache) > 10_000:
                    self._match_cache.clear()
                self._match_cache[topic] = cached
        return cached

    def _delivery(self, topic: str, pm: Any) -> Delivery | None:
        raw = pm.payload
        if not self.decode_bodies:
            return Delivery(topic, None, "", peek_id(raw), 0.0, pm.qos, raw, bool(pm.retain),
                            pm.mid)
        try:
            env = decode(raw)
        except PayloadError as exc:
            self.stats["malformed"] += 1
            log.warning("malformed payload dropped", topic=topic, error=str(exc))
            return None
        return Delivery(topic, env.body, env.src, env.id, env.ts, pm.qos, env.raw,
                        bool(pm.retain), pm.mid)

    def _on_message(self, client: Any, userdata: Any, pm: Any) -> None:
        self.stats["received"] += 1
        ticket = self._acks.take(pm.mid) if self.manual_ack and pm.qos > 0 else None
        try:
            topic = pm.topic
        except UnicodeDecodeError:
            topic = None
        msg = self._delivery(topic, pm) if topic is not None else None
        if topic is None:
            self.stats["malformed"] += 1
            log.warning("message with a non-UTF-8 topic dropped")
        if msg is None or (self.dedup and msg.id and self._seen.check_and_add(msg.id)):
            if msg is not None:
                self.stats["duplicates_dropped"] += 1
            if ticket is not None:
                self._acks.done(ticket)  # nobody else will acknowledge it
            return
        msg.ticket = ticket
        handlers, manual = self._route(topic)
        if not handlers:
            # E.g. a persistent session's backlog arriving before the owner subscribed
            # again: subscribe before connecting to receive it.
            self.stats["unrouted"] += 1
            log.warning("message for no subscription dropped", topic=topic, broker=self.url)
        failed = False
        for handler in handlers:
            try:
                handler(msg)
            except Exception:
                failed = True
                self.stats["handler_errors"] += 1
                log.exception("message handler failed", topic=topic,
                              handler=getattr(handler, "__qualname__", repr(handler)))
        if ticket is not None and (failed or not handlers or not manual):
            # A message nobody will acknowledge would pin a slot of the broker's in-flight
            # window (and, acks being in order, every later ack) forever.
            self._acks.done(ticket)
