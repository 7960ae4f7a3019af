"""Compose and Kubernetes exports of the relay example's plan."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from edgecloud.application.context import InstanceContext
from edgecloud.application.plan import DeploymentPlan
from edgecloud.application.topology import load_application
from edgecloud.cli.main import app as cli
from edgecloud.platform.export import IMAGE, export_compose, export_k8s
from edgecloud.platform.orchestrator import PlacementNode, place
from edgecloud.resource.infra import Infrastructure, load_infrastructure

ROOT = Path(__file__).resolve().parent.parent
RELAY = ROOT / "examples/relay/relay.yaml"
INFRA = ROOT / "examples/infra/ace-testbed.yaml"
SCHEMA = Path(__file__).parent / "data/compose_spec.json"
LABELS = ("edgecloud.io/app", "edgecloud.io/component", "edgecloud.io/instance")


@pytest.fixture(scope="module")
def infra() -> Infrastructure:
    return load_infrastructure(INFRA)


@pytest.fixture(scope="module")
def plan(infra: Infrastructure) -> DeploymentPlan:
    app = load_application(RELAY, infra)
    nodes = [PlacementNode(name=n.name, site=s.name, site_kind=s.kind, labels=n.labels,
                      resources=n.resources) for s in infra.spec.sites for n in s.nodes]
    return place([app], nodes)[app.name]


@pytest.fixture(scope="module")
def sites(infra: Infrastructure) -> dict[str, dict[str, str]]:
    return {s.name: {"kind": s.kind, "broker": f"mqtt://broker.{s.name}:1883",
                     "files": f"http://files.{s.name}:8080"} for s in infra.spec.sites}


def test_compose_files_validate(plan: DeploymentPlan, sites: dict[str, Any],
                                tmp_path: Path) -> None:
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft201909Validator(schema)  # its $schema URI is not canonical
    assert list(validator.iter_errors({"services": {"x": {"imagee": "y"}}}))  # it does check
    files = export_compose(plan, sites, tmp_path)
    assert sorted(f.name for f in files) == sorted(f"{n}.compose.yaml" for n in plan.by_node())
    seen = set()
    for f in files:
        doc = yaml.safe_load(f.read_text())
        errors = [e.message for e in validator.iter_errors(doc)]
        assert not errors, (f.name, errors)
        node = f.name.removesuffix(".compose.yaml")
        for svc in doc["services"].values():
            inst = svc["labels"]["edgecloud.io/instance"]
            seen.add(inst)
            assert set(LABELS) <= set(svc["labels"])
            assert svc["image"] == IMAGE
            assert svc["command"] == ["python", "-m", "edgecloud.application.runner"]
            assert svc["restart"] == "always"
            comp = plan.application.component(svc["labels"]["edgecloud.io/component"])
            assert float(svc["deploy"]["resources"]["limits"]["cpus"]) == comp.resources.cpu
            assert svc["deploy"]["resources"]["limits"]["memory"].endswith("M")
            # the mounted context file exists next to the compose file and is this instance's
            host, target, _ = svc["volumes"][0].split(":")
            assert target == svc["environment"]["EDGECLOUD_CONTEXT"]
            ctx = InstanceContext.model_validate_json((tmp_path / host).read_text())
            assert (ctx.instance, ctx.node) == (inst, node)
            assert ctx.broker_url == sites[ctx.site]["broker"]
    assert seen == {i.name for i in plan.instances}


class FakeResponse:
    """What kubernetes.client.ApiClient.deserialize reads: `.data` (JSON text)."""

    def __init__(self, obj: Any) -> None:
        self.data = json.dumps(obj)


def test_k8s_manifests_deserialize(plan: DeploymentPlan, sites: dict[str, Any],
                                   tmp_path: Path) -> None:
    kubernetes = pytest.importorskip("kubernetes")
    api = kubernetes.client.ApiClient()
    files = export_k8s(plan, sites, tmp_path)
    deployments, maps = {}, {}
    for f in files:
        doc = yaml.safe_load(f.read_text())
        kind = {"Deployment": "V1Deployment", "ConfigMap": "V1ConfigMap"}[doc["kind"]]
        obj = api.deserialize(FakeResponse(doc), kind)
        if kind == "V1Deployment":
            deployments[obj.metadata.labels["edgecloud.io/instance"]] = obj
        else:
            maps[obj.metadata.labels["edgecloud.io/component"]] = obj
    assert set(deployments) == {i.name for i in plan.instances}
    assert set(maps) == {c.name for c in plan.application.spec.components}
    for inst in plan.instances:
        d = deployments[inst.name]
        assert set(LABELS) <= set(d.metadata.labels)
        assert d.spec.replicas == 1
        pod = d.spec.template.spec
        assert pod.node_selector == {"kubernetes.io/hostname": inst.node}
        assert d.spec.selector.match_labels.items() <= d.spec.template.metadata.labels.items()
        [c] = pod.containers
        assert c.image == IMAGE
        comp = plan.application.component(inst.component)
        assert c.resources.limits["cpu"] == f"{round(comp.resources.cpu * 1000)}m"
        assert c.resources.requests == c.resources.limits
        env = {e.name: e.value for e in c.env}
        assert env["EDGECLOUD_INSTANCE"] == inst.name
        assert c.volume_mounts[0].mount_path + "/context.json" == env["EDGECLOUD_CONTEXT"]
        cm = maps[inst.component]
        assert pod.volumes[0].config_map.name == cm.metadata.name
        ctx = InstanceContext.model_validate_json(cm.data[f"{inst.name}.json"])
        assert (ctx.node, ctx.site) == (inst.node, inst.site)
        assert json.loads(cm.data["params.json"]) == comp.params


def test_cli_export_offline(tmp_path: Path) -> None:
    runner = CliRunner()
    for fmt in ("compose", "k8s"):
        r = runner.invoke(cli, ["app", "export", str(RELAY), "--format", fmt, "-o",
                                str(tmp_path / fmt), "--infra", str(INFRA)])
        assert r.exit_code == 0, r.output
        assert list((tmp_path / fmt).glob("*.yaml"))
