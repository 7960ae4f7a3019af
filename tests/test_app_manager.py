"""The application controller on a real platform core (SQLite store, orchestrator, re-plan
worker) in this process, so that node liveness is set exactly: re-plans touch only what
they move and never target a silent node, thorough updates are atomic, Pending
instances say why, and stored topologies are parsed once."""

from __future__ import annotations

import time

import pytest
import yaml
from sqlalchemy import update

from edgecloud.application.topology import Application
from edgecloud.application.wire import DeployRequest
from edgecloud.platform.api_apps import instance_views
from edgecloud.platform.apps import AppManager
from edgecloud.platform.core import Platform
from edgecloud.platform.orchestrator import PlacementError
from edgecloud.platform.store.schema import apps as apps_table
from edgecloud.platform.store.schema import nodes as nodes_table
from edgecloud.resource.runtime import InstanceStatus
from tests.support import eventually, node_id, settles

HB = 1.0


def beat(p: Platform, *names: str, statuses: list[InstanceStatus] | None = None) -> None:
    for name in names:
        p.store.nodes.record_heartbeat(node_id(name), {}, statuses or [], None, [])


def silence(p: Platform, name: str, seconds: float = 30.0) -> None:
    """The node's last heartbeat was `seconds` ago (it is overdue, still marked Ready)."""
    with p.store.engine.begin() as c:
        c.execute(update(nodes_table).where(nodes_table.c.name == name)
                  .values(last_heartbeat=time.time() - seconds))


def request(text: str) -> DeployRequest:
    return DeployRequest(topology=Application.model_validate(yaml.safe_load(text)))


ALL = ("cc-1", "ec-1-pc", "ec-1-rpi1", "ec-2-rpi1")

MOVER = """
apiVersion: edgecloud/v1
kind: Application
metadata: {name: mover}
spec:
  components:
    - {name: mover, command: [sleep, "1000"], site: ec-1, connections: [sink]}
    - {name: stay, command: [sleep, "1000"], site: ec-2, connections: [sink]}
    - {name: sink, command: [sleep, "1000"], site: cloud}
"""


def specs(m: AppManager, app: str) -> dict[str, tuple[str, str]]:
    return {r.name: (r.node, r.spec.digest()) for r in m.instances(app)}


def test_replan_restarts_only_what_moves(platform: Platform, manager: AppManager) -> None:
    """Fails on the old code: every context listed every member with its node, so moving
    one instance changed the digest (a restart) of every instance of the app."""
    beat(platform, *ALL)
    manager.deploy(request(MOVER))
    before = specs(manager, "mover")
    lost = before["mover-0"][0]
    platform.store.nodes.mark_not_ready(node_id(lost), "test")
    assert manager.replan_all("test") == []
    after = specs(manager, "mover")
    assert after["mover-0"][0] not in (lost, before["mover-0"][0])
    assert after["mover-0"][0].startswith("ec-1-")
    assert after["sink-0"] == before["sink-0"] and after["stay-0"] == before["stay-0"]
    # and the nodes' assignments of the unmoved instances did not change either
    cloud = platform.store.nodes.assignment(node_id("cc-1"))
    assert cloud is not None and [s.digest() for s in cloud.instances] == \
        [before["sink-0"][1]]


def test_replan_never_targets_a_silent_node(platform: Platform, manager: AppManager) -> None:
    """A node whose heartbeats stopped is not a target, even before the readiness checker
    marks it NotReady (fails on the old code: only the stored state counted, and the
    balance objective preferred the idle silent node)."""
    beat(platform, *ALL)
    manager.deploy(request("""
apiVersion: edgecloud/v1
kind: Application
metadata: {name: filler}
spec:
  components:
    - {name: load, command: [sleep, "1000"], site: ec-2, resources: {cpu: 3}}
"""))
    platform.store.nodes.mark_not_ready(node_id("ec-1-rpi1"), "test")
    platform.store.nodes.mark_not_ready(node_id("ec-2-rpi1"), "test")
    manager.deploy(request("""
apiVersion: edgecloud/v1
kind: Application
metadata: {name: solo}
spec:
  components:
    - {name: spare, command: [sleep, "1000"], site: edge}
"""))
    assert specs(manager, "solo")["spare-0"][0] == "ec-1-pc"
    beat(platform, "ec-1-rpi1", "ec-2-rpi1")
    # ec-1-pc dies; ec-1-rpi1 (idle) went silent too but is not marked NotReady yet
    platform.store.nodes.mark_not_ready(node_id("ec-1-pc"), "test")
    silence(platform, "ec-1-rpi1")
    assert manager.replan_all("test") == []
    assert specs(manager, "solo")["spare-0"][0] == "ec-2-rpi1"


