"""Applications on a real embedded run: deploy, deliver, update, fail over, crash, delete."""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from edgecloud.application import topics
from edgecloud.resource.mqtt import MqttClient
from edgecloud.resource.state import RunState
from tests.support import cli, delete_apps, metric, settles, wait_for

ROOT = Path(__file__).resolve().parents[1]
APPS = Path(__file__).parent / "apps"
MY_APPS = ("relay-demo", "faulty", "big")  # deployed here, deleted at the module's end


@pytest.fixture(scope="module")
def run(embedded: RunState) -> Iterator[RunState]:
    """The shared embedded run (tests/conftest.py), left without this module's apps."""
    delete_apps(embedded.home, *MY_APPS)
    yield embedded
    delete_apps(embedded.home, *MY_APPS)


def app_status(run: RunState, name: str) -> dict[str, Any]:
    return json.loads(cli("app", "status", name, "--home", str(run.home), "--json").stdout)


def runner_pids(app: str) -> set[int]:
    out = set()
    for p in psutil.process_iter(["cmdline", "environ"]):
        try:
            if "edgecloud.application.runner" in " ".join(p.info["cmdline"] or []) and \
                    (p.info["environ"] or {}).get("EDGECLOUD_APP") == app:
                out.add(p.pid)
        except (psutil.Error, TypeError):
            continue
    return out


