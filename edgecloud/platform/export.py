"""Export a deployment plan as docker compose files or Kubernetes manifests.

A site that is a cluster is driven through its own tooling instead of edgecloud agents:

- `export_compose(plan, sites, out_dir)`: one `<node>.compose.yaml` per node, a service
  per instance (the edgecloud runtime image running the SDK runner, or the component's
  command) with its instance context mounted from `<node>.context/<instance>.json`;
- `export_k8s(plan, sites, out_dir)`: a ConfigMap per component (params and every
  instance's context) and a Deployment per instance pinned to its node.

`sites` maps each site of the plan to its service endpoints: anything with `broker` and
`files` URLs (attributes or keys) and optionally `kind` (cloud | edge; a site named
`cloud` is the cloud otherwise).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel

from edgecloud import __version__
from edgecloud.application.context import CONTEXT_ENV, InstanceContext, Peer
from edgecloud.application.plan import DeploymentPlan, Instance
from edgecloud.application.topology import ComponentSpec
from edgecloud.errors import UserError

IMAGE = f"edgecloud/runtime:{__version__}"
RUNNER = ["python", "-m", "edgecloud.application.runner"]
CONTEXT_DIR = "/etc/edgecloud"
CONTEXT_PATH = f"{CONTEXT_DIR}/context.json"
APP_DIR = "/app"
LABEL = "edgecloud.io"


class SiteEndpoints(BaseModel):
    """Where a site's message broker and file server are reachable from its nodes."""

    broker: str
    files: str
    kind: Literal["cloud", "edge"] | None = None


def site_endpoints(sites: Mapping[str, Any]) -> dict[str, SiteEndpoints]:
    """Normalise SiteEndpoints-like values (models, mappings, objects with attributes)."""
    out = {}
    for name, v in sites.items():
        if isinstance(v, SiteEndpoints):
            out[name] = v
        elif isinstance(v, Mapping):
            out[name] = SiteEndpoints.model_validate(dict(v))
        else:
            out[name] = SiteEndpoints(broker=str(v.broker), files=str(v.files),
                                      kind=getattr(v, "kind", None))
    return out


def labels(plan: DeploymentPlan, inst: Instance) -> dict[str, str]:
    return {f"{LABEL}/app": plan.app, f"{LABEL}/component": inst.component,
            f"{LABEL}/instance": inst.name}


def instance_contexts(plan: DeploymentPlan, sites: Mapping[str, Any]
                      ) -> dict[str, InstanceContext]:
    """The context of every instance, as the platform would hand it to an agent."""
    eps = site_endpoints(sites)
    missing = sorted({i.site for i in plan.instances} - set(eps))
    if missing:
        raise UserError(f"no endpoints for site(s) {', '.join(missing)} of {plan.app!r}")
    cloud = next((s for s, e in eps.items() if e.kind == "cloud"),
                 "cloud" if "cloud" in eps else None)
    if cloud is None:
        raise UserError("no cloud site among the site endpoints (give one `kind: cloud`)")
    app = plan.application
    members = [Peer(instance=i.name, component=i.component, site=i.site)
               for i in plan.instances]
    out = {}
    for inst in plan.instances:
        comp = app.component(inst.component)
        ep = eps[inst.site]
        out[inst.name] = InstanceContext(
            app=plan.app, instance=inst.name, component=inst.component, site=inst.site,
            site_kind=ep.kind or ("cloud" if inst.site == cloud else "edge"),
            cloud_site=cloud, node=inst.node, broker_url=ep.broker, files_url=ep.files,
            entry=comp.entry or "", source_dir=APP_DIR,
            python_path=[f"{APP_DIR}/{p}" for p in app.spec.python_path],
            params=dict(comp.params),
            peers={t: [m for m in members if m.component == t] for t in comp.connections},
            members=members)
    return out


def _command(comp: ComponentSpec) -> list[str]:
    return list(comp.command) if comp.command else list(RUNNER)


def _env(plan: DeploymentPlan, inst: Instance, comp: ComponentSpec) -> dict[str, str]:
    return {**comp.env, CONTEXT_ENV: CONTEXT_PATH, "EDGECLOUD_APP": plan.app,
            "EDGECLOUD_INSTANCE": inst.name}


def _mib(memory: int) -> int:
    return max(1, math.ceil(memory / (1 << 20)))


