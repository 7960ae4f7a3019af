"""The private transport under `edgecloud.resource.mqtt`: paho-mqtt's Client, tuned.

The only module that subclasses paho or touches its private members. Those are not an
API: paho is pinned exactly in pyproject.toml (`PAHO_VERSION`), and
tests/test_paho_contract.py fails loudly when an upgrade renames or drops any member
listed in `PRIVATE_METHODS` / `PRIVATE_ATTRIBUTES` or changes the behaviour relied on.
Upgrading paho means: bump the pin, run that test, re-read the overrides below.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from edgecloud.log import get_logger

log = get_logger("mqtt")

PAHO_VERSION = "2.2.0"
"""The paho-mqtt release these overrides were written and tested against."""

PRIVATE_METHODS = ("_handle_connack", "_packet_queue", "_sock_recv", "_packet_read",
                   "_loop_rc_handle", "_call_socket_register_write")
"""paho's private methods that `PahoTransport` overrides or calls."""

PRIVATE_ATTRIBUTES = ("_out_message_mutex", "_out_messages", "_inflight_messages",
                      "_out_packet", "_sockpairW", "_thread", "_on_socket_register_write",
                      "_in_callback_mutex", "_sock")
"""paho's private attributes that `PahoTransport` or `mqtt.py` read or write."""

if version("paho-mqtt") != PAHO_VERSION:  # pragma: no cover - a deployment problem
    log.warning("untested paho-mqtt version", installed=version("paho-mqtt"),
                tested=PAHO_VERSION, see="tests/test_paho_contract.py")

__all__ = ["CallbackAPIVersion", "MQTTErrorCode", "PahoTransport", "error_string",
           "topic_matches"]

topic_matches: Callable[[str, str], bool] = paho.topic_matches_sub
"""`topic_matches(pattern, topic)`: MQTT wildcard matching."""
error_string: Callable[[int], str] = paho.error_string


class PahoTransport(paho.Client):
    """paho's Client with cheaper reads (the bridge's hot path) and two lifecycle hooks.

    Stock paho reads each packet with 3-4 recv() calls (type byte, length bytes one by
    one, body) and handles one packet per select() when little is in flight. Here recv()
    fills a 64 KiB buffer that packets are sliced from, and `loop_read` reads until the
    socket and the buffer are both empty (so nothing can stay stranded in the buffer),
    writing queued output (e.g. PUBACKs) every `_WRITE_EVERY` packets meanwhile.

    Hooks: `after_connack()` runs once paho handled a CONNACK (after `on_connect` and after
    its own retransmissions); `before_reconnect()` runs before every (re)connection
    attempt, before paho resets its in-flight messages for retransmission.
    """

    _WRITE_EVERY = 500

    def __init__(self, client_id: str, clean_session: bool, manual_ack: bool) -> None:
        super().__init__(CallbackAPIVersion.VERSION2, client_id=client_id,
                         clean_session=clean_session, protocol=paho.MQTTv311,
                         manual_ack=manual_ack)
        self._rbuf = b""
        self._rbuf_sock: Any = None
        self._wake_pending = False
        self.after_connack: Callable[[], None] | None = None
        self.before_reconnect: Callable[[], None] | None = None

    @property
    def out_lock(self) -> threading.RLock:
        """paho's out-message lock: on_publish runs under it, publishing takes it."""
        return self._out_message_mutex

    @property
    def network_thread(self) -> threading.Thread | None:
        """The thread of `loop_start` (callbacks run on it)."""
        return self._thread

    def forget_outgoing(self) -> None:
        """Drop every unacknowledged QoS>0 publish so paho never retransmits them.

        Caller holds `out_lock`."""
        self._out_messages.clear()
        self._inflight_messages = 0

    def _handle_connack(self) -> MQTTErrorCode:
        # paho marks the connection up *before* on_connect and retransmits unacknowledged
        # messages only *after* it; the owner releases held publishes once that is done,
        # so nothing published during a reconnect overtakes an older message.
        rc = super()._handle_connack()
        if self.after_connack is not None:
            self.after_connack()
        return rc

    def reconnect(self) -> MQTTErrorCode:
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


class AckSequencer:
    """Sends PUBACKs in the order the PUBLISHes were received (MQTT 3.1.1, 4.6.0-2).

    Every received QoS 1 message takes a ticket at receipt (network thread); `done(ticket)`
    (any thread) marks it handled, and the acknowledgements of the oldest contiguous run
    of handled tickets go out. A connection drop voids every open ticket: the broker
    redelivers those messages on the new connection, so acknowledging them on it would
    be meaningless (and could acknowledge a different message with a reused packet id).
    """

    def __init__(self, transport: PahoTransport) -> None:
        self._transport = transport
        self._lock = threading.Lock()
        self._epoch = 0
        self._next = 0          # ticket of the next received message
        self._head = 0          # oldest ticket not yet acknowledged
        self._open: dict[int, tuple[int, bool]] = {}  # ticket -> (mid, done)

    def take(self, mid: int) -> tuple[int, int]:
        """A ticket `(epoch, n)` for a message just received with packet id `mid`."""
        with self._lock:
            n = self._next
            self._next += 1
            self._open[n] = (mid, False)
            return self._epoch, n

    def done(self, ticket: tuple[int, int]) -> None:
        """The message of `ticket` is handled: acknowledge it once every older one is."""
        epoch, n = ticket
        with self._lock:
            if epoch != self._epoch or n not in self._open:
                return  # from a dropped connection (redelivered), or acknowledged already
            self._open[n] = (self._open[n][0], True)
            while self._head in self._open and self._open[self._head][1]:
                mid, _ = self._open.pop(self._head)
                self._head += 1
                self._transport.ack(mid, 1)

    def reset(self) -> None:
        """The connection dropped: void every open ticket."""
        with self._lock:
            self._epoch += 1
            self._open.clear()
            self._head = self._next
