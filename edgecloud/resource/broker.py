"""The per-site MQTT broker service: amqtt in-process, or Mosquitto as a child process.

`python -m edgecloud.resource.broker CONFIG.json` (a `BrokerConfig`). Every site of an
embedded run has one; components publish and subscribe on their site's broker only.

amqtt (default, pure Python, MQTT 3.1.1): sessions live in memory. Anonymous clients are
accepted by our own auth plugin, which, unlike amqtt's AnonymousAuthPlugin, does not mark
them anonymous: amqtt forgets the session of an anonymous client on disconnect, and the
bridge relies on persistent sessions (clean_session=False) to get the messages published
while it was away. A restart of an amqtt broker loses its sessions and queued messages.

Mosquitto (`kind: mosquitto`): faster, and persistent across restarts (sessions and queued
QoS>0 messages are saved to data_dir every `AUTOSAVE_S` seconds and at a clean stop).
"""

from __future__ import annotations

import asyncio
import contextvars
import getpass
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from edgecloud.errors import UserError
from edgecloud.log import get_logger
from edgecloud.procutil import die_with_parent, port_in_use
from edgecloud.service import Endpoint, run_service, stop_event_on_signals

log = get_logger("broker")

AUTOSAVE_S = 2
# The bridge acknowledges in batches after committing to its outbox; a small broker
# in-flight window (Mosquitto's default is 20) would throttle it to one batch per round trip.
MAX_INFLIGHT = 1000
# Mosquitto's default (1000) silently drops messages for a slow or absent subscriber.
MAX_QUEUED = 1_000_000


class BrokerConfig(BaseModel):
    """Configuration of one site's broker service."""

    site: str
    listen: Endpoint
    data_dir: Path
    kind: Literal["amqtt", "mosquitto"] = "amqtt"


def serve(config: BrokerConfig) -> None:
    """Run the broker until SIGTERM/SIGINT; exit with code 1 and a clear message on failure."""
    try:
        if config.kind == "mosquitto":
            _serve_mosquitto(config)
        else:
            _serve_amqtt(config)
    except UserError as exc:
        log.error(str(exc), site=config.site)
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None


def _check_port(config: BrokerConfig) -> None:
    host, port = config.listen.host, config.listen.port
    if port_in_use(host, port):
        raise UserError(f"broker of site {config.site!r}: port {host}:{port} is already in use; "
                        "stop what listens there or choose another port", exit_code=1)


# -- amqtt ---------------------------------------------------------------------------------
try:
    from amqtt.plugins.base import BaseAuthPlugin as _BaseAuthPlugin
except ImportError:  # pragma: no cover - amqtt is a dependency
    _BaseAuthPlugin = object


# amqtt ships no type information, so its base class is Any to mypy.
class OpenAuthPlugin(_BaseAuthPlugin):  # type: ignore[misc]
    """Accept every client without marking its session anonymous (see module docstring)."""

    async def authenticate(self, *, session: object) -> bool:
        return True


def patch_amqtt_qos1_redelivery() -> None:
    """Make amqtt keep an unacknowledged outgoing QoS 1 message for redelivery.

    amqtt 0.12 drops an outgoing QoS 1 message from the session when the subscriber
    disconnects before its PUBACK (the waiter is cancelled) or does not PUBACK within 5 s,
    so a subscriber killed mid-stream loses what was in flight to it, even with a
    persistent session. MQTT 3.1.1 (4.4) wants it resent on reconnect: here the message
    leaves the session's in-flight set only once acknowledged; amqtt's reconnect path
    (`_retry_deliveries`) then resends it with DUP set.
    """
    from amqtt.mqtt.protocol.handler import ProtocolHandler
    from amqtt.session import OUTGOING

    original = ProtocolHandler._handle_qos1_message_flow
    if getattr(original, "_edgecloud_patched", False):
        return

    async def qos1_flow(self: Any, app_message: Any) -> None:
        if app_message.direction != OUTGOING or app_message.puback_packet or self.session is None:
            await original(self, app_message)
            return
        pid = app_message.packet_id
        self.session.inflight_out[pid] = app_message  # before sending: a dead socket raises
        dup = app_message.publish_packet is not None
        packet = app_message.build_publish_packet(dup=dup)
        await self._send_packet(packet)
        app_message.publish_packet = packet
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._puback_waiters[pid] = waiter
        try:
            # No timeout: a live client acknowledges; a dead connection cancels the waiter.
            app_message.puback_packet = await waiter
        finally:
            if self._puback_waiters.get(pid) is waiter:
                del self._puback_waiters[pid]
        self.session.inflight_out.pop(pid, None)

    # Marks the patch on the function itself (functions take attributes; mypy does not know).
    qos1_flow._edgecloud_patched = True  # type: ignore[attr-defined]
    ProtocolHandler._handle_qos1_message_flow = qos1_flow