def test_thorough_update_plans_first_and_replaces_atomically(platform: Platform,
                                                             manager: AppManager) -> None:
    """Fails on the old code: it deleted the app, then the placement failed: app gone."""
    beat(platform, *ALL)
    manager.deploy(request(MOVER))
    before = specs(manager, "mover")
    impossible = MOVER.replace("site: cloud}", "site: cloud, replicas: 40, "
                                               "resources: {cpu: 4}}")
    with pytest.raises(PlacementError):
        manager.update(request(impossible), thorough=True)
    assert specs(manager, "mover") == before
    assert platform.store.apps.get("mover") is not None
    # incremental update of the same topology: nothing restarts
    manager.update(request(MOVER))
    assert specs(manager, "mover") == before
    # thorough: every instance restarts (new digests), in one replacement
    manager.update(request(MOVER), thorough=True)
    after = specs(manager, "mover")
    assert set(after) == set(before)
    assert all(after[k][1] != before[k][1] for k in before)


def test_pending_instances_say_why(platform: Platform, manager: AppManager) -> None:
    """Fails on the old code: a Pending instance had an empty reason."""
    beat(platform, *ALL)
    manager.deploy(request(MOVER))

    def reasons() -> dict[str, str]:
        nodes = {n.name: n for n in platform.store.nodes.all()}
        return {v.name: v.reason for v in instance_views(manager, "mover", nodes)
                if v.state == "Pending"}

    got = reasons()
    assert got["mover-0"] == "waiting for its receivers sink-0 to start"
    assert got["sink-0"].startswith("node cc-1 has not fetched its assignment yet")
    cloud = platform.store.nodes.assignment(node_id("cc-1"))
    assert cloud is not None
    platform.store.nodes.mark_fetched(node_id("cc-1"), cloud.revision)
    assert reasons()["sink-0"].startswith("not yet reported by node cc-1")
    # the sink runs: its heartbeat releases the senders (through the re-plan worker)
    sink = cloud.instances[0]
    beat(platform, "cc-1", statuses=[InstanceStatus(
        app="mover", name="sink-0", component="sink", state="Running", digest=sink.digest())])
    manager._on_heartbeat(node_id("cc-1"))
    assert eventually(lambda: ("mover", "mover-0") not in manager.withheld, 5)
    assert reasons()["mover-0"].startswith("node ec-1-")
    platform.store.nodes.mark_not_ready(node_id("ec-2-rpi1"), "test")
    assert reasons()["stay-0"] == "node ec-2-rpi1 is NotReady"


def test_stored_topologies_are_parsed_once(platform: Platform, manager: AppManager) -> None:
    """Re-plans work on the typed topologies kept since deploy/load, not the stored JSON
    (fails on the old code, which parsed every stored app again on every re-plan)."""
    beat(platform, *ALL)
    manager.deploy(request(MOVER))
    with platform.store.engine.begin() as c:  # nobody reads this again
        c.execute(update(apps_table).values(spec={"not": "a topology"}))
    lost = specs(manager, "mover")["mover-0"][0]
    platform.store.nodes.mark_not_ready(node_id(lost), "test")
    assert manager.replan_all("test") == []
    assert specs(manager, "mover")["mover-0"][0] != lost
    nodes = {n.name: n for n in platform.store.nodes.all()}
    assert manager.app("mover").topology.metadata.name == "mover"  # status reads too
    assert len(instance_views(manager, "mover", nodes)) == 3


def test_transitions_coalesce_into_one_replan(platform: Platform, manager: AppManager) -> None:
    """Node transitions only mark work; a burst costs one pass of the one worker thread
    (the old code started a thread per transition)."""
    import threading

    from edgecloud.platform.hooks import NodeTransition

    beat(platform, *ALL)
    manager.deploy(request(MOVER))
    threads = threading.active_count()
    passes = manager.worker.passes
    for name in ALL:
        platform.hooks.emit(NodeTransition(node_id(name), "Ready", "test", time.time()))
    assert threading.active_count() == threads
    settles(lambda: manager.worker.passes, passes + 1, quiet_s=0.2, timeout=5,
            what="reconcile passes")


def test_restarted_platform_waits_for_the_nodes_it_knew(platform: Platform) -> None:
    """After a platform restart, a node last heard from before the start gets the start-up
    grace (an embedded `up` starts agents last: without it, every node was declared
    NotReady and every instance moved away and back); a node heard from since the start
    is judged by the usual allowance (3 x 1 s here). Fails on the old code (3 s for all)."""
    from edgecloud.platform.monitor import silent_for

    now = time.time()
    platform.started_at = now - 10
    grace = platform.config.startup_grace_s
    assert grace >= 20
    before_start = now - 100
    assert silent_for(platform, before_start, HB, now) is None
    assert silent_for(platform, before_start, HB, platform.started_at + grace + 1) is not None
    heard_since = now - 5
    assert silent_for(platform, heard_since, HB, now) is not None
    assert silent_for(platform, now - 1, HB, now) is None