@pytest.fixture(scope="module")
def relay(run: RunState, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The relay example, copied so tests may edit its topology in place."""
    d = tmp_path_factory.mktemp("relay")
    shutil.copytree(ROOT / "examples/relay", d, dirs_exist_ok=True)
    cli("app", "deploy", str(d / "relay.yaml"), "--home", str(run.home))
    return d / "relay.yaml"


def test_relay_every_message_arrives(run: RunState, relay: Path) -> None:
    def received() -> float:
        doc = app_status(run, "relay-demo")
        sink = next(i for i in doc["instances"] if i["component"] == "sink")
        return metric(sink, "received")

    # 2 camera nodes x 100, nothing lost, nothing twice. The count travels in 1 s
    # heartbeats: 2.5 s without a 201st covers a late duplicate.
    settles(received, 200, quiet_s=2.5, timeout=60, what="readings at the sink")
    doc = app_status(run, "relay-demo")
    placed = {i["name"]: (i["site"], i["node"]) for i in doc["instances"]}
    assert placed["sink-0"][0] == "cloud"
    assert {placed["sensor-0"][1], placed["sensor-1"][1]} == {"ec-1-rpi1", "ec-2-rpi1"}
    assert all(i["state"] == "Running" for i in doc["instances"])


def test_logs_and_prometheus_metrics(run: RunState, relay: Path) -> None:
    out = wait_for(lambda: cli("app", "logs", "relay-demo", "sink", "--home",
                               str(run.home)).stdout, 20, "sink logs")
    assert "sink-0" in out and "progress" in out
    text = httpx.get(run.platform.url("http") + "/metrics").text
    assert 'edgecloud_app_received_total{app="relay-demo"' in text
    assert 'edgecloud_instance_running{app="relay-demo"' in text
    assert "edgecloud_node_ready" in text


def test_incremental_update_restarts_only_the_changed_component(run: RunState,
                                                                relay: Path) -> None:
    before = {i["name"]: i["pid"] for i in app_status(run, "relay-demo")["instances"]}
    text = relay.read_text().replace("entry: relay_app:Sink, site: cloud}",
                                     "entry: relay_app:Sink, site: cloud, params: {v: 2}}")
    relay.write_text(text)
    cli("app", "update", str(relay), "--home", str(run.home))
    after = {i["name"]: i["pid"] for i in app_status(run, "relay-demo")["instances"]}
    assert after["sink-0"] != before["sink-0"]
    assert {k: v for k, v in after.items() if k != "sink-0"} == \
        {k: v for k, v in before.items() if k != "sink-0"}


def test_frozen_node_moves_its_instances(run: RunState, relay: Path) -> None:
    doc = app_status(run, "relay-demo")
    relay0 = next(i for i in doc["instances"] if i["name"] == "relay-0")
    agent = next(s for s in run.services if s.name == f"agent-{relay0['node']}")
    os.killpg(agent.pid, signal.SIGSTOP)
    try:
        moved = wait_for(lambda: next((i for i in app_status(run, "relay-demo")["instances"]
                                       if i["name"] == "relay-0"
                                       and i["node"] != relay0["node"]
                                       and i["state"] == "Running"), None), 30, "relay-0 moved")
        assert moved["site"] in ("ec-1", "ec-2")  # an edge node, as the topology says
        others = {i["name"]: i["node"] for i in app_status(run, "relay-demo")["instances"]}
        assert others["sink-0"] == "cc-1"  # nothing else moved
    finally:
        os.killpg(agent.pid, signal.SIGCONT)


def test_crash_restarts_with_reason_and_bad_payloads_are_survived(run: RunState) -> None:
    cli("app", "deploy", str(APPS / "faulty/faulty.yaml"), "--home", str(run.home),
        "--wait", "0")
    crasher = wait_for(lambda: next((i for i in app_status(run, "faulty")["instances"]
                                     if i["component"] == "crasher" and i["restarts"] >= 1),
                                    None), 40, "crasher restarted")
    assert "cannot open camera /dev/video9" in crasher["reason"]
    # A UserError from the component (its params are wrong) is the reason, in one line.
    wrong = wait_for(lambda: next((i for i in app_status(run, "faulty")["instances"]
                                   if i["component"] == "misconfigured"
                                   and i["restarts"] >= 1), None), 40, "misconfigured restarted")
    assert wrong["reason"].endswith("error: unknown model 'resnet9000'"), wrong["reason"]
    tolerant = wait_for(lambda: next((i for i in app_status(run, "faulty")["instances"]
                                      if i["component"] == "tolerant"
                                      and i["state"] == "Running"), None), 30, "tolerant up")
    inbox = topics.inbox(tolerant["site"], "faulty", tolerant["name"])
    with MqttClient(run.site("ec-2").broker.url("mqtt"), src="test") as c:
        c.connect()
        c.publish_raw(inbox, b"\x93garbage that is not msgpack")
        c.publish(inbox, "a string, not a dict")
        c.publish(inbox, {"ok": True})
        c.flush(5)

    def good() -> bool:
        inst = next(i for i in app_status(run, "faulty")["instances"]
                    if i["component"] == "tolerant")
        return metric(inst, "good") == 1 and metric(inst, "edgecloud_message_errors") >= 1

    wait_for(good, 20, "tolerant handled the good message after the bad ones")
    inst = next(i for i in app_status(run, "faulty")["instances"] if i["component"] == "tolerant")
    assert inst["restarts"] == 0 and inst["state"] == "Running"


def test_unplaceable_app_is_explained(run: RunState, tmp_path: Path) -> None:
    shutil.copy(ROOT / "examples/relay/relay_app.py", tmp_path)
    (tmp_path / "big.yaml").write_text("""apiVersion: edgecloud/v1
kind: Application
metadata: {name: big}
spec:
  components:
    - {name: a, entry: relay_app:Sink, site: edge, replicas: 4, resources: {cpu: 3}}
""")
    r = cli("app", "deploy", str(tmp_path / "big.yaml"), "--home", str(run.home), check=False)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "'a'" in r.stderr and "cpu" in r.stderr


def test_delete_leaves_no_process_behind(run: RunState, relay: Path) -> None:
    assert runner_pids("relay-demo")
    cli("app", "delete", "relay-demo", "--home", str(run.home))
    wait_for(lambda: not runner_pids("relay-demo"), 20, "relay-demo processes gone")
    apps = json.loads(cli("app", "list", "--home", str(run.home), "--json").stdout)
    assert "relay-demo" not in {a["name"] for a in apps}