_BACKLOG = contextvars.ContextVar("edgecloud_amqtt_backlog", default=False)


def patch_amqtt_reconnect_order() -> None:
    """Make amqtt deliver a persistent session's backlog before live messages, in order.

    amqtt 0.12 marks a reconnecting session connected before it resends the in-flight
    messages and the messages queued while it was away, so messages published meanwhile
    overtake the backlog (order per topic broken). It also sends the queued messages with
    the RETAIN flag set, which a bridge would then make retained on the other broker.
    Here live publishes to a reconnecting persistent session wait behind a gate that
    opens once the backlog has been handed to the connection, and queued messages go out
    with RETAIN=0.
    """
    from amqtt.broker import Broker
    from amqtt.mqtt.protocol.handler import ProtocolHandler

    if getattr(Broker._publish_session_retained_messages, "_edgecloud_patched", False):
        return
    original_init = Broker._initialize_client_session
    original_publish = ProtocolHandler.mqtt_publish

    async def init_session(self: Any, *args: Any, **kwargs: Any) -> Any:
        handler, session = await original_init(self, *args, **kwargs)
        old = getattr(session, "_ec_gate", None)
        if old is not None:
            old.set()  # release publishes still waiting from a previous connection
        session._ec_gate = None if session.clean_session else asyncio.Event()
        return handler, session

    async def gated_publish(self: Any, topic: str, data: Any, qos: Any, retain: bool,
                            ack_timeout: Any = None) -> Any:
        gate = getattr(self.session, "_ec_gate", None)
        if gate is not None and not gate.is_set() and not _BACKLOG.get():
            await gate.wait()
        return await original_publish(self, topic, data, qos, retain, ack_timeout)

    async def publish_backlog(self: Any, session: Any) -> None:
        tasks = []
        token = _BACKLOG.set(True)  # copied into the tasks created below: they pass the gate
        try:
            handler = self._get_handler(session)
            if handler:
                while not session.retained_messages.empty():
                    queued = session.retained_messages.get_nowait()
                    tasks.append(asyncio.ensure_future(
                        handler.mqtt_publish(queued.topic, queued.data, queued.qos, False)))
        finally:
            _BACKLOG.reset(token)
            gate = getattr(session, "_ec_gate", None)
            if gate is not None:
                gate.set()
        if tasks:
            await asyncio.wait(tasks)

    # Marks the patch on the function itself (see patch_amqtt_qos1_redelivery).
    publish_backlog._edgecloud_patched = True  # type: ignore[attr-defined]
    Broker._initialize_client_session = init_session
    ProtocolHandler.mqtt_publish = gated_publish
    Broker._publish_session_retained_messages = publish_backlog


def amqtt_config(config: BrokerConfig) -> dict[str, object]:
    """The amqtt broker configuration for a site: one TCP listener, no $SYS, open auth."""
    return {
        "listeners": {"default": {"type": "tcp",
                                  "bind": f"{config.listen.host}:{config.listen.port}"}},
        "timeout_disconnect_delay": 0,
        # Only our auth plugin: the packet/event logger plugins cost time per message, and
        # $SYS publishing is not needed.
        "plugins": {"edgecloud.resource.broker.OpenAuthPlugin": {}},
    }


