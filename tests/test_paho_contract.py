"""The contract between edgecloud's transport (`resource/_paho.py`) and paho's internals.

`PahoTransport` overrides and touches private members of paho-mqtt's Client. This test
fails loudly when a paho upgrade changes any of them: the pinned version, every member
named in `_paho.PRIVATE_METHODS` / `PRIVATE_ATTRIBUTES`, and the behaviour relied on (hook
order around a CONNACK, the buffered read path across packets larger than its buffer,
forgetting unacknowledged publishes).
"""

from __future__ import annotations

import re
import threading
from collections import deque
from importlib.metadata import version
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from edgecloud.resource import _paho
from edgecloud.resource.mqtt import MqttClient, OwnerResendClient
from edgecloud.service import Endpoint
from tests.conftest import BrokerProc
from tests.support import collector, eventually

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[1]


def test_paho_version_is_the_pinned_one() -> None:
    pin = re.search(r'"paho-mqtt==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    assert pin is not None, "pyproject.toml must pin paho-mqtt exactly (==)"
    assert pin.group(1) == _paho.PAHO_VERSION == version("paho-mqtt"), (
        "paho-mqtt changed: re-read edgecloud/resource/_paho.py against the new release, "
        "then update PAHO_VERSION and the pin together")


def test_private_members_still_exist() -> None:
    for name in _paho.PRIVATE_METHODS:
        assert callable(getattr(paho.Client, name, None)), f"paho.Client.{name} is gone"
    transport = _paho.PahoTransport("contract", True, False)
    for name in _paho.PRIVATE_ATTRIBUTES:
        assert hasattr(transport, name), f"paho.Client has no attribute {name} any more"
    assert isinstance(transport.out_lock, type(threading.RLock()))
    assert isinstance(transport._out_packet, deque)  # noqa: SLF001
    assert isinstance(transport._out_messages, dict)  # noqa: SLF001


@pytest.fixture(scope="module")
def broker(amqtt_broker: BrokerProc) -> Endpoint:
    return amqtt_broker.endpoint


def test_hooks_run_in_the_order_relied_on(broker: Endpoint) -> None:
    events: list[str] = []
    t = _paho.PahoTransport("contract-hooks", True, False)
    t.on_connect = lambda *a: events.append("on_connect")
    t.after_connack = lambda: events.append("after_connack")
    t.before_reconnect = lambda: events.append("before_reconnect")
    t.connect_async(broker.host, broker.port, keepalive=30)
    t.loop_start()
    try:
        assert eventually(lambda: "after_connack" in events, 10)
        assert events[:3] == ["before_reconnect", "on_connect", "after_connack"]
        assert t.network_thread is not None and t.network_thread.is_alive()
    finally:
        t.disconnect()
        t.loop_stop()


def test_buffered_reads_across_packets_of_every_size(broker: Endpoint) -> None:
    sub = MqttClient(broker.url("mqtt")).connect()
    pub = MqttClient(broker.url("mqtt")).connect()
    got, h = collector()
    try:
        sub.subscribe("contract/#", h, wait=10)
        sizes = [0, 1, 127, 128, 16_383, 16_384, 65_535, 65_536, 70_000, 200_000] * 20
        for i, n in enumerate(sizes):
            pub.publish_raw(f"contract/{i % 3}", bytes([i % 251]) * n)
        assert pub.flush(20)
        assert eventually(lambda: len(got) == len(sizes), 20)
        assert sorted((len(m.raw), m.raw[:1]) for m in got) == sorted(
            (n, bytes([i % 251])[:n]) for i, n in enumerate(sizes))
    finally:
        sub.close()
        pub.close()


def test_forgotten_publishes_are_not_retransmitted(broker: Endpoint) -> None:
    reconnects: list[int] = []
    pub = OwnerResendClient(broker.url("mqtt"), "contract-owner",
                            on_reconnect=lambda: reconnects.append(1))
    try:
        pub.start()
        assert eventually(lambda: bool(reconnects), 10) and pub.resume()
        with pub._lock:  # noqa: SLF001 - what _forget_unacked relies on
            pub._paho.publish("contract/forget", b"x", 1)  # noqa: SLF001
            assert pub._paho._out_messages  # noqa: SLF001
            pub._paho.forget_outgoing()  # noqa: SLF001
            assert not pub._paho._out_messages and pub._paho._inflight_messages == 0  # noqa: SLF001
    finally:
        pub.close(flush_timeout=0)
