"""A re-plan touches only the instances it moves: membership is delivered live.

Real parts throughout: the platform core in this process (SQLite store, orchestrator,
re-plan worker, as in tests/test_app_manager.py), one `NodeRuntime` per node running real
runner processes, and a real Mosquitto broker. The broker is shared by every site (the
topics name the site, so routing by site is exercised; the bridge is not).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from edgecloud.application import topics
from edgecloud.application.context import ControllerInfo, InstanceContext, Peer
from edgecloud.application.control import InAppController
from edgecloud.application.runner import ContextWatcher
from edgecloud.application.topology import Application
from edgecloud.application.wire import DeployRequest, InstanceView
from edgecloud.config import write_private
from edgecloud.platform.api_apps import instance_views
from edgecloud.platform.apps import AppManager
from edgecloud.platform.core import Platform
from edgecloud.resource.broker import mosquitto_path
from edgecloud.resource.mqtt import MqttClient
from edgecloud.resource.node import NodeRuntime
from edgecloud.resource.runtime import InstanceSpec
from tests.conftest import BrokerProc
from tests.support import collector, eventually, node_id

APPS = Path(__file__).parent / "apps"
needs_mosquitto = pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto not installed")
ALL = ("cc-1", "ec-1-pc", "ec-1-rpi1", "ec-2-rpi1")  # the nodes of LOCAL_INFRA


# -- the digests -----------------------------------------------------------------------------
def spec(**ctx: object) -> InstanceSpec:
    base = InstanceContext(app="a", instance="x-0", component="x", site="ec-1",
                           site_kind="edge", cloud_site="cloud", node="n1",
                           controller=ControllerInfo(sites=["ec-1"]))
    return InstanceSpec(app="a", name="x-0", component="x", kind="command",
                        command=["sleep", "1000"],
                        context=base.model_copy(update=ctx))


def test_membership_is_the_live_part_of_a_spec() -> None:
    one = spec(members=[Peer(instance="y-0", component="y", site="ec-1")])
    other = spec(members=[Peer(instance="y-0", component="y", site="ec-2")],
                 peers={"y": [Peer(instance="y-0", component="y", site="ec-2")]},
                 controller=ControllerInfo(sites=[]))
    assert one.restart_digest() == other.restart_digest()
    assert one.digest() != other.digest() and one.live_part() != other.live_part()
    for change in ({"params": {"k": 1}}, {"node": "n2"}, {"site": "ec-2"}, {"entry": "m:C"},
                   {"controller": ControllerInfo(sites=["ec-1"], report_interval_s=2)}):
        changed = spec(members=one.context.members, **change)  # type: ignore[union-attr]
        assert changed.restart_digest() != one.restart_digest(), change


def test_a_membership_change_rewrites_the_context_without_a_restart(tmp_path: Path) -> None:
    """Fails on the old code: the node restarted the instance (new pid); (c): the node
    reports the digest of the new assignment as soon as the context was rewritten."""
    node = NodeRuntime(tmp_path, "ec-1", "http://127.0.0.1:9", "mqtt://127.0.0.1:9")
    try:
        first = spec(members=[Peer(instance="y-0", component="y", site="ec-1")])
        node.apply([first])
        assert eventually(lambda: _pid(node) is not None, 10)
        pid = _pid(node)
        assert node.report()[0][0].digest == first.digest()
        moved = spec(members=[Peer(instance="y-0", component="y", site="ec-2")])
        node.apply([moved])
        status = node.report()[0][0]
        assert status.digest == moved.digest() != first.digest()  # up to date
        assert status.pid == pid and status.restarts == 0
        ctx = InstanceContext.model_validate_json(
            (tmp_path / "instances/a/x-0/context.json").read_text())
        assert [p.site for p in ctx.members] == ["ec-2"]
        assert ctx.broker_url == "mqtt://127.0.0.1:9"  # still the node's localised copy
        time.sleep(0.5)  # a supervision pass or two: still the same process
        assert _pid(node) == pid
        node.apply([spec(members=moved.context.members, params={"k": 1})])  # type: ignore[union-attr]
        assert eventually(lambda: _pid(node) not in (None, pid), 10)  # restart part: restart
    finally:
        node.close()


def _pid(node: NodeRuntime) -> int | None:
    statuses = node.runtime.statuses()
    return statuses[0].pid if statuses and statuses[0].state == "Running" else None


PER_NODE = """
apiVersion: edgecloud/v1
kind: Application
metadata: {name: pernode}
spec:
  components:
    - {name: cam, command: [sleep, "1000"], perNode: {labels: {camera: "true"}},
       connections: [sink]}
    - {name: sink, command: [sleep, "1000"], site: cloud, connections: [cam]}
