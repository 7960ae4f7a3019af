"""The platform API against a real uvicorn process: auth, tokens, join, heartbeats,
readiness, long-poll, status, metrics and `edgecloud token create`."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from edgecloud.cli.main import app as cli
from edgecloud.procutil import free_port
from edgecloud.resource.infra import Resources, load_infrastructure
from edgecloud.resource.protocol import (
    Heartbeat,
    JoinRequest,
    NodeMetrics,
    PlatformClient,
    PlatformError,
)
from edgecloud.resource.runtime import InstanceSpec, InstanceStatus
from edgecloud.resource.runtime.context import InstanceContext
from edgecloud.resource.state import RunState, SiteRuntime
from edgecloud.service import Endpoint
from tests.conftest import ADMIN_TOKEN as ADMIN
from tests.conftest import PlatformProc
from tests.support import wait_for

INFRA_FILE = Path(__file__).resolve().parents[1] / "examples" / "infra" / "local.yaml"
HB = 0.3
PLATFORM_HEARTBEAT_S = HB  # of the module's platform (tests/conftest.py)
CAM = InstanceSpec(app="demo", name="cam-0", component="cam", kind="command",
                   command=["sleep", "1"], context=InstanceContext(
                       app="demo", instance="cam-0", component="cam", site="ec-1",
                       site_kind="edge", cloud_site="cloud", node="ec-1-rpi1"))


def join(p: PlatformProc, site: str, name: str, **extra: Any) -> str:
    """Join a node by hand; returns its node token."""
    with p.admin() as c:
        token = c.create_token(site).token
    req = JoinRequest.model_validate({"site": site, "name": name, "resources": Resources(),
                                      **extra})
    with PlatformClient(p.url, token) as c:
        return c.join(req).node_token


def beat(p: PlatformProc, token: str, site: str, name: str) -> int:
    hb = Heartbeat(metrics=NodeMetrics(cpu_percent=12.5, memory_used=1 << 20,
                                       memory_total=1 << 30))
    with PlatformClient(p.url, token) as c:
        return c.heartbeat(site, name, hb).revision


def test_healthz_docs_and_registration(plat: PlatformProc) -> None:
    assert httpx.get(plat.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(plat.url + "/docs").status_code == 200
    openapi = httpx.get(plat.url + "/openapi.json").json()
    assert "/api/v1/nodes/join" in openapi["paths"]
    # The API's answers are documented by the wire models the CLI parses.
    schemas = openapi["components"]["schemas"]
    assert {"AppDetail", "AppSummary", "InstanceView", "LogPage", "DeploymentPlan",
            "PlatformStatus", "Assignment", "InstanceSpec", "InstanceContext",
            "InstanceStatus", "DeployRequest"} <= set(schemas)
    ok = openapi["paths"]["/api/v1/apps/{name}"]["get"]["responses"]["200"]
    assert ok["content"]["application/json"]["schema"]["$ref"].endswith("/AppDetail")
    assert schemas["InstanceContext"]["additionalProperties"] is False
    plat.register()  # idempotent
    with plat.admin() as c:
        assert c.infrastructure()["metadata"]["name"] == "local"
        assert [s.name for s in c.sites()] == ["cloud", "ec-1", "ec-2"]
        nodes = {n.name: n for n in c.nodes()}
        assert {"cc-1", "ec-1-pc", "ec-1-rpi1", "ec-2-rpi1"} <= set(nodes)
        rpi = c.node("ec-1", "ec-1-rpi1")
        assert rpi.id == "local/ec-1/ec-1-rpi1" and rpi.declared and rpi.labels == {
            "camera": "true"}


def test_auth_rules(plat: PlatformProc) -> None:
    with plat.http(None) as h:
        r = h.get("/nodes")
        assert r.status_code == 401 and "bearer" in r.json()["detail"]
    with plat.http("not-a-token") as h:
        assert h.get("/status").status_code == 401
    node_token = join(plat, "ec-2", "ec-2-rpi1")
    with plat.http(node_token) as h:
        r = h.get("/nodes")
        assert r.status_code == 403 and "admin" in r.json()["detail"]
        assert h.post("/tokens", json={"site": "ec-2"}).status_code == 403
        hb = {"metrics": {"cpu_percent": 1, "memory_used": 1, "memory_total": 2}}
        r = h.post("/nodes/ec-1/ec-1-pc/heartbeat", json=hb)
        assert r.status_code == 403 and "cannot act for" in r.json()["detail"]
        assert h.get("/nodes/ec-1/ec-1-pc/assignment").status_code == 403
        assert h.post("/nodes/ec-2/ec-2-rpi1/heartbeat", json=hb).status_code == 200
    with plat.http() as h:  # the admin cannot heartbeat for a node either
        assert h.get("/nodes/ec-2/ec-2-rpi1/assignment").status_code == 403
        r = h.post("/tokens", json={"site": "ec-1", "bogus": 1})
        assert r.status_code == 422 and "bogus" in r.json()["detail"]


def test_join_tokens(plat: PlatformProc) -> None:
    with plat.admin() as c:
        with pytest.raises(PlatformError) as e:
            c.create_token("nowhere")
        assert e.value.status == 404
        tok = c.create_token("ec-1", ttl_s=60)
        short = c.create_token("ec-1", ttl_s=0.2)
    assert tok.site == "ec-1"
    req = JoinRequest(site="ec-1", name="ec-1-pc", resources=Resources(cpu=2), hostname="h")
    with PlatformClient(plat.url, tok.token) as c:
        with pytest.raises(PlatformError) as e:  # wrong site: refused, token not consumed
            c.join(req.model_copy(update={"site": "ec-2"}))
        assert e.value.status == 403 and "ec-1" in e.value.detail
        resp = c.join(req)
        assert resp.node_id == "local/ec-1/ec-1-pc"
        assert resp.broker.startswith("mqtt://") and resp.heartbeat_interval_s == HB
        with pytest.raises(PlatformError) as e:
            c.join(req)
        assert e.value.status == 401 and "already used" in e.value.detail
    time.sleep(0.3)  # the clock must pass the short token's 0.2 s lifetime: no condition
    with PlatformClient(plat.url, short.token) as c, pytest.raises(PlatformError) as e:
        c.join(req)
    assert e.value.status == 401 and "expired" in e.value.detail
    with plat.http(resp.node_token) as h:  # the new node token works
        assert h.get("/nodes/ec-1/ec-1-pc/assignment").status_code == 200


def test_extension_node_and_name_clash(plat: PlatformProc) -> None:
    token = join(plat, "ec-1", "ec-1-extra", labels={"gpu": "no"})
    assert beat(plat, token, "ec-1", "ec-1-extra") == 0
    with plat.admin() as c:
        n = c.node("ec-1", "ec-1-extra")
        assert not n.declared and n.joined and n.state == "Ready" and n.labels == {"gpu": "no"}
        with pytest.raises(PlatformError) as e:
            join(plat, "ec-2", "ec-1-extra")
        assert e.value.status == 409
        c.delete_node("ec-1", "ec-1-extra")
    with plat.http(token) as h:  # a removed node's token is dead
        assert h.get("/nodes/ec-1/ec-1-extra/assignment").status_code == 401


def test_readiness_follows_heartbeats(plat: PlatformProc) -> None:
    token = join(plat, "cloud", "cc-1")
    with plat.admin() as c:
        assert c.node("cloud", "cc-1").state == "NotReady"
        t0 = time.monotonic()
        beat(plat, token, "cloud", "cc-1")
        assert c.node("cloud", "cc-1").state == "Ready"
        wait_for(lambda: c.node("cloud", "cc-1").state == "NotReady", 3 * HB + 1.0,
                 "NotReady after missed beats", every=0.05)
        assert time.monotonic() - t0 >= 3 * HB
        beat(plat, token, "cloud", "cc-1")
        assert c.node("cloud", "cc-1").state == "Ready"
        kinds = [e["kind"] for e in c.request("GET", "/events", "events")
                 if e["subject"] == "local/cloud/cc-1"]
    assert kinds[:4] == ["node.joined", "node.ready", "node.not_ready", "node.ready"]


def test_long_poll(plat: PlatformProc) -> None:
    token = join(plat, "ec-1", "ec-1-rpi1", labels={"zone": "a"}, resources=None,
                 detected=Resources(cpu=64))
    with plat.admin() as admin:  # declared labels and resources survive a bare join
        node = admin.node("ec-1", "ec-1-rpi1")
        assert node.labels == {"camera": "true", "zone": "a"} and node.resources.cpu == 4
    with PlatformClient(plat.url, token) as c:
        first = c.assignment("ec-1", "ec-1-rpi1", after=-1, wait=10)  # at once
        assert first.instances == []
        t0 = time.monotonic()
        same = c.assignment("ec-1", "ec-1-rpi1", after=first.revision, wait=0.5)
        assert same.revision == first.revision and 0.45 < time.monotonic() - t0 < 3

        got: list[Any] = []
        poller = threading.Thread(target=lambda: got.append(
            c.assignment("ec-1", "ec-1-rpi1", after=first.revision, wait=20)))
        poller.start()
        # Let the poll reach the platform first (not observable from here); if it comes
        # late, it returns at once and the timing below holds anyway.
        time.sleep(0.3)
        t0 = time.monotonic()
        with plat.http() as h:
            r = h.put("/nodes/ec-1/ec-1-rpi1/assignment",
                      json={"instances": [CAM.model_dump(mode="json")]})
            assert r.status_code == 200
        poller.join(10)
        assert time.monotonic() - t0 < 1.0, "long-poll did not return promptly"
    assert got[0].revision == first.revision + 1 and got[0].instances == [CAM]
    assert isinstance(got[0].instances[0].context, InstanceContext)


def test_status_and_metrics(plat: PlatformProc) -> None:
    token = join(plat, "ec-1", "ec-1-pc")
    beat(plat, token, "ec-1", "ec-1-pc")
    with plat.admin() as c:
        doc = c.status()
    assert doc["platform"]["url"] == plat.url and doc["infra"] == "local"
    site = next(s for s in doc["sites"] if s["name"] == "ec-1")
    assert set(site) == {"name", "kind", "broker", "files", "nodes"} and site["kind"] == "edge"
    node = next(n for n in site["nodes"] if n["name"] == "ec-1-pc")
    assert set(node) == {"name", "id", "state", "labels", "resources", "last_heartbeat",
                         "metrics"}
    assert node["id"] == "local/ec-1/ec-1-pc" and node["state"] in ("Ready", "NotReady")
    assert node["metrics"]["cpu_percent"] == 12.5 and node["last_heartbeat"].endswith("Z")
    text = httpx.get(plat.url + "/metrics").text
    assert 'edgecloud_node_ready{node="ec-1-pc",site="ec-1"}' in text
    assert 'edgecloud_node_cpu_percent{node="ec-1-pc",site="ec-1"} 12.5' in text
    assert 'edgecloud_node_memory_total_bytes{node="ec-1-pc",site="ec-1"}' in text
    assert 'edgecloud_node_heartbeats_total{node="ec-1-pc",site="ec-1"}' in text


def test_other_infrastructure_refused(plat: PlatformProc) -> None:
    data = load_infrastructure(INFRA_FILE).model_dump(by_alias=True)
    data["metadata"]["name"] = "other"
    sites = {s["name"]: {"broker": "mqtt://x:1", "files": "http://x:2", "platform": plat.url}
             for s in data["spec"]["sites"]}
    with plat.http() as h:
        r = h.put("/infrastructure", json={"infrastructure": data, "sites": sites})
        assert r.status_code == 409 and "local" in r.json()["detail"]
        del sites["ec-2"]
        data["metadata"]["name"] = "local"
        r = h.put("/infrastructure", json={"infrastructure": data, "sites": sites})
        assert r.status_code == 422 and "ec-2" in r.json()["detail"]


def test_token_create_command(plat: PlatformProc, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "admin.token").write_text(ADMIN)
    os.chmod(home / "admin.token", 0o600)
    route = Endpoint(port=free_port())
    sites = [SiteRuntime(name="cloud", kind="cloud", broker=Endpoint(port=1), files=Endpoint(
        port=2)), SiteRuntime(name="ec-2", kind="edge", broker=Endpoint(port=3),
                              files=Endpoint(port=4), routes={"platform": route})]
    state = RunState(infra="local", infra_file=INFRA_FILE, home=home, supervisor_pid=os.getpid(),
                     broker_kind="amqtt", platform=plat.endpoint, sites=sites)
    (home / "state.json").write_text(state.model_dump_json())
    runner = CliRunner()
    r = runner.invoke(cli, ["token", "create", "--site", "ec-2", "--ttl", "10m", "--home",
                            str(home)])
    assert r.exit_code == 0, r.output
    assert f"edgecloud agent --platform {route.url('http')} --token " in r.output
    assert "--site ec-2 --name <NODE-NAME>" in r.output
    token = r.output.split("--token ")[1].split()[0]
    with PlatformClient(plat.url, token) as c:  # the printed token joins
        assert c.join(JoinRequest(site="ec-2", name="ec-2-cli", resources=Resources())).node_id
    r = runner.invoke(cli, ["token", "create", "--site", "ec-2", "--json", "--home", str(home)])
    assert r.exit_code == 0 and '"token"' in r.output
    r = runner.invoke(cli, ["token", "create", "--site", "nowhere", "--home", str(home)])
    assert r.exit_code != 0 and "nowhere" in r.output
    r = runner.invoke(cli, ["token", "create", "--site", "ec-2", "--home", str(tmp_path)])
    assert r.exit_code != 0 and "no edgecloud infrastructure is running" in r.output


def test_typed_heartbeat_and_assignment_round_trip(plat: PlatformProc) -> None:
    """Instances travel as typed models both ways; unknown keys are refused (422)."""
    token = join(plat, "ec-2", "ec-2-typed")
    status = InstanceStatus(app="demo", name="cam-0", component="cam", state="Running",
                            digest=CAM.digest(), restarts=2, pid=1234)
    hb = Heartbeat(metrics=NodeMetrics(cpu_percent=1, memory_used=1, memory_total=2),
                   instances=[status], problems=["cannot fetch bundle"])
    with PlatformClient(plat.url, token) as c:
        resp = c.heartbeat("ec-2", "ec-2-typed", hb)
        # The site's current endpoints come back (agents follow moved services).
        assert resp.broker == "mqtt://127.0.0.1:1885" and resp.files == "http://127.0.0.1:9002"
    with plat.http() as h:
        r = h.put("/nodes/ec-2/ec-2-typed/assignment",
                  json={"instances": [CAM.model_dump(mode="json")]})
        assert r.status_code == 200
        bad = CAM.model_dump(mode="json")
        bad["context"]["bundle_python_path_typo"] = ["x"]
        r = h.put("/nodes/ec-2/ec-2-typed/assignment", json={"instances": [bad]})
        assert r.status_code == 422 and "bundle_python_path_typo" in r.json()["detail"]
    with PlatformClient(plat.url, token) as c:
        got = c.assignment("ec-2", "ec-2-typed", after=-1)
    assert got.instances == [CAM] and got.instances[0].digest() == CAM.digest()
    with PlatformClient(plat.url, token) as c:
        r = c._http.post("/nodes/ec-2/ec-2-typed/heartbeat", json={
            "metrics": hb.metrics.model_dump(), "instances": [{"app": "demo"}]})
    assert r.status_code == 422 and "instances[0]" in r.json()["detail"]


APP = """apiVersion: edgecloud/v1
kind: Application
metadata: {name: mapped}
spec:
  components:
    - {name: %s, command: [sleep, "100"], site: cloud%s}