def _serve_amqtt(config: BrokerConfig) -> None:
    _check_port(config)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    # amqtt logs every connection and packet at INFO; keep the service log readable.
    logging.getLogger("amqtt").setLevel(logging.WARNING)
    logging.getLogger("transitions").setLevel(logging.WARNING)
    asyncio.run(_amqtt_main(config))


async def _amqtt_main(config: BrokerConfig) -> None:
    from amqtt.broker import Broker
    from amqtt.errors import BrokerError

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    patch_amqtt_qos1_redelivery()
    patch_amqtt_reconnect_order()
    broker = Broker(amqtt_config(config))
    try:
        await broker.start()
    except BrokerError as exc:
        raise UserError(f"broker of site {config.site!r} cannot listen on "
                        f"{config.listen.host}:{config.listen.port}: {exc.__cause__ or exc}",
                        exit_code=1) from None
    log.info("broker started", site=config.site, kind="amqtt", listen=config.listen.url("mqtt"))
    await stop.wait()
    log.info("broker stopping", site=config.site)
    try:
        await asyncio.wait_for(broker.shutdown(), 10)
    except (TimeoutError, Exception) as exc:  # a slow shutdown must not keep the process
        log.warning("broker shutdown incomplete", site=config.site, error=repr(exc))
    log.info("broker stopped", site=config.site)


# -- mosquitto -----------------------------------------------------------------------------
def mosquitto_path() -> str | None:
    """Path of the mosquitto binary ($PATH, then /usr/sbin), or None if not installed."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def mosquitto_conf(config: BrokerConfig) -> str:
    """The mosquitto.conf text for a site's broker (listener, persistence, queue limits)."""
    data = config.data_dir.resolve()
    lines = [
        f"# written by edgecloud for site {config.site}; regenerated at every start",
        f"listener {config.listen.port} {config.listen.host}",
        "allow_anonymous true",
        "persistence true",
        f"persistence_location {data}/",
        "persistence_file mosquitto.db",
        f"autosave_interval {AUTOSAVE_S}",
        f"max_queued_messages {MAX_QUEUED}",
        "max_queued_bytes 0",
        f"max_inflight_messages {MAX_INFLIGHT}",
        "log_dest stdout",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
    ]
    if os.geteuid() == 0:
        # Started as root, mosquitto switches to user `mosquitto`, which cannot write our
        # data_dir; keep the current user.
        lines.append(f"user {getpass.getuser()}")
    return "\n".join(lines) + "\n"


def _serve_mosquitto(config: BrokerConfig) -> None:
    binary = mosquitto_path()
    if binary is None:
        raise UserError("broker kind 'mosquitto' needs the mosquitto binary, which is not "
                        "installed (e.g. `apt-get install mosquitto`); or use kind 'amqtt'",
                        exit_code=1)
    _check_port(config)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    conf = config.data_dir / "mosquitto.conf"
    conf.write_text(mosquitto_conf(config))
    stop = stop_event_on_signals()
    # Same process group as this service: a supervisor killing our group kills mosquitto too.
    # And it dies with us (SIGTERM: it saves its sessions), so a killed wrapper leaves no
    # orphan holding the port that the restarted wrapper needs.
    proc = subprocess.Popen([binary, "-c", str(conf)], stdin=subprocess.DEVNULL,
                            preexec_fn=die_with_parent(signal.SIGTERM))  # noqa: PLW1509
    log.info("broker started", site=config.site, kind="mosquitto", pid=proc.pid,
             listen=config.listen.url("mqtt"), conf=str(conf))
    while not stop.wait(0.2):
        if proc.poll() is not None:
            raise UserError(f"mosquitto of site {config.site!r} exited with code "
                            f"{proc.returncode} (see the lines above in this log)", exit_code=1)
    log.info("broker stopping", site=config.site)
    proc.send_signal(signal.SIGTERM)  # mosquitto saves its persistence file on SIGTERM
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.info("broker stopped", site=config.site, code=proc.returncode)


if __name__ == "__main__":
    run_service(BrokerConfig, serve)