"""


def test_a_lost_perNode_instance_changes_only_the_others_live_part(
        platform: Platform, manager: AppManager) -> None:
    """The platform side of a drop: the other instances get a new membership (a new
    `digest`, so their nodes are sent it) under the same `restart_digest` (so their nodes
    do not restart them). On the old code the one digest changed: a restart."""
    for name in ALL:
        platform.store.nodes.record_heartbeat(node_id(name), {}, [], None, [])
    manager.deploy(DeployRequest(topology=Application.model_validate(
        yaml.safe_load(PER_NODE))))
    before = {r.name: r for r in manager.instances("pernode")}
    lost = next(r for r in before.values() if r.component == "cam")
    platform.store.nodes.mark_not_ready(node_id(lost.node), "test")
    assert manager.replan_all("test") == []
    after = {r.name: r for r in manager.instances("pernode")}
    assert set(after) == set(before) - {lost.name}
    for name, row in after.items():
        assert row.spec.restart_digest() == before[name].spec.restart_digest(), name
        assert row.spec.digest() != before[name].spec.digest(), name  # the new membership
        assert lost.name not in {p.instance for p in row.spec.context.members}  # type: ignore[union-attr]


# -- the runner and the SDK follow a new membership -----------------------------------------
def test_the_watcher_sees_every_replacement_of_the_context_file(tmp_path: Path) -> None:
    path = tmp_path / "context.json"
    ctx = spec().context
    assert ctx is not None
    write_private(path, ctx.model_dump_json())
    watcher = ContextWatcher(path)
    assert watcher.changed() is None  # nothing new
    for site in ("ec-2", "cloud"):  # two replacements in a row, same size
        new = ctx.model_copy(update={"members": [Peer(instance="y-0", component="y",
                                                      site=site.ljust(5, "-"))]})
        write_private(path, new.model_dump_json())
        seen = watcher.changed()
        assert seen is not None and seen.members == new.members
        assert watcher.changed() is None


@needs_mosquitto
@pytest.mark.timeout(60)
def test_send_to_and_controller_commands_follow_the_membership(tmp_path: Path) -> None:
    """A controller (a Component) handed a new membership addresses the new sites: its
    commands and `send_to` go to where the instances are now, at once."""
    with BrokerProc(tmp_path, "mosquitto") as broker:
        _controller_follows_membership(broker.url)


def _controller_follows_membership(url: str) -> None:
    client = MqttClient(url, src="controller-cloud").connect()
    watch = MqttClient(url).connect()
    got, handler = collector()
    try:
        assert watch.subscribe("sites/#", handler, wait=10)
        old = [Peer(instance="y-0", component="y", site="ec-1")]
        ctx = InstanceContext(app="a", instance="controller-cloud", component="controller",
                              role="controller", site="cloud", site_kind="cloud",
                              cloud_site="cloud", node="cc-1", members=old,
                              controller=ControllerInfo(sites=["ec-1"]))
        ctrl = InAppController(ctx, client)
        ctrl.setup()
        assert ctrl._sites() == ["ec-1"]
        moved = [Peer(instance="y-0", component="y", site="ec-2")]
        assert ctrl._follow_membership(ctx.model_copy(update={
            "members": moved, "controller": ControllerInfo(sites=["ec-2"])}))
        assert ctrl.context.members == moved and ctrl.context.controller_site == "cloud"
        assert ctrl.context.controller is not None and ctrl.context.controller.sites == ["ec-2"]
        assert not ctrl._follow_membership(ctrl.context)  # nothing new: nothing done
        ctrl.terminate("y")
        ctrl.send_to("y-0", {"hello": 1})
        assert eventually(lambda: len(got) >= 2, 10)
        assert {m.topic for m in got} == {topics.commands("ec-2", "a"),
                                          topics.inbox("ec-2", "a", "y-0")}
    finally:
        client.close()
        watch.close()


# -- re-plans on a running application ------------------------------------------------------
TOPOLOGY = """
apiVersion: edgecloud/v1
kind: Application
metadata: {name: members}
spec:
  components:
    - {name: src, entry: "membership_app:Source", site: cloud, connections: [work, sink],
       params: {to: [work, sink], out: OUT}}
    - {name: work, entry: "membership_app:Sink", perNode: {labels: {camera: "true"}},
       params: {out: OUT}}
    - {name: sink, entry: "membership_app:Sink", site: edge, labels: {camera: "true"},
       params: {out: OUT}}