"""


def deploy_body(name: str = "worker", extra: str = "") -> dict[str, Any]:
    import yaml

    return {"topology": yaml.safe_load(APP % (name, extra))}


def test_api_errors_are_mapped_in_one_place(plat: PlatformProc) -> None:
    """Each kind of user error has its status, with a readable `detail`, from the one
    exception mapping (no route catches errors itself)."""
    token = join(plat, "cloud", "cc-api", resources=Resources(cpu=2, memory=1 << 30))
    with plat.http() as h:
        assert h.get("/apps/nope").status_code == 404
        assert h.get("/apps/nope/plan").status_code == 404
        assert h.delete("/apps/nope").status_code == 404
        r = h.post("/apps", json=deploy_body("controller"))
        assert r.status_code == 422 and "spec.components[0].name" in r.json()["detail"] \
            and "reserved" in r.json()["detail"]
        r = h.post("/apps", json={**deploy_body(), "colour": "red"})
        assert r.status_code == 422 and "colour" in r.json()["detail"]
        r = h.post("/apps", json=deploy_body(extra=", site: ec-9"))
        assert r.status_code == 422
        beat(plat, token, "cloud", "cc-api")
        r = h.post("/apps", json=deploy_body(extra=", replicas: 500, resources: {cpu: 2}"))
        assert r.status_code == 409 and r.json()["detail"].startswith("no deployment plan: ")
        beat(plat, token, "cloud", "cc-api")
        r = h.post("/apps", json=deploy_body())
        assert r.status_code == 201, r.text
        assert r.json()["app"] == "mapped" and "topology" in r.json()
        r = h.post("/apps", json=deploy_body())
        assert r.status_code == 409 and "already deployed" in r.json()["detail"]
        r = h.put("/apps/other", json=deploy_body())
        assert r.status_code == 422
        r = h.get("/apps/mapped/logs", params={"select": "nothing"})
        assert r.status_code == 404 and "known: worker" in r.json()["detail"]
        assert h.delete("/apps/mapped").status_code == 204
