"""The one MQTT client of edgecloud: a thin, thread-safe wrapper over paho-mqtt 2.x.

This is the only module that imports paho; nothing paho-typed leaks out of it.

    with MqttClient("mqtt://127.0.0.1:1883", src="detector-0") as c:
        c.connect()
        c.subscribe("sites/+/frames/#", lambda m: print(m.topic, m.body))
        c.publish("sites/cloud/frames/1", {"w": 640})
        c.flush(5)

What it adds to paho:
- envelopes (`edgecloud.resource.codec`) on publish, decoding and duplicate suppression by
  envelope id on receive (bounded LRU);
- automatic reconnect with 0.1..5 s backoff and re-subscription of every pattern;
- several handlers per client, matched by MQTT wildcards; a failing handler or a malformed
  payload is logged and counted in `stats`, never fatal;
- its own in-flight window for QoS>0 publishes. paho's own window rescans its whole
  queue on every PUBACK (quadratic under load), so paho runs unlimited and this wrapper
  holds back what exceeds `max_inflight`;
- for the bridge: manual acknowledgement of received messages (`manual_ack=True`,
  `ack(message)`), a delivery callback (`on_delivered(token)`) fired when the broker
  acknowledges a publish, and `retransmit=False`: the owner, not paho, resends what was
  unacknowledged when a connection dropped (see `MqttClient.__init__`).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edgecloud.errors import UserError
from edgecloud.log import get_logger
from edgecloud.resource.codec import PayloadError, decode, encode

log = get_logger("mqtt")

Handler = Callable[["Message"], None]
DEDUP_CAPACITY = 100_000


@dataclass(slots=True)
class Message:
    """A received message. `body`, `id`, `src`, `ts` come from the envelope (id "" if none)."""

    topic: str
    body: Any
    src: str
    id: str
    ts: float
    qos: int
    raw: bytes
    retain: bool = False
    mid: int = 0  # MQTT packet id, needed by `MqttClient.ack` in manual-ack mode


class _Paho(paho.Client):
    """paho's Client with cheaper reads (the bridge's hot path).

    Stock paho reads each packet with 3-4 recv() calls (type byte, length bytes one by
    one, body) and handles one packet per select() when little is in flight. Here recv()
    fills a 64 KiB buffer that packets are sliced from, and `loop_read` reads until the
    socket and the buffer are both empty (so nothing can stay stranded in the buffer),
    writing queued output (e.g. PUBACKs) every `_WRITE_EVERY` packets meanwhile.
    """

    _WRITE_EVERY = 500

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = b""
        self._rbuf_sock: Any = None
        self._wake_pending = False
        self.after_connack: Callable[[], None] | None = None
        self.before_reconnect: Callable[[], None] | None = None

    def _handle_connack(self) -> MQTTErrorCode:
        # paho marks the connection up *before* on_connect and retransmits unacknowledged
        # messages only *after* it; the owner releases held publishes once that is done,
        # so nothing published during a reconnect overtakes an older message.
        rc = super()._handle_connack()
        if self.after_connack is not None:
            self.after_connack()
        return rc

    def reconnect(self) -> MQTTErrorCode:
        # Runs on every (re)connection attempt, before paho resets its in-flight messages
        # for retransmission and before the new CONNECT.
        if self.before_reconnect is not None:
            self.before_reconnect()
        return super().reconnect()

    def _packet_queue(self, command: int, packet: bytes | bytearray, mid: int, qos: int,
                      info: Any = None) -> MQTTErrorCode:
        # Stock paho writes a wake-up byte to its socketpair for EVERY queued packet; one
        # pending wake-up is enough, as loop_write drains the whole queue. The flag is
        # cleared at the start of loop_write, so a packet queued later wakes it again.
        self._out_packet.append({"command": command, "mid": mid, "qos": qos, "pos": 0,
                                 "to_process": len(packet), "packet": packet, "info": info})
        if self._sockpairW is not None and not self._wake_pending:
            self._wake_pending = True
            try:
                self._sockpairW.send(b"0")
            except BlockingIOError:
                pass
        if (self._thread is None and self._on_socket_register_write is None
                and self._in_callback_mutex.acquire(False)):
            self._in_callback_mutex.release()
            return self.loop_write()
        self._call_socket_register_write()
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def loop_write(self) -> MQTTErrorCode:
        self._wake_pending = False
        return super().loop_write()

    def _sock_recv(self, bufsize: int) -> bytes:
        sock = self._sock
        if sock is not self._rbuf_sock:  # a new connection: forget the old bytes
            self._rbuf, self._rbuf_sock = b"", sock
        if not self._rbuf:
            self._rbuf = super()._sock_recv(65536)  # raises BlockingIOError when empty
            if not self._rbuf:
                return b""  # peer closed
        out, self._rbuf = self._rbuf[:bufsize], self._rbuf[bufsize:]
        return out

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        count = 0
        while True:
            if self._sock is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            rc = self._packet_read()
            if rc > 0:
                return self._loop_rc_handle(rc)
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            count += 1
            if count % self._WRITE_EVERY == 0 and self.want_write():
                self.loop_write()


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


class MqttClient:
    """A connection to one MQTT 3.1.1 broker. See the module docstring."""

    def __init__(self, url: str, client_id: str | None = None, *, clean_session: bool = True,
                 src: str = "", keepalive: int = 30, max_inflight: int = 1000,
                 max_queued: int = 0, manual_ack: bool = False, dedup: bool = True,
                 on_delivered: Callable[[Any], None] | None = None, retransmit: bool = True,
                 on_reconnect: Callable[[], None] | None = None) -> None:
        """Create a client (not yet connected; call `connect`).

        clean_session=False needs a stable `client_id`: the broker then keeps the
        subscriptions and queues QoS>0 messages while the client is away.
        max_inflight: unacknowledged QoS>0 publishes on the wire; the rest wait in memory.
        max_queued: cap on waiting publishes (0 = unlimited); beyond it publish returns False.
        manual_ack: received QoS>0 messages are acknowledged only by `ack(message)`.
        dedup: drop received messages whose envelope id was seen recently.
        on_delivered: called with the `token` of a publish when the broker acknowledged it
            (QoS>0), from the network thread; keep it short.
        retransmit: True (default): QoS>0 publishes unacknowledged when the connection drops
            are sent again (DUP) after the reconnect, before anything newer. False: the owner
            resends, and nothing older than the new connection can overtake its resends:
            when the connection drops, every unacknowledged publish (in flight or waiting)
            is forgotten (never sent again, `on_delivered` never fires for it) and later
            publishes are dropped (`publish_raw` returns False, counted in
            stats["dropped_offline"]) until the owner calls `resume()`; so are publishes
            before the first connection. `on_reconnect()` is called (network thread; keep
            it short) once each connection is up; the owner then calls `resume()` and
            publishes again, oldest first, what it still needs.
        """
        if not clean_session and not client_id:
            raise ValueError("clean_session=False needs a stable client_id")
        self.url = url
        self.host, self.port = parse_url(url)
        self.client_id = client_id or f"ec-{src or 'client'}-{uuid.uuid4().hex[:10]}"
        self.src = src
        self.keepalive = keepalive
        self.max_inflight = max(1, max_inflight)
        self.max_queued = max_queued
        self.manual_ack = manual_ack
        self.dedup = dedup
        self.on_delivered = on_delivered
        self.retransmit = retransmit
        self.on_reconnect = on_reconnect
        self.stats: dict[str, int] = {
            "received": 0, "published": 0, "malformed": 0, "handler_errors": 0,
            "duplicates_dropped": 0, "queue_full": 0, "reconnects": 0, "forgotten": 0,
            "dropped_offline": 0,
        }
        self._paho = _Paho(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                 clean_session=clean_session, protocol=paho.MQTTv311,
                                 manual_ack=manual_ack)
        self._paho.max_inflight_messages_set(0)  # our own window, see module docstring
        self._paho.max_queued_messages_set(0)
        self._paho.reconnect_delay_set(min_delay=0.1, max_delay=5)  # type: ignore[arg-type]
        self._paho.on_connect = self._on_connect
        self._paho.after_connack = self._after_connack
        self._paho.before_reconnect = self._before_reconnect
        self._paho.on_disconnect = self._on_disconnect
        self._paho.on_message = self._on_message
        self._paho.on_publish = self._on_publish
        # paho calls on_publish while holding its out-message lock; publishing takes the same
        # lock. Using that one re-entrant lock for our window state keeps a single lock order
        # (no deadlock) and lets on_publish find the token of a mid published a moment ago.
        self._lock: threading.RLock = self._paho._out_message_mutex  # noqa: SLF001
        self._tokens: dict[int, Any] = {}
        self._pending: deque[tuple[str, bytes, int, bool, Any]] = deque()
        self._inflight = 0
        self._hold = False  # set while reconnecting: new publishes wait in _pending
        # retransmit=False: set when a connection drops, cleared by resume(); while set,
        # publishes are dropped. _up: a CONNACK was handled and no drop seen since.
        self._blocked = not retransmit  # until resume() after the first on_reconnect
        self._up = False
        self._subs: dict[str, tuple[int, list[Handler]]] = {}
        self._match_cache: dict[str, list[Handler]] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._connected = threading.Event()
        self._ever_connected = False
        self._started = False
        self._closing = False
        self._last_error = ""

    # -- connection --------------------------------------------------------------------
    def connect(self, timeout: float = 10.0) -> MqttClient:
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

    def start(self) -> MqttClient:
        """Start connecting in the background and return at once; retries forever.

        Publishes made before the connection is up wait in memory and go out after it.
        """
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

    def __enter__(self) -> MqttClient:
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
        with self._lock:
            subs = [(p, q) for p, (q, _) in self._subs.items()]
        if subs:
            # Always re-subscribe: a broker restart (or amqtt, which keeps sessions in
            # memory only) may have forgotten the session even if we asked to keep it.
            self._paho.subscribe(subs)
        self._connected.set()

    def _after_connack(self) -> None:
        # paho has handled a CONNACK: it sent on_connect, then its retransmissions.
        if self.retransmit:
            with self._lock:
                self._hold = False
                while self._pending and self._inflight < self.max_inflight:
                    self._send(*self._pending.popleft())
            return
        with self._lock:
            self._up = self._connected.is_set()
        if self._up and self.on_reconnect is not None:
            try:
                self.on_reconnect()
            except Exception:
                log.exception("on_reconnect callback failed", broker=self.url)

    def _forget_unacked(self) -> None:
        """retransmit=False, connection gone: drop every unacknowledged publish, block new
        ones until resume(). Also clears paho's copies so it cannot retransmit them."""
        with self._lock:
            self._blocked = True
            self._up = False
            p = self._paho
            forgotten = len(self._tokens) + len(self._pending)
            p._out_messages.clear()  # noqa: SLF001
            p._inflight_messages = 0  # noqa: SLF001
            self._tokens.clear()
            self._pending.clear()
            self._inflight = 0
            self.stats["forgotten"] += forgotten

    def _before_reconnect(self) -> None:
        if not self.retransmit:
            self._forget_unacked()

    def resume(self) -> bool:
        """retransmit=False: accept publishes again after `on_reconnect`.

        Returns False (and stays blocked) if the connection dropped again meanwhile; another
        `on_reconnect` follows the next connection.
        """
        with self._lock:
            if self._up:
                self._blocked = False
            return not self._blocked

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        if not self.retransmit:
            self._forget_unacked()
        with self._lock:
            self._hold = self._ever_connected and self.retransmit
        self._connected.clear()
        self._last_error = str(reason)
        if not self._closing:
            log.warning("connection lost, reconnecting", broker=self.url, client=self.client_id,
                        reason=str(reason))

    # -- publishing --------------------------------------------------------------------
    def publish(self, topic: str, body: Any, qos: int = 1, retain: bool = False) -> bool:
        """Publish `body` in an envelope. Returns False only if the queue is full."""
        return self.publish_raw(topic, encode(body, src=self.src), qos, retain)

    def publish_raw(self, topic: str, data: bytes, qos: int = 1, retain: bool = False,
                    token: Any = None) -> bool:
        """Publish bytes as they are. `token` is passed to `on_delivered` once acknowledged.

        Thread-safe. Never blocks: beyond `max_inflight` the message waits in memory and
        goes out as acknowledgements come back (and after a reconnect).
        """
        if qos == 0:
            self._paho.publish(topic, data, 0, retain)
            self.stats["published"] += 1
            return True
        with self._lock:
            if self._blocked:
                self.stats["dropped_offline"] += 1
                return False
            if self._inflight < self.max_inflight and not self._pending and not self._hold:
                self._send(topic, data, qos, retain, token)
            else:
                if self.max_queued and len(self._pending) >= self.max_queued:
                    self.stats["queue_full"] += 1
                    return False
                self._pending.append((topic, data, qos, retain, token))
            self.stats["published"] += 1
        return True

    def _send(self, topic: str, data: bytes, qos: int, retain: bool, token: Any) -> None:
        # Caller holds self._lock.
        info = self._paho.publish(topic, data, qos, retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            # paho keeps NO_CONN messages and sends them after the reconnect; anything else
            # would be a bug in our arguments.
            raise ValueError(f"publish to {topic!r} failed: {paho.error_string(info.rc)}")
        self._tokens[info.mid] = token
        self._inflight += 1

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
            while self._pending and self._inflight < self.max_inflight and not self._hold:
                self._send(*self._pending.popleft())

    @property
    def accepting(self) -> bool:
        """False while publishes are dropped (retransmit=False, between a drop and resume)."""
        return not self._blocked

    @property
    def outstanding(self) -> int:
        """QoS>0 publishes not yet acknowledged by the broker (in flight + waiting)."""
        with self._lock:
            return self._inflight + len(self._pending)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every QoS>0 publish is acknowledged; False on timeout."""
        deadline = time.monotonic() + timeout
        while self.outstanding:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    # -- subscribing -------------------------------------------------------------------
    def subscribe(self, pattern: str, handler: Handler, qos: int = 1) -> None:
        """Call `handler(message)` for every message matching `pattern` (MQTT wildcards).

        Handlers run on the network thread, one message at a time, in arrival order.
        """
        with self._lock:
            old = self._subs.get(pattern)
            handlers = (old[1] if old else []) + [handler]
            self._subs[pattern] = (max(qos, old[0]) if old else qos, handlers)
            self._match_cache.clear()
        if self._connected.is_set():
            self._paho.subscribe(pattern, qos)

    def unsubscribe(self, pattern: str) -> None:
        """Drop every handler of `pattern` and unsubscribe from the broker."""
        with self._lock:
            self._subs.pop(pattern, None)
            self._match_cache.clear()
        if self._connected.is_set():
            self._paho.unsubscribe(pattern)

    def ack(self, message: Message) -> None:
        """Acknowledge a received message (manual-ack mode; no-op for QoS 0 or otherwise)."""
        if self.manual_ack and message.qos > 0:
            self._paho.ack(message.mid, message.qos)

    def _handlers_for(self, topic: str) -> list[Handler]:
        handlers = self._match_cache.get(topic)
        if handlers is None:
            with self._lock:
                handlers = [h for p, (_, hs) in self._subs.items()
                            if paho.topic_matches_sub(p, topic) for h in hs]
                if len(self._match_cache) > 10_000:
                    self._match_cache.clear()
                self._match_cache[topic] = handlers
        return handlers

    def _is_duplicate(self, msg_id: str) -> bool:
        seen = self._seen
        if msg_id in seen:
            seen.move_to_end(msg_id)
            return True
        seen[msg_id] = None
        if len(seen) > DEDUP_CAPACITY:
            seen.popitem(last=False)
        return False

    def _on_message(self, client: Any, userdata: Any, pm: paho.MQTTMessage) -> None:
        self.stats["received"] += 1
        try:
            topic = pm.topic
        except UnicodeDecodeError:
            topic = None
        msg = None
        if topic is not None:
            try:
                env = decode(pm.payload)
                msg = Message(topic, env.body, env.src, env.id, env.ts, pm.qos, env.raw,
                              bool(pm.retain), pm.mid)
            except PayloadError as exc:
                self.stats["malformed"] += 1
                log.warning("malformed payload dropped", topic=topic, error=str(exc))
        else:
            self.stats["malformed"] += 1
            log.warning("message with a non-UTF-8 topic dropped")
        if msg is None or (self.dedup and msg.id and self._is_duplicate(msg.id)):
            if msg is not None:
                self.stats["duplicates_dropped"] += 1
            if self.manual_ack and pm.qos > 0:
                self._paho.ack(pm.mid, pm.qos)  # nobody else will acknowledge it
            return
        handlers = self._handlers_for(topic)  # type: ignore[arg-type]
        failed = False
        for handler in handlers:
            try:
                handler(msg)
            except Exception:
                failed = True
                self.stats["handler_errors"] += 1
                log.exception("message handler failed", topic=topic,
                              handler=getattr(handler, "__qualname__", repr(handler)))
        if self.manual_ack and pm.qos > 0 and (failed or not handlers):
            # A message nobody will acknowledge would pin a slot of the broker's in-flight
            # window forever; acknowledge it (it was logged above).
            self._paho.ack(pm.mid, pm.qos)
