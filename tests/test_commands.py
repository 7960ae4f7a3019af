"""`POST /api/v1/apps/{name}/commands` against a real platform process and a real cloud
broker: what a subscriber on the cloud broker receives, the errors (404, 422, 401/403),
and a broker that is down or not answering (503, then back to 200 once it is back).

No agents run here: the app is deployed by the API only, so it exists and has instances
at two sites (cloud, ec-1), which is all the route needs. tests/test_client.py sends
commands to running components through the bridges of a whole embedded run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgecloud.application import topics
from edgecloud.application.messages import ControllerCommand
from edgecloud.application.topology import load_application
from edgecloud.application.wire import DeployRequest
from edgecloud.client import Client
from edgecloud.procutil import free_port
from edgecloud.resource.broker import mosquitto_path
from edgecloud.resource.infra import Resources, load_infrastructure
from edgecloud.resource.mqtt import MqttClient
from edgecloud.resource.protocol import (
    Heartbeat,
    JoinRequest,
    NodeMetrics,
    PlatformClient,
    PlatformError,
    RegisterInfrastructure,
    SiteEndpoints,
)
from tests.conftest import ADMIN_TOKEN as ADMIN
from tests.conftest import BrokerProc, PlatformProc
from tests.support import collector, eventually

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]
INFRA_FILE = ROOT / "examples/infra/local.yaml"
RECORDER = Path(__file__).parent / "apps/recorder/recorder.yaml"
APP = "recorder"


# Long heartbeats: the nodes joined by hand below stay Ready for the whole module.
PLATFORM_HEARTBEAT_S = 60


@dataclass
class Plat:
    url: str
    broker: BrokerProc
    node_token: str

    def client(self) -> Client:
        return Client(self.url, ADMIN)


@pytest.fixture(scope="module")
def plat(plat: PlatformProc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plat]:
    """The module's platform (tests/conftest.py) with the cloud site's broker running,
    two nodes Ready and the recorder app deployed."""
    kind = "mosquitto" if mosquitto_path() else "amqtt"
    with BrokerProc(tmp_path_factory.mktemp("commands"), kind, "broker", "cloud") as broker:
        yield Plat(plat.url, broker, _register_and_deploy(plat.url, broker.url))


def _register_and_deploy(url: str, cloud_broker: str) -> str:
    """Register local.yaml (only the cloud broker is real: commands never use the edge
    brokers), make two nodes Ready, deploy the recorder app; returns a node token."""
    infra = load_infrastructure(INFRA_FILE)
    sites = {s.name: SiteEndpoints(broker=cloud_broker if s.kind == "cloud"
                                   else f"mqtt://127.0.0.1:{free_port()}",
                                   files=f"http://127.0.0.1:{free_port()}", platform=url)
             for s in infra.spec.sites}
    token = ""
    with PlatformClient(url, ADMIN) as admin:
        admin.register_infrastructure(RegisterInfrastructure(infrastructure=infra, sites=sites))
        for site, node in (("cloud", "cc-1"), ("ec-1", "ec-1-rpi1"), ("ec-2", "ec-2-rpi1")):
            join = admin.create_token(site).token
            with PlatformClient(url, join) as c:
                token = c.join(JoinRequest(site=site, name=node, resources=Resources())
                               ).node_token
            with PlatformClient(url, token) as c:
                c.heartbeat(site, node, Heartbeat(metrics=NodeMetrics(
                    cpu_percent=1, memory_used=1 << 20, memory_total=1 << 30)))
        app = load_application(RECORDER, infra)
        req = DeployRequest(topology=app, source_dir=str(RECORDER.parent))
        admin.request("POST", "/apps", "deploy", json=req.model_dump(mode="json", by_alias=True))
    return token


@pytest.fixture
def received(plat: Plat) -> Iterator[list[Any]]:
    """Every command message published on the cloud broker for the app, any site."""
    got, handler = collector()
    sub = MqttClient(plat.broker.url, src="test-sub").connect()
    assert sub.subscribe(topics.commands("+", APP), handler, wait=10)
    yield got
    sub.close(flush_timeout=0)


def test_command_reaches_every_site_of_the_app_through_the_cloud_broker(
        plat: Plat, received: list[Any]) -> None:
    with plat.client() as ec:
        assert [i.site for i in ec.app(APP).instances].count("ec-1") == 1
        result = ec.send_command(APP, "note", component="recorder", text="hello", n=3)
    assert result.sites == ["cloud", "ec-1", "ec-2"]  # where the app has instances
    assert eventually(lambda: len(received) >= 3)
    assert sorted(m.topic for m in received) == sorted(topics.commands(s, APP)
                                                       for s in result.sites)
    for m in received:
        assert ControllerCommand.model_validate(m.body) == ControllerCommand(
            op="note", component="recorder", args={"text": "hello", "n": 3})
        assert m.src == "platform"


def test_command_for_chosen_sites_only(plat: Plat, received: list[Any]) -> None:
    cmd = ControllerCommand(op="set", args={"component": "a key the kwargs cannot carry"})
    with plat.client() as ec:
        assert ec.send_command(APP, cmd, sites=["ec-2", "ec-2"]).sites == ["ec-2"]
    assert eventually(lambda: len(received) >= 1)
    assert [m.topic for m in received] == [topics.commands("ec-2", APP)]
    assert ControllerCommand.model_validate(received[0].body) == cmd


def test_unknown_app_and_site_and_bad_command_are_refused(plat: Plat,
                                                          received: list[Any]) -> None:
    with plat.client() as ec:
        with pytest.raises(PlatformError) as err:
            ec.send_command("no-such-app", "set", x=1)
        assert err.value.status == 404 and "no application 'no-such-app'" in err.value.detail
        with pytest.raises(PlatformError) as err:
            ec.send_command(APP, "set", sites=["ec-1", "ec-9", "mars"], x=1)
        assert err.value.status == 422
        assert "'ec-9', 'mars'" in err.value.detail and "cloud, ec-1, ec-2" in err.value.detail
        with pytest.raises(PlatformError) as err:
            ec.send_command(APP, "set", sites=[])
        assert err.value.status == 422
    with httpx.Client(base_url=plat.url + "/api/v1",
                      headers={"Authorization": f"Bearer {ADMIN}"}) as h:
        r = h.post(f"/apps/{APP}/commands", json={"command": {"op": ""}})
        assert r.status_code == 422 and "command.op" in r.json()["detail"]
        r = h.post(f"/apps/{APP}/commands", json={"command": {"op": "set"}, "bogus": 1})
        assert r.status_code == 422 and "bogus" in r.json()["detail"]
    assert not received  # nothing was published for any refused command


def test_commands_need_the_admin_token(plat: Plat, received: list[Any]) -> None:
    body = {"command": {"op": "terminate"}}
    with httpx.Client(base_url=plat.url + "/api/v1") as h:
        r = h.post(f"/apps/{APP}/commands", json=body)
        assert r.status_code == 401 and "bearer" in r.json()["detail"]
        r = h.post(f"/apps/{APP}/commands", json=body,
                   headers={"Authorization": "Bearer not-a-token"})
        assert r.status_code == 401
        r = h.post(f"/apps/{APP}/commands", json=body,
                   headers={"Authorization": f"Bearer {plat.node_token}"})
        assert r.status_code == 403 and "admin token" in r.json()["detail"]
    assert not received


def test_route_is_documented(plat: Plat) -> None:
    doc = httpx.get(plat.url + "/openapi.json").json()
    op = doc["paths"]["/api/v1/apps/{name}/commands"]["post"]
    assert op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/CommandRequest")
    assert op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/CommandResult")


def test_broker_down_is_503_and_commands_work_again_once_it_is_back(plat: Plat) -> None:
    with plat.client() as ec:
        ec.send_command(APP, "set", x=1)  # the publisher is connected now
        plat.broker.stop()
        try:
            with pytest.raises(PlatformError) as err:
                ec.send_command(APP, "set", x=2)
            assert err.value.status == 503
            assert plat.broker.url in err.value.detail
            # Usually the publisher has seen the connection drop ("cannot connect"); if the
            # drop is not noticed yet, the publish goes unacknowledged instead.
            assert ("is the broker running" in err.value.detail
                    or "did not acknowledge" in err.value.detail), err.value.detail
        finally:
            plat.broker.start()
        assert ec.send_command(APP, "set", x=3).sites == ["cloud", "ec-1", "ec-2"]


def test_broker_that_does_not_acknowledge_is_503(plat: Plat, received: list[Any]) -> None:
    with plat.client() as ec:
        ec.send_command(APP, "set", x=1)
        plat.broker.pause()  # connected, but never answers
        try:
            with pytest.raises(PlatformError) as err:
                ec.send_command(APP, "set", x=2)
        finally:
            plat.broker.resume()
        assert err.value.status == 503
        assert "did not acknowledge the command" in err.value.detail
        received.clear()
        assert ec.send_command(APP, "set", x=3, sites=["ec-1"]).sites == ["ec-1"]
    assert eventually(lambda: any(m.body["args"] == {"x": 3} for m in received))
