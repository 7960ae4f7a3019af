"""Codec and MqttClient against real brokers (amqtt and Mosquitto as subprocesses)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
import pytest

from edgecloud.errors import UserError
from edgecloud.procutil import free_port, spawn_service
from edgecloud.resource.codec import (
    PayloadError,
    RecentIds,
    decode,
    encode,
    encode_json,
    peek_id,
)
from edgecloud.resource.mqtt import Delivery, MqttClient, OwnerResendClient
from tests.conftest import BROKER_KINDS, BrokerProc
from tests.support import collector, eventually, settles

pytestmark = pytest.mark.timeout(60)


# -- codec ---------------------------------------------------------------------------------
@pytest.mark.parametrize("body", [
    {"a": 1, "b": [1.5, "x", None, True]},
    b"\x00\xffraw bytes",
    {"nested": {"deep": [{"k": b"v"}, [1, [2, [3]]]]}, "n": -(2**40)},
    "text", 42, None, [],
])
def test_codec_round_trip(body: object) -> None:
    data = encode(body, src="cam-1")
    env = decode(data)
    assert env.body == body
    assert env.src == "cam-1" and env.id and env.ts > 0 and env.raw == data


def test_codec_ids_unique_and_explicit() -> None:
    assert decode(encode(1)).id != decode(encode(1)).id
    assert decode(encode(1, msg_id="fixed")).id == "fixed"


def test_codec_foreign_payloads() -> None:
    env = decode(b'{"temp": 21.5, "unit": "C"}')
    assert env.id == "" and env.body == {"temp": 21.5, "unit": "C"}
    assert decode(encode_json([1, 2])).body == [1, 2]
    assert decode(b"\x00\x01binary").body == b"\x00\x01binary"
    assert decode(b"").body == b""
    # a msgpack map that is not an envelope: raw bytes, not an error
    other = msgpack.packb({"x": 1})
    assert decode(other).body == other


@pytest.mark.parametrize("garbage", [
    encode({"a": "b" * 50})[:-5],                    # truncated envelope
    encode({"a": 1}) + b"trailing",                   # extra data after an envelope
    msgpack.packb({"_ec": 1, "id": 7, "body": 1}),   # id of the wrong type
    msgpack.packb({"_ec": 99, "id": "x"}),           # unknown version
])
def test_codec_malformed_raises(garbage: bytes) -> None:
    with pytest.raises(PayloadError, match="envelope"):
        decode(garbage)


def test_peek_id_reads_the_id_without_unpacking_the_body() -> None:
    env = encode({"big": b"x" * 100_000}, msg_id="abc-1")
    assert peek_id(env) == "abc-1"
    # A body that is not valid msgpack at all (0xc1 is never used) still yields the id:
    # the body is never unpacked. decode(), which does unpack it, fails on it.
    broken = env[:len(env) - 100_005] + b"\xc1" * 40
    assert peek_id(broken) == "abc-1"
    with pytest.raises(PayloadError):
        decode(broken)
    # Any key order (other envelope writers), the id before the magic key included.
    assert peek_id(msgpack.packb({"body": [1, 2], "id": "k", "_ec": 1})) == "k"
    assert peek_id(msgpack.packb({"id": "k", "body": b"\xc1", "_ec": 1})) == "k"
    # Not an envelope: no id.
    for other in (msgpack.packb({"id": "k"}), msgpack.packb({"_ec": 2, "id": "k"}),
                  msgpack.packb({"_ec": 1, "id": 7}), b'{"id": "k"}', b"", b"\x85\xa3_e",
                  encode(1)[:6]):
        assert peek_id(other) == ""


def test_recent_ids_is_a_bounded_lru() -> None:
    ids = RecentIds(3, ["a", "b"])
    assert ids.check_and_add("a")          # seen; now the most recent
    assert not ids.check_and_add("c")
    assert not ids.check_and_add("d")      # evicts the least recent: "b"
    assert "b" not in ids and list(ids) == ["a", "c", "d"] and len(ids) == 3


def test_codec_rejects_unencodable_body() -> None:
    with pytest.raises(PayloadError, match="cannot encode"):
        encode({"x": object()})


# -- brokers: tests/conftest.py ---------------------------------------------------------
@pytest.fixture
def clients(broker: BrokerProc) -> Iterator[Callable[..., MqttClient]]:
    made: list[MqttClient] = []

    def make(**kw: object) -> MqttClient:
        c = MqttClient(broker.url, **kw).connect(10)  # type: ignore[arg-type]
        made.append(c)
        return c

    yield make
    for c in made:
        c.close(flush_timeout=0)


# -- MqttClient ----------------------------------------------------------------------------
def test_publish_subscribe(clients: Callable[..., MqttClient]) -> None:
    sub, pub = clients(), clients(src="pub-1")
    got, h = collector()
    sub.subscribe("t/ps", h, wait=10)
    for i in range(200):
        assert pub.publish("t/ps", {"i": i, "blob": b"\x00" * 100})
    assert pub.flush(10)
    assert eventually(lambda: len(got) == 200)
    assert [m.body["i"] for m in got] == list(range(200))  # order kept
    m = got[0]
    assert m.topic == "t/ps" and m.src == "pub-1" and m.qos == 1 and m.id and m.ts > 0
    assert pub.stats["published"] == 200 and sub.stats["received"] == 200


def test_wildcard_handlers(clients: Callable[..., MqttClient]) -> None:
    c = clients()
    plus, hash_, exact = collector(), collector(), collector()
    c.subscribe("w/+/temp", plus[1], wait=10)
    c.subscribe("w/#", hash_[1], wait=10)
    c.subscribe("w/a/temp", exact[1], wait=10)
    c.publish("w/a/temp", 1)
    c.publish("w/b/temp", 2)
    c.publish("w/b/hum", 3)
    c.publish("other/x", 4)
    # Each handler exactly its messages, and no extra copy shortly after.
    settles(lambda: (len(hash_[0]), len(plus[0]), len(exact[0])), (3, 2, 1), quiet_s=0.2,
            timeout=10, what="messages per handler (w/#, w/+/temp, w/a/temp)")
    assert sorted(m.body for m in plus[0]) == [1, 2]
    assert sorted(m.body for m in hash_[0]) == [1, 2, 3]
    assert [m.body for m in exact[0]] == [1]
    c.unsubscribe("w/#")  # its handlers are dropped at once: no wait for the UNSUBACK
    c.publish("w/a/temp", 5)
    settles(lambda: (len(exact[0]), len(hash_[0])), (2, 3), quiet_s=0.2, timeout=10,
            what="messages at w/a/temp and the unsubscribed w/#")


def test_malformed_and_failing_handlers_are_not_fatal(clients: Callable[..., MqttClient]) -> None:
    sub, pub = clients(), clients()
    got, h = collector()

    def boom(m: Delivery) -> None:
        if m.body == "explode":
            raise RuntimeError("handler bug")

    sub.subscribe("m/#", h)
    sub.subscribe("m/#", boom, wait=10)
    pub.publish_raw("m/x", encode({"k": "v" * 40})[:-4])  # broken envelope
    pub.publish("m/x", "explode")
    pub.publish_raw("m/x", b'{"plain": "json"}')
    pub.publish("m/x", "after")
    assert eventually(lambda: len(got) == 3)
    assert [m.body for m in got] == ["explode", {"plain": "json"}, "after"]
    assert got[1].id == ""
    assert sub.stats["malformed"] == 1 and sub.stats["handler_errors"] == 1


def test_duplicate_ids_dropped(clients: Callable[..., MqttClient]) -> None:
    sub, pub = clients(), clients()
    got, h = collector()
    sub.subscribe("d/x", h, wait=10)
    data = encode({"once": True})
    for _ in range(3):
        pub.publish_raw("d/x", data)
    pub.publish("d/x", "next")
    settles(lambda: len(got), 2, quiet_s=0.2, timeout=10, what="messages received")
    assert [m.body for m in got] == [{"once": True}, "next"]
    assert sub.stats["duplicates_dropped"] == 2


def test_flush_and_window(clients: Callable[..., MqttClient]) -> None:
    pub = clients(max_inflight=50)
    delivered: list[int] = []
    pub.on_delivered = delivered.append
    for i in range(3000):
        pub.publish_raw("f/x", b"x" * 200, token=i)
    assert pub.flush(20)
    assert pub.outstanding == 0
    assert sorted(delivered) == list(range(3000))


def test_connect_unreachable_names_broker() -> None:
    url = f"mqtt://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(UserError, match=url.replace(".", r"\.")):
        MqttClient(url).connect(timeout=1)
    assert time.monotonic() - t0 < 5


def test_reconnect_after_broker_restart_resubscribes(tmp_path: Path) -> None:
    b = BrokerProc(tmp_path, "amqtt", "restart").start()
    try:
        sub = MqttClient(b.url).connect()
        pub = MqttClient(b.url).connect()
        got, h = collector()
        sub.subscribe("r/#", h, wait=10)
        pub.publish("r/1", "before")
        assert eventually(lambda: len(got) == 1)
        b.stop()
        assert eventually(lambda: not sub.connected, 5)
        b.start()
        assert sub.wait_connected(10) and pub.wait_connected(10)
        assert sub.wait_subscribed("r/#", 10)  # the re-SUBSCRIBE sent on connect landed
        pub.publish("r/2", "after")
        assert pub.flush(10)
        assert eventually(lambda: len(got) == 2)
        assert [m.body for m in got] == ["before", "after"]
        assert sub.stats["reconnects"] >= 1
        sub.close()
        pub.close()
    finally:
        b.stop()


@pytest.mark.parametrize("kind", BROKER_KINDS)
def test_broker_busy_port_fails_clearly(tmp_path: Path, kind: str) -> None:
    b = BrokerProc(tmp_path, "amqtt", "first").start()
    try:
        clash = BrokerProc(tmp_path, kind, "second")
        clash.config.listen = b.endpoint
        proc = spawn_service("second", "edgecloud.resource.broker", clash.config,
                             tmp_path / "run", clash.log)
        assert proc.wait(20) != 0
        assert "already in use" in clash.log.read_text()
    finally:
        b.stop()


def test_retransmit_false_leaves_resending_to_the_owner(tmp_path: Path) -> None:
    # The bridge's publishers: what a dropped connection left unacknowledged is forgotten,
    # publishes are refused until the owner resumes after on_reconnect, and nothing old is
    # sent again by the client on the new connection.
    b = BrokerProc(tmp_path, "amqtt", "owner").start()
    reconnects: list[float] = []
    delivered: list[int] = []
    pub = OwnerResendClient(b.url, "owner-pub",
                     on_reconnect=lambda: reconnects.append(time.monotonic()),
                     on_delivered=delivered.append)
    try:
        assert not pub.accepting and not pub.publish_raw("o/x", b"early", token=-1)
        pub.start()
        assert eventually(lambda: len(reconnects) == 1, 10)
        assert pub.resume() and pub.accepting
        for i in range(5):
            assert pub.publish_raw("o/x", encode(i), token=i)
        assert pub.flush(10) and delivered == [0, 1, 2, 3, 4]
        b.stop()
        for i in range(5, 50):  # in flight when the connection drops, or refused after
            pub.publish_raw("o/x", encode(i), token=i)
            time.sleep(0.01)
        assert eventually(lambda: not pub.connected, 5)
        assert not pub.accepting and not pub.publish_raw("o/x", encode(-2), token=-2)
        assert pub.outstanding == 0  # nothing left for paho to retransmit
        assert pub.stats["forgotten"] + pub.stats["dropped_offline"] >= 46
        b.start()
        sub = MqttClient(b.url).connect()
        got, h = collector()
        sub.subscribe("o/#", h, wait=10)
        assert eventually(lambda: len(reconnects) == 2, 15)
        # An absence: 0.5 s on the new connection without any old publish resent.
        settles(lambda: len(got), 0, quiet_s=0.5, what="old publishes resent")
        assert got == [] and pub.publish_raw("o/x", encode(-3)) is False  # not resumed yet
        assert pub.resume()
        assert pub.publish_raw("o/x", encode(100), token=100)
        assert pub.flush(10)
        settles(lambda: len(got), 1, quiet_s=0.3, timeout=10, what="messages after resume")
        assert [m.body for m in got] == [100] and delivered == [0, 1, 2, 3, 4, 100]
        sub.close()
    finally:
        pub.close(flush_timeout=0)
        b.stop()