"""


class Cluster:
    """The nodes of the local infrastructure as agents would run them: every `beat`, each
    live node applies its latest assignment and heartbeats its instance statuses."""

    def __init__(self, p: Platform, m: AppManager, tmp: Path, broker_url: str) -> None:
        self.p, self.m = p, m
        self.nodes = {name: NodeRuntime(tmp / name, _site(name), "http://127.0.0.1:9",
                                        broker_url) for name in ALL}
        self.applied: dict[str, int] = {}
        self.dead: set[str] = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.beat()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def beat(self) -> None:
        with self._lock:
            for name, node in self.nodes.items():
                if name in self.dead:
                    continue
                a = self.p.store.nodes.assignment(node_id(name))
                if a is not None and a.revision != self.applied.get(name):
                    node.apply(a.instances)
                    self.applied[name] = a.revision
                    self.p.store.nodes.mark_fetched(node_id(name), a.revision)
                statuses, _ = node.report()
                self.p.store.nodes.record_heartbeat(node_id(name), {}, statuses, None, [])
                self.m._on_heartbeat(node_id(name))

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            self.beat()

    def kill(self, name: str) -> None:
        """The node dies (its instances with it) and the platform marks it NotReady."""
        with self._lock:
            self.dead.add(name)
            self.nodes[name].close()
        self.p.store.nodes.mark_not_ready(node_id(name), "test: node lost")

    def views(self) -> dict[str, InstanceView]:
        nodes = {n.name: n for n in self.p.store.nodes.all()}
        return {v.name: v for v in instance_views(self.m, "members", nodes)}

    def settled(self) -> bool:
        views = self.views()
        return bool(views) and all(v.state == "Running" and v.up_to_date
                                   for v in views.values())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for name, node in self.nodes.items():
            if name not in self.dead:
                node.close()


def _site(node: str) -> str:
    return node_id(node).split("/")[1]


@pytest.fixture
def cluster(platform: Platform, manager: AppManager, tmp_path: Path) -> Iterator[Cluster]:
    with BrokerProc(tmp_path, "mosquitto") as broker:
        c = Cluster(platform, manager, tmp_path / "nodes", broker.url)
        try:
            yield c
        finally:
            c.close()


def lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


@needs_mosquitto
@pytest.mark.timeout(120)
def test_replan_moves_and_drops_without_restarting_the_others(
        cluster: Cluster, manager: AppManager, tmp_path: Path) -> None:
    """(a) a node is lost: its perNode `work` instance is dropped and (b) the `sink` it
    ran moves to the other edge site. Neither the source nor the remaining `work`
    instance restarts (same pid, restart count unchanged); the source's sends after it
    learnt the new membership never target the dropped instance, and reach the sink at
    its new site. Fails on the old code: every instance's `members` changed, so every
    instance restarted (the source started again from its first item)."""
    out = tmp_path / "out"
    out.mkdir()
    manager.deploy(DeployRequest(
        topology=Application.model_validate(yaml.safe_load(TOPOLOGY.replace("OUT",
                                                                            str(out)))),
        source_dir=str(APPS)))
    assert eventually(cluster.settled, 60), cluster.views()
    before = cluster.views()
    lost = before["sink-0"].node
    dropped = next(v.name for v in before.values() if v.component == "work" and v.node == lost)
    kept = next(v.name for v in before.values() if v.component == "work" and v.node != lost)
    sent = out / "src-0.sent"
    assert eventually(lambda: {ln.split()[3] for ln in lines(sent)} >= {dropped, kept,
                                                                          "sink-0"}, 30)

    cluster.kill(lost)
    assert manager.replan_all("test") == []
    assert eventually(lambda: cluster.settled() and "sink-0" in cluster.views()
                      and cluster.views()["sink-0"].node != lost, 60), cluster.views()
    after = cluster.views()
    assert dropped not in after and after["sink-0"].site != before["sink-0"].site
    for name in ("src-0", kept):
        assert (after[name].pid, after[name].restarts) == (before[name].pid,
                                                           before[name].restarts), name

    # the source was told (on_members), and from then on routes by the new membership
    def told() -> list[str]:
        got = lines(sent)
        marks = [i for i, ln in enumerate(got) if ln.startswith("members ")]
        return got[marks[-1] + 1:] if marks and dropped not in got[marks[-1]] else []
    assert eventually(lambda: len(told()) >= 20, 30), lines(sent)[-5:]
    targets = {ln.split()[3] for ln in told() if ln.startswith("sent ")}
    assert targets == {kept, "sink-0"}
    new_site = after["sink-0"].site
    assert eventually(lambda: any(ln.split()[2] == new_site
                                  for ln in lines(out / "sink-0.got")), 30)
    last_sent = max(int(ln.split()[1]) for ln in told() if ln.endswith(" sink-0"))
    assert eventually(lambda: any(int(ln.split()[0]) >= last_sent and ln.split()[2] == new_site
                                  for ln in lines(out / "sink-0.got")), 30)
