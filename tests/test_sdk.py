"""The SDK end to end on one real broker: runner processes, send, metrics, faults."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgecloud.application.context import ControllerInfo, InstanceContext, Peer
from edgecloud.resource.runtime import InstanceSpec, ProcessRuntime
from tests.conftest import BrokerProc
from tests.support import wait_for

APPS = Path(__file__).parent / "apps"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[str]:
    # One per test: the instances' persistent sessions (same client ids in every test)
    # must not carry messages from one test into the next.
    with BrokerProc(tmp_path, "amqtt") as b:
        yield b.url


def wait_json(path: Path, pred: object, timeout: float = 20.0) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    data: dict = {}  # type: ignore[type-arg]
    while time.monotonic() < deadline:
        try:
            data = json.loads(path.read_text())
            if pred(data):  # type: ignore[operator]
                return data
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"{path}: condition not met; last {data}")


@pytest.mark.parametrize("setup_delay", [0.0, 4.0])
def test_relay_app_end_to_end(tmp_path: Path, broker: str, setup_delay: float) -> None:
    """With setup_delay, the source sends while the sink is still in its setup: the
    messages wait in its inbox and on_message sees a set-up component."""
    out = tmp_path / "sink.json"
    members = [Peer(instance="source-0", component="source", site="cloud"),
               Peer(instance="relay-0", component="relay", site="cloud"),
               Peer(instance="sink-0", component="sink", site="cloud")]
    conns = {"source": ["relay"], "relay": ["sink"], "sink": []}
    params = {"source": {"count": 50}, "sink": {"out": str(out), "setup_delay": setup_delay}}
    ctrl = ControllerInfo(params={"alpha": 0.9})

    def spec(comp: str) -> InstanceSpec:
        ctx = InstanceContext(
            app="t", instance=f"{comp}-0", component=comp, site="cloud", site_kind="cloud",
            cloud_site="cloud", node="n1", broker_url=broker, files_url="http://127.0.0.1:9",
            entry=f"sdk_app:{comp.capitalize()}", source_dir=str(APPS),
            params=params.get(comp, {}), members=members, controller=ctrl,
            peers={c: [p for p in members if p.component == c] for c in conns[comp]})
        return InstanceSpec(app="t", name=f"{comp}-0", component=comp,
                            context=ctx.model_dump(mode="json"))

    rt = ProcessRuntime(tmp_path / "node", python=sys.executable)
    try:
        rt.apply([spec("sink"), spec("relay")])

        def receivers_subscribed() -> bool:  # Running = the runner touched its ready file
            return sorted(s.state for s in rt.statuses()) == ["Running", "Running"]
        wait_for(receivers_subscribed, 30, "the receivers to subscribe")
        rt.apply([spec("sink"), spec("relay"), spec("source")])
        data = wait_json(out, lambda d: len(d["seen"]) == 50, timeout=20 + setup_delay)
        assert data["seen"] == [i for i in range(50) if i != 3] + ["raw"]  # in order
        assert data["sender"] == "relay"
        assert data["decision"] == "escalate"  # BasicPolicy with alpha 0.9 from params
        # the snapshot is written every 2 s: wait until it counts all 50 (it never exceeds)
        metrics = wait_json(tmp_path / "node/instances/t/sink-0/metrics.json",
                            lambda d: _received(d) >= 50)
        assert _received(metrics) == 50
        # the relay survived the bad message and says why in its log
        relay = next(s for s in rt.statuses() if s.name == "relay-0")
        assert relay.state == "Running" and relay.restarts == 0
        assert "relay chokes on message 3" in rt.log_path("t", "relay-0").read_text()
        assert "on_message failed" not in rt.log_path("t", "sink-0").read_text()
    finally:
        rt.close()


def _received(metrics: dict) -> float:  # type: ignore[type-arg]
    """The sink's `received` counter in a metrics snapshot (0 before it exists)."""
    family = next((m for m in metrics.get("metrics", []) if m["name"] == "received"), None)
    return float(family["samples"][0][2]) if family else 0.0
