"""The edge<->cloud bridge with real brokers and bridges as subprocesses.

One cloud broker, two edge sites (ec-1, ec-2), each with its broker and bridge.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgecloud.procutil import free_port, spawn_service, stop_process, wait_port
from edgecloud.resource.bridge import Bridge, BridgeConfig, route
from edgecloud.resource.broker import mosquitto_path
from edgecloud.resource.mqtt import Delivery, MqttClient
from edgecloud.resource.wan import LinkClient, LinkSettings, Route, WanConfig
from edgecloud.service import Endpoint
from tests.conftest import BrokerProc, ServiceProc
from tests.support import collector, eventually, settles

pytestmark = pytest.mark.timeout(90)


def broker(tmp: Path, site: str, kind: str = "amqtt") -> BrokerProc:
    return BrokerProc(tmp, kind, f"broker-{site}", site)


def bridge(tmp: Path, site: str, local: BrokerProc, cloud: BrokerProc, remote: list[str]
           ) -> ServiceProc:
    cfg = BridgeConfig(site=site, local=local.endpoint, cloud=cloud.endpoint,
                       data_dir=tmp / site / "bridge", keepalive_s=2, remote_sites=remote)
    return ServiceProc(tmp, f"bridge-{site}", "edgecloud.resource.bridge", cfg)


class Topology:
    def __init__(self, tmp: Path, kind: str = "amqtt", edges: tuple[str, ...] = ("ec-1", "ec-2")
                 ) -> None:
        self.brokers = {"cloud": broker(tmp, "cloud", kind)}
        self.brokers.update({e: broker(tmp, e, kind) for e in edges})
        self.bridges = {e: bridge(tmp, e, self.brokers[e], self.brokers["cloud"],
                                  [s for s in self.brokers if s != e]) for e in edges}
        self.clients: list[MqttClient] = []

    def start(self) -> Topology:
        for b in self.brokers.values():
            b.start()
        for br in self.bridges.values():
            br.start()
        return self

    def url(self, site: str) -> str:
        return self.brokers[site].url

    def client(self, site: str, **kw: object) -> MqttClient:
        c = MqttClient(self.url(site), **kw).connect(10)  # type: ignore[arg-type]
        self.clients.append(c)
        return c

    def stop(self) -> None:
        for c in self.clients:
            c.close(flush_timeout=0)
        for br in self.bridges.values():
            br.stop()
        for b in self.brokers.values():
            b.stop()


def all_arrive_in_order(got: list[Delivery], n: int, topics: int, timeout: float,
                        quiet_s: float) -> None:
    """Wait for the n messages, check no extra copy comes for `quiet_s`, then check all
    of them, per topic in order (on a timeout: which were lost)."""
    if not eventually(lambda: len(got) >= n, timeout):
        check_all_in_order(got, n, topics)
    settles(lambda: len(got), n, quiet_s, what="messages at the subscriber (duplicates?)")
    check_all_in_order(got, n, topics)


def bridges_ready(topo: Topology) -> None:
    """Wait until every bridge carries traffic both ways (its subscriptions are in place)."""
    for site in topo.bridges:
        bridge_ready(topo, site)


def bridge_ready(topo: Topology, site: str) -> None:
    probe_up, probe_down = collector(), collector()
    cloud, edge = topo.client("cloud"), topo.client(site)
    assert cloud.subscribe(f"sites/cloud/probe/{site}", probe_up[1], wait=10)
    assert edge.subscribe(f"sites/{site}/probe", probe_down[1], wait=10)

    def ping() -> bool:
        edge.publish(f"sites/cloud/probe/{site}", "up", qos=0)
        cloud.publish(f"sites/{site}/probe", "down", qos=0)
        return bool(probe_up[0]) and bool(probe_down[0])
    assert eventually(ping, 20), f"bridge of {site} did not come up"


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    t = Topology(tmp_path_factory.mktemp("bridge")).start()
    try:
        bridges_ready(t)
        yield t
    finally:
        t.stop()


def test_route() -> None:
    assert route("ec-1", "sites/cloud/x") == "up"
    assert route("ec-1", "sites/ec-2/a/b") == "up"
    assert route("ec-1", "sites/ec-1/x") is None
    assert route("ec-1", "other/x") is None
    assert route("ec-1", "sites") is None


def test_edge_to_cloud_cloud_to_edge_edge_to_edge(topo: Topology) -> None:
    at_cloud, at_ec1, at_ec2 = collector(), collector(), collector()
    assert topo.client("cloud").subscribe("sites/cloud/t/#", at_cloud[1], wait=10)
    assert topo.client("ec-1").subscribe("sites/ec-1/t/#", at_ec1[1], wait=10)
    assert topo.client("ec-2").subscribe("sites/ec-2/t/#", at_ec2[1], wait=10)
    ec1 = topo.client("ec-1", src="app-ec1")
    cloud = topo.client("cloud", src="app-cloud")
    ec1.publish("sites/cloud/t/up", {"n": 1, "blob": b"\x01\x02"})
    cloud.publish("sites/ec-1/t/down", {"n": 2})
    ec1.publish("sites/ec-2/t/side", {"n": 3})
    assert eventually(lambda: len(at_cloud[0]) == 1 and len(at_ec1[0]) == 1
                    and len(at_ec2[0]) == 1)
    up, down, side = at_cloud[0][0], at_ec1[0][0], at_ec2[0][0]
    assert (up.topic, up.body, up.src) == ("sites/cloud/t/up", {"n": 1, "blob": b"\x01\x02"},
                                           "app-ec1")
    assert (down.topic, down.body, down.src) == ("sites/ec-1/t/down", {"n": 2}, "app-cloud")
    assert (side.topic, side.body) == ("sites/ec-2/t/side", {"n": 3})


def test_local_topics_stay_local(topo: Topology) -> None:
    at_cloud, at_ec2 = collector(), collector()
    assert topo.client("cloud").subscribe("#", at_cloud[1], wait=10)
    assert topo.client("ec-2").subscribe("#", at_ec2[1], wait=10)
    ec1 = topo.client("ec-1")
    ec1.publish("local/sensor", 1)
    ec1.publish("sites/ec-1/own", 2)     # for this site: never leaves it
    ec1.publish("sites/cloud/marker", 3)  # does leave: proves the bridge was working
    assert eventually(lambda: any(m.topic == "sites/cloud/marker" for m in at_cloud[0]))
    # An absence: a leak to ec-2 would take the longer way (cloud, then ec-2's bridge) than
    # the marker took, so give it half a second.
    time.sleep(0.5)
    cloud_topics = {m.topic for m in at_cloud[0]}
    assert "local/sensor" not in cloud_topics and "sites/ec-1/own" not in cloud_topics
    assert not any(m.topic in ("local/sensor", "sites/ec-1/own") for m in at_ec2[0])


def test_bridge_takes_only_cross_site_traffic(tmp_path: Path) -> None:
    """The bridge subscribes on its edge broker to `sites/<other site>/#` only: this site's
    own traffic never enters its session (the old `sites/+/#` took all of it in)."""
    topo = Topology(tmp_path, edges=())
    topo.brokers["ec-1"] = broker(tmp_path, "ec-1")
    topo.start()
    cfg = BridgeConfig(site="ec-1", local=topo.brokers["ec-1"].endpoint,
                       cloud=topo.brokers["cloud"].endpoint,
                       data_dir=tmp_path / "bridge", keepalive_s=2,
                       remote_sites=["cloud", "ec-2"])
    br = Bridge(cfg)
    stop = threading.Event()
    runner = threading.Thread(target=br.run, args=(stop,))
    try:
        runner.start()
        at_cloud = collector()
        topo.client("cloud").subscribe("sites/cloud/#", at_cloud[1], wait=10)
        assert br.edge.wait_connected(10) and br.edge.wait_subscribed("sites/cloud/#", 10)
        edge = topo.client("ec-1")
        for i in range(200):
            edge.publish(f"sites/ec-1/apps/a/x-{i % 4}/in", {"i": i, "pad": b"p" * 500})
        edge.publish("sites/cloud/marker", 1)
        assert edge.flush(10)
        assert eventually(lambda: any(m.topic == "sites/cloud/marker" for m in at_cloud[0]), 20)
        assert br.edge.stats["received"] == 1, br.edge.stats  # the marker only
        assert br.stats["up_in"] == 1 and br.stats["local_dropped"] == 0
    finally:
        stop.set()
        runner.join(10)
        topo.stop()


def check_all_in_order(got: list[Delivery], n: int, topics: int) -> None:
    per_topic: dict[str, list[int]] = {}
    for m in got:
        per_topic.setdefault(m.topic, []).append(m.body["i"])
    seen = sorted(i for seq in per_topic.values() for i in seq)
    missing = sorted(set(range(n)) - set(seen))
    assert not missing, f"{len(missing)} lost, first {missing[:10]}"
    assert seen == list(range(n)), "duplicates reached the subscriber"
    for topic, seq in per_topic.items():
        assert seq == sorted(seq), f"order broken on {topic}"
    assert len(per_topic) == topics


@pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto not installed")
def test_bridge_sigkill_mid_stream_loses_nothing(tmp_path: Path) -> None:
    # Mosquitto, the brokers `edgecloud up` runs whenever it is installed.
    topo = Topology(tmp_path, kind="mosquitto", edges=("ec-1",)).start()
    try:
        bridges_ready(topo)
        sigkill_mid_stream(topo)
    finally:
        topo.stop()


@pytest.mark.slow
def test_bridge_sigkill_mid_stream_amqtt(topo: Topology) -> None:
    """Known limitation: under heavy CPU load amqtt can redeliver a restarted bridge's
    queued backlog after newer messages (order, not loss); Mosquitto does not."""
    sigkill_mid_stream(topo)


def sigkill_mid_stream(topo: Topology) -> None:
    n, topics = 1000, 4
    got, h = collector()
    sub = topo.client("cloud")
    assert sub.subscribe("sites/cloud/kill/#", h, wait=10)
    pub = topo.client("ec-1")
    br = topo.bridges["ec-1"]
    for i in range(n):
        pub.publish(f"sites/cloud/kill/{i % topics}", {"i": i, "pad": b"k" * 200})
        if i == 300:
            assert eventually(lambda: len(got) > 100)  # mid-stream: the bridge is busy
            br.kill()
        if i == 600:
            br.start()
        if i % 50 == 0:
            time.sleep(0.02)
    assert pub.flush(20)
    all_arrive_in_order(got, n, topics, timeout=40, quiet_s=0.5)


@pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto not installed")
def test_cloud_broker_restart_loses_nothing(tmp_path: Path) -> None:
    # Mosquitto: its sessions (the subscriber's and the bridge's) survive the restart.
    topo = Topology(tmp_path, kind="mosquitto", edges=("ec-1",)).start()
    try:
        bridges_ready(topo)
        n, topics = 600, 3
        got, h = collector()
        sub = topo.client("cloud", client_id="restart-sub", clean_session=False)
        assert sub.subscribe("sites/cloud/rs/#", h, wait=10)
        pub = topo.client("ec-1")
        for i in range(n):
            pub.publish(f"sites/cloud/rs/{i % topics}", {"i": i})
            if i == 200:
                topo.brokers["cloud"].stop()
            if i == 400:
                time.sleep(2.0)  # the cloud stays down for a few seconds
                topo.brokers["cloud"].start()
            if i % 20 == 0:
                time.sleep(0.01)
        assert pub.flush(20)
        all_arrive_in_order(got, n, topics, timeout=40, quiet_s=0.5)
    finally:
        topo.stop()


def test_order_kept_across_repeated_wan_partitions(tmp_path: Path) -> None:
    # The bridge reaches the cloud broker through the shaping proxy. Each cut outlasts the
    # bridge's keepalive, so its cloud connection drops with publishes unacknowledged while
    # new ones keep coming from the edge; after each heal the old TCP connection's held
    # bytes reach the broker alongside the new connection's. Order per topic must hold.
    cloud, edge = broker(tmp_path, "cloud").start(), broker(tmp_path, "ec-1").start()
    wan_route = Route(name="mqtt", listen=Endpoint(port=free_port()),
                      target=cloud.endpoint, initiator="edge")
    wcfg = WanConfig(site="ec-1", control=Endpoint(port=free_port()), routes=[wan_route],
                     link=LinkSettings(up_bps=20e6, down_bps=40e6, delay_s=0.02),
                     state_file=tmp_path / "wan.json")
    wan = spawn_service("wan-ec-1", "edgecloud.resource.wan", wcfg, tmp_path / "run",
                        tmp_path / "logs" / "wan.log")
    bcfg = BridgeConfig(site="ec-1", local=edge.endpoint,
                        cloud=wan_route.listen, data_dir=tmp_path / "bridge", keepalive_s=2,
                        remote_sites=["cloud"])
    br = ServiceProc(tmp_path, "bridge-ec-1", "edgecloud.resource.bridge", bcfg)
    clients: list[MqttClient] = []
    try:
        wait_port("127.0.0.1", wcfg.control.port, 20, wan, "wan")
        lk = LinkClient(wcfg.control.url("http"), "ec-1")
        br.start()
        got, h = collector()
        sub = MqttClient(cloud.url).connect()
        pub = MqttClient(edge.url, src="pub").connect()
        clients += [sub, pub]
        assert sub.subscribe("sites/cloud/wan/#", h, wait=10)
        probe, ph = collector()
        assert sub.subscribe("sites/cloud/probe", ph, wait=10)
        assert eventually(lambda: pub.publish("sites/cloud/probe", 0, qos=0) and bool(probe),
                          20), "bridge did not come up"
        n, topics, cuts = 1500, 3, 3
        per_phase = n // (2 * cuts)
        i = 0
        for _ in range(cuts):
            for partitioned, seconds in ((False, 1.5), (True, 5.0)):
                lk.update(partitioned=partitioned)
                for _ in range(per_phase):
                    pub.publish(f"sites/cloud/wan/{i % topics}", {"i": i})
                    i += 1
                    time.sleep(seconds / per_phase)
        lk.update(partitioned=False)
        assert pub.flush(20)
        all_arrive_in_order(got, n, topics, timeout=40, quiet_s=1.0)
    finally:
        for c in clients:
            c.close(flush_timeout=0)
        br.stop()
        stop_process(wan)
        edge.stop()
        cloud.stop()
