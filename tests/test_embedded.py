"""`edgecloud up` end to end: the issue's acceptance checks on a real embedded run.

One infrastructure (examples/infra/local.yaml, 1 s heartbeats) serves the whole module;
tests that change a link restore it.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgecloud.config import Home
from edgecloud.resource.files import FileClient
from edgecloud.resource.mqtt import Delivery, MqttClient
from edgecloud.resource.state import RunState, load_run_state
from edgecloud.resource.wan import LinkClient
from tests.support import cli, embedded_run, foreground_up, settles, wait_for

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "examples/infra/local.yaml"






@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunState]:
    with embedded_run(tmp_path_factory.mktemp("home")) as state:
        yield state


def link(run: RunState, site: str) -> LinkClient:
    ep = run.site(site).wan_control
    assert ep is not None
    return LinkClient(ep.url("http"), site)


def collector(url: str, pattern: str) -> tuple[MqttClient, list[Delivery]]:
    got: list[Delivery] = []
    c = MqttClient(url, src="test-sub")
    c.connect()
    assert c.subscribe(pattern, got.append, wait=10)
    return c, got


def test_second_up_on_same_home_is_refused(run: RunState) -> None:
    before = (run.home / "state.json").read_bytes()
    for detach in ([], ["--detach"]):
        r = cli("up", str(INFRA), "--home", str(run.home), *detach, check=False)
        assert r.returncode == 2 and "already running" in r.stderr
        assert "Traceback" not in r.stderr
    # A refused command changes nothing: the running stack is still found.
    assert (run.home / "state.json").read_bytes() == before
    cli("status", "--home", str(run.home))


def test_status_json_contract(run: RunState) -> None:
    doc = json.loads(cli("status", "--home", str(run.home), "--json").stdout)
    assert doc["platform"]["url"].startswith("http://")
    by_site = {s["name"]: s for s in doc["sites"]}
    assert set(by_site) == {"cloud", "ec-1", "ec-2"}
    for s in doc["sites"]:
        assert s["broker"].startswith("mqtt://") and s["files"].startswith("http://")
        assert all(n["state"] == "Ready" for n in s["nodes"])
    rpi = next(n for n in by_site["ec-1"]["nodes"] if n["name"] == "ec-1-rpi1")
    assert rpi["labels"] == {"camera": "true"} and rpi["resources"]["cpu"] == 4
    services = {s["name"]: s for s in doc["services"]}  # service health, from state.json
    assert {"platform", "broker-cloud", "bridge-ec-1", "agent-cc-1"} <= set(services)
    assert all(s["state"] in ("running", "restarting", "failed") and s["pid"] > 0
               and s["restarts"] >= 0 for s in services.values())


def test_cross_site_delivery_both_ways_and_edge_to_edge(run: RunState) -> None:
    cloud, ec1, ec2 = (run.site(s).broker.url("mqtt") for s in ("cloud", "ec-1", "ec-2"))
    sub_cloud, at_cloud = collector(cloud, "sites/cloud/t/#")
    sub_ec1, at_ec1 = collector(ec1, "sites/ec-1/t/#")
    sub_ec2, at_ec2 = collector(ec2, "sites/ec-2/t/#")
    with MqttClient(ec1, src="p1") as p1, MqttClient(cloud, src="pc") as pc:
        p1.connect()
        pc.connect()
        p1.publish("sites/cloud/t/up", {"n": 1})
        pc.publish("sites/ec-1/t/down", {"n": 2})
        p1.publish("sites/ec-2/t/across", b"\x00binary")
        p1.publish("local/only", {"n": 4})
        p1.flush(5)
        pc.flush(5)
    wait_for(lambda: at_cloud and at_ec1 and at_ec2, 10, "cross-site messages")
    assert at_cloud[0].body == {"n": 1} and at_ec1[0].body == {"n": 2}
    assert at_ec2[0].body == b"\x00binary"
    for c in (sub_cloud, sub_ec1, sub_ec2):
        c.close()


def test_messages_published_during_partition_arrive_in_order(run: RunState) -> None:
    lk = link(run, "ec-1")
    sub, got = collector(run.cloud.broker.url("mqtt"), "sites/cloud/part/#")
    lk.update(partitioned=True)
    try:
        with MqttClient(run.site("ec-1").broker.url("mqtt"), src="pub") as pub:
            pub.connect()
            t0 = time.monotonic()
            for i in range(1000):
                pub.publish("sites/cloud/part/seq", {"i": i})
                time.sleep(0.008)  # spread over ~10 s of partition
            assert pub.flush(10)  # the edge broker accepted all of them
            # An absence: 10 s of partition in all, nothing may cross.
            time.sleep(max(0.0, 10 - (time.monotonic() - t0)))
            assert len(got) == 0, "nothing may cross a partitioned link"
    finally:
        lk.update(partitioned=False)
    settles(lambda: len(got), 1000, quiet_s=0.5, timeout=60, what="messages after heal")
    assert [m.body["i"] for m in got] == list(range(1000))
    sub.close()


def test_bridge_killed_mid_stream_loses_nothing(run: RunState) -> None:
    sub, got = collector(run.cloud.broker.url("mqtt"), "sites/cloud/kill/#")
    bridge = next(s for s in run.services if s.name == "bridge-ec-2")
    with MqttClient(run.site("ec-2").broker.url("mqtt"), src="pub2") as pub:
        pub.connect()
        for i in range(600):
            pub.publish("sites/cloud/kill/seq", {"i": i})
            if i == 200:
                os.kill(bridge.pid, signal.SIGKILL)  # the supervisor restarts it
            time.sleep(0.003)
        pub.flush(10)
    wait_for(lambda: len({m.body["i"] for m in got}) >= 600, 60, "600 messages after restart")
    assert sorted({m.body["i"] for m in got}) == list(range(600))
    seq = [m.body["i"] for m in got]
    assert seq == sorted(seq), "order per topic is kept"
    sub.close()


def test_20mb_file_over_20mbit_link(run: RunState) -> None:
    lk = link(run, "ec-2")
    lk.update(up_bps=20e6)
    data = os.urandom(20 * 1024 * 1024)
    edge = FileClient(run.site("ec-2").files.url("http"), "ec-2")
    ref = edge.put(data, key="big/20mb.bin")
    cloud = FileClient(run.cloud.files.url("http"), "cloud")
    before = lk.status().bytes_up
    t0 = time.monotonic()
    got = cloud.get(ref)
    elapsed = time.monotonic() - t0
    assert hashlib.sha256(got).hexdigest() == ref.sha256
    assert elapsed >= 8.0, f"20 MiB over 20 Mbit/s took only {elapsed:.1f}s"
    assert lk.status().bytes_up - before >= len(data)  # the accounting point saw it


def test_configured_delay_shows_in_latency(run: RunState) -> None:
    lk = link(run, "ec-1")
    sub, got = collector(run.cloud.broker.url("mqtt"), "sites/cloud/lat/#")

    def one_way_ms() -> float:
        got.clear()
        with MqttClient(run.site("ec-1").broker.url("mqtt"), src="lat") as pub:
            pub.connect()
            samples = []
            for i in range(5):
                t0 = time.time()
                pub.publish("sites/cloud/lat/x", {"t": t0, "i": i})
                wait_for(lambda n=i: len(got) > n, 10, "latency probe")
                samples.append((got[i].ts and time.time()) - t0)
        return 1000 * min(samples)

    base = one_way_ms()
    lk.update(delay_s=0.2)
    try:
        delayed = one_way_ms()
    finally:
        lk.update(delay_s=0.02)
    assert delayed >= base + 170, (base, delayed)
    sub.close()


def test_killed_node_goes_not_ready_within_three_beats(run: RunState) -> None:
    agent = next(s for s in run.services if s.name == "agent-ec-2-rpi1")
    os.killpg(agent.pid, signal.SIGSTOP)  # a hung node: alive but silent
    t0 = time.monotonic()

    def state() -> str:
        doc = json.loads(cli("status", "--home", str(run.home), "--json").stdout)
        return next(n["state"] for s in doc["sites"] for n in s["nodes"]
                    if n["name"] == "ec-2-rpi1")

    try:
        wait_for(lambda: state() == "NotReady", 8, "NotReady")
        assert time.monotonic() - t0 <= 3 * 1.0 + 3.0  # 3 beats of 1 s, checker slack
    finally:
        os.killpg(agent.pid, signal.SIGCONT)
    wait_for(lambda: state() == "Ready", 15, "Ready again")


def test_link_cli_show_and_set(run: RunState) -> None:
    cli("link", "set", "ec-2", "--delay", "30ms", "--loss", "1%", "--home", str(run.home))
    doc = json.loads(cli("link", "show", "--json", "--home", str(run.home)).stdout)
    ec2 = next(s for s in doc["sites"] if s["site"] == "ec-2")
    assert ec2["settings"]["delay_s"] == pytest.approx(0.03)
    assert ec2["settings"]["loss"] == pytest.approx(0.01)
    assert ec2["bytes_up"] > 0
    r = cli("link", "set", "cloud", "--delay", "1ms", "--home", str(run.home), check=False)
    assert r.returncode == 2 and "no WAN link" in r.stderr
    cli("link", "set", "ec-2", "--delay", "20ms", "--loss", "0", "--home", str(run.home))


def test_files_cli_round_trip(run: RunState, tmp_path: Path) -> None:
    src = tmp_path / "m.bin"
    src.write_bytes(os.urandom(100_000))
    out = cli("files", "put", str(src), "--site", "ec-1", "--json", "--home", str(run.home))
    ref = json.loads(out.stdout)
    assert ref["site"] == "ec-1" and ref["size"] == 100_000
    dest = tmp_path / "back.bin"
    cli("files", "get", f"ec-1:{ref['key']}", "--site", "ec-2", "-o", str(dest), "--home",
        str(run.home))
    assert dest.read_bytes() == src.read_bytes()
    listing = json.loads(cli("files", "ls", "--site", "ec-1", "--json", "--home",
                             str(run.home)).stdout)
    assert any(o["key"] == ref["key"] for o in listing)
    r = cli("files", "get", "ec-1:nope/x", "-o", str(dest), "--home", str(run.home),
            check=False)
    assert r.returncode != 0 and "no object" in r.stderr and "Traceback" not in r.stderr


threading.excepthook = lambda args: None  # paho threads closing at teardown are not errors


def test_foreground_up_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    home = tmp_path / "fg"
    proc = foreground_up(INFRA, home)
    try:
        time.sleep(1.0)  # let it print its table, as a person would before pressing Ctrl-C
        pids = [s.pid for s in load_run_state(Home(home)).services]
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "Stopped." in out and "Traceback" not in out
    assert not (home / "state.json").exists()
    for pid in pids:
        assert not _alive(pid), f"service pid {pid} left behind"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie is gone for our purposes
        return fh.read().split()[2] != "Z"
