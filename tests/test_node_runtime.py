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
