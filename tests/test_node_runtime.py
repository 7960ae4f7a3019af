"""The node side of the typed contract: a typed assignment becomes running processes whose
context carries the node's own current endpoints (real processes, no platform)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from edgecloud.resource.node import NodeRuntime
from edgecloud.resource.runtime import InstanceSpec
from edgecloud.resource.runtime.context import InstanceContext
from tests.support import eventually

SLEEPER = "import time; time.sleep(300)"


def spec(name: str = "w-0") -> InstanceSpec:
    ctx = InstanceContext(app="demo", instance=name, component="w", site="ec-1",
                          site_kind="edge", cloud_site="cloud", node="n1")
    return InstanceSpec(app="demo", name=name, component="w", kind="command",
                        command=[sys.executable, "-c", SLEEPER], context=ctx)


def context_of(tmp_path: Path, name: str = "w-0") -> dict[str, object]:
    return json.loads((tmp_path / "instances" / "demo" / name / "context.json").read_text())


def pid_of(node: NodeRuntime) -> int | None:
    statuses, _ = node.report()
    return next((s.pid for s in statuses if s.state == "Running"), None)


def test_endpoints_come_from_the_node_and_follow_it(tmp_path: Path) -> None:
    """The platform sends no broker/file URLs; the node fills in its current ones, and a
    change of them (services moved after `down` + `up`) restarts the instances with the
    new ones, while setting the same ones again restarts nothing."""
    node = NodeRuntime(tmp_path, "ec-1", "http://127.0.0.1:9001", "mqtt://127.0.0.1:1884")
    try:
        assigned = spec()
        assert assigned.context is not None and assigned.context.broker_url == ""
        node.apply([assigned])
        assert eventually(lambda: pid_of(node) is not None, 10)
        first = pid_of(node)
        ctx = context_of(tmp_path)
        assert ctx["broker_url"] == "mqtt://127.0.0.1:1884"
        assert ctx["files_url"] == "http://127.0.0.1:9001"
        assert ctx["instance_dir"] == str(tmp_path / "instances" / "demo" / "w-0")
        # the heartbeat reports the digest of what the platform assigned
        statuses, _ = node.report()
        assert [s.digest for s in statuses] == [assigned.digest()]

        node.set_endpoints("mqtt://127.0.0.1:1884", "http://127.0.0.1:9001")
        assert pid_of(node) == first

        node.set_endpoints("mqtt://127.0.0.1:2884", "http://127.0.0.1:9501")
        assert eventually(lambda: pid_of(node) not in (None, first), 10)
        assert context_of(tmp_path)["broker_url"] == "mqtt://127.0.0.1:2884"
        statuses, _ = node.report()
        assert [s.digest for s in statuses] == [assigned.digest()]
    finally:
        node.close()


def test_an_instance_it_cannot_prepare_is_reported_pending_with_why(tmp_path: Path) -> None:
    """The node reports what it could not start (a bundle it cannot fetch) as Pending with
    the reason, instead of leaving the platform to guess; the others run."""
    from edgecloud.resource.files import FileRef

    node = NodeRuntime(tmp_path, "ec-1", "http://127.0.0.1:9", "mqtt://127.0.0.1:1884")
    try:
        good = spec("w-0")
        ref = FileRef(site="cloud", key="apps/demo/bundle.tgz", size=10, sha256="ab" * 32)
        assert good.context is not None
        bad = spec("w-1").model_copy(update={"context": good.context.model_copy(
            update={"instance": "w-1", "bundle": ref})})
        node.apply([good, bad])
        statuses = {s.name: s for s in node.report()[0]}
        assert statuses["w-1"].state == "Pending"
        assert statuses["w-1"].reason.startswith("cannot prepare: ")
        assert statuses["w-1"].digest == bad.digest()
        assert eventually(lambda: pid_of(node) is not None, 10)
        node.apply([good])  # no longer assigned: no longer reported
        assert {s.name for s in node.report()[0]} == {"w-0"}
    finally:
        node.close()