class _PlainDumper(yaml.SafeDumper):
    """No anchors/aliases: every manifest reads on its own."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _dump(path: Path, doc: Any) -> Path:
    path.write_text(yaml.dump(doc, Dumper=_PlainDumper, sort_keys=False))
    return path


# -- docker compose ---------------------------------------------------------------------------
def compose_service(plan: DeploymentPlan, inst: Instance, context_file: str) -> dict[str, Any]:
    """One compose service for one instance."""
    comp = plan.application.component(inst.component)
    res = comp.resources
    deploy: dict[str, Any] = {"resources": {"limits": {
        "cpus": f"{res.cpu:g}", "memory": f"{_mib(res.memory)}M"}}}
    if res.gpu:
        deploy["resources"]["reservations"] = {"devices": [
            {"capabilities": ["gpu"], "count": res.gpu}]}
    volumes = [f"{context_file}:{CONTEXT_PATH}:ro"]
    if plan.application.source_dir is not None:
        volumes.append(f"{plan.application.source_dir}:{APP_DIR}:ro")
    return {"image": IMAGE, "command": _command(comp), "working_dir": APP_DIR,
            "environment": _env(plan, inst, comp), "volumes": volumes,
            "restart": "always", "labels": labels(plan, inst), "deploy": deploy}


def export_compose(plan: DeploymentPlan, sites: Mapping[str, Any], out_dir: Path
                   ) -> list[Path]:
    """Write `<node>.compose.yaml` (and its instances' contexts) per node; returns the
    compose files."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    contexts = instance_contexts(plan, sites)
    written = []
    for node, insts in sorted(plan.by_node().items()):
        ctx_dir = out_dir / f"{node}.context"
        ctx_dir.mkdir(exist_ok=True)
        services = {}
        for inst in insts:
            ctx_file = ctx_dir / f"{inst.name}.json"
            ctx_file.write_text(contexts[inst.name].model_dump_json(indent=2))
            services[f"{plan.app}-{inst.name}"] = compose_service(
                plan, inst, f"./{ctx_dir.name}/{ctx_file.name}")
        written.append(_dump(out_dir / f"{node}.compose.yaml", {"services": services}))
    return written


# -- kubernetes ---------------------------------------------------------------------------------
def _quantities(comp: ComponentSpec) -> dict[str, str]:
    q = {"cpu": f"{max(1, round(comp.resources.cpu * 1000))}m",
         "memory": f"{_mib(comp.resources.memory)}Mi"}
    if comp.resources.gpu:
        q["nvidia.com/gpu"] = str(comp.resources.gpu)
    return q


def configmap(plan: DeploymentPlan, component: str,
              contexts: dict[str, InstanceContext]) -> dict[str, Any]:
    """A component's ConfigMap: `params.json` and `<instance>.json` contexts."""
    comp = plan.application.component(component)
    data = {"params.json": json.dumps(comp.params, indent=2)}
    for inst in plan.instances_of(component):
        data[f"{inst.name}.json"] = contexts[inst.name].model_dump_json(indent=2)
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": f"{plan.app}-{component}",
                         "labels": {f"{LABEL}/app": plan.app,
                                    f"{LABEL}/component": component}},
            "data": data}


def deployment(plan: DeploymentPlan, inst: Instance) -> dict[str, Any]:
    """A one-replica Deployment for an instance, pinned to its node."""
    comp = plan.application.component(inst.component)
    lab = labels(plan, inst)
    env = [{"name": k, "value": v} for k, v in _env(plan, inst, comp).items()]
    container = {
        "name": inst.component, "image": IMAGE, "command": _command(comp),
        "workingDir": APP_DIR, "env": env,
        "resources": {"requests": _quantities(comp), "limits": _quantities(comp)},
        "volumeMounts": [{"name": "context", "mountPath": CONTEXT_DIR, "readOnly": True}]}
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": f"{plan.app}-{inst.name}", "labels": lab},
            "spec": {"replicas": 1,
                     "selector": {"matchLabels": {f"{LABEL}/app": plan.app,
                                                  f"{LABEL}/instance": inst.name}},
                     "template": {"metadata": {"labels": lab}, "spec": {
                         "nodeSelector": {"kubernetes.io/hostname": inst.node},
                         "restartPolicy": "Always",
                         "containers": [container],
                         "volumes": [{"name": "context", "configMap": {
                             "name": f"{plan.app}-{inst.component}",
                             "items": [{"key": f"{inst.name}.json",
                                        "path": "context.json"}]}}]}}}}


def export_k8s(plan: DeploymentPlan, sites: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """Write `configmap-<component>.yaml` and `deployment-<instance>.yaml`; returns them."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    contexts = instance_contexts(plan, sites)
    written = []
    for comp in plan.application.spec.components:
        if plan.instances_of(comp.name):
            written.append(_dump(out_dir / f"configmap-{comp.name}.yaml",
                                 configmap(plan, comp.name, contexts)))
    for inst in plan.instances:
        written.append(_dump(out_dir / f"deployment-{inst.name}.yaml", deployment(plan, inst)))
    return written
