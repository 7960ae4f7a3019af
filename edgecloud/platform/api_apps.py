"""HTTP routes for applications: deploy, update, plan, status, logs, delete (`/api/v1/apps`).

Also the Prometheus collector of instance and SDK metrics, read from the latest heartbeat
of every node at scrape time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edgecloud.errors import FileValidationError, UserError
from edgecloud.platform.apps import AppConflict, AppManager, AppNotFound, DeployRequest
from edgecloud.platform.auth import AdminDep
from edgecloud.platform.orchestrator import PlacementError
from edgecloud.platform.store import Store

apps_api = APIRouter(prefix="/api/v1/apps", tags=["apps"])


def _m(request: Request) -> AppManager:
    return request.app.state.apps  # type: ignore[no-any-return]


ManagerDep = Annotated[AppManager, Depends(_m)]


def _http(exc: UserError) -> HTTPException:
    if isinstance(exc, AppNotFound):
        return HTTPException(404, str(exc))
    if isinstance(exc, AppConflict):
        return HTTPException(409, str(exc))
    if isinstance(exc, PlacementError):
        return HTTPException(409, f"no deployment plan: {exc}")
    if isinstance(exc, FileValidationError):
        return HTTPException(422, str(exc))
    return HTTPException(400, str(exc))


def _validated(m: AppManager, req: DeployRequest) -> DeployRequest:
    """Check the topology against the registered infrastructure before planning."""
    from edgecloud.application.topology import Application, validate_application
    from edgecloud.resource.infra import Infrastructure

    try:
        app = Application.model_validate(req.topology)
    except ValueError as exc:
        raise HTTPException(422, f"invalid topology: {exc}") from None
    infra_row = m.p.store.current_infra()
    if infra_row is None:
        raise HTTPException(409, "no infrastructure is registered")
    infra = Infrastructure.model_validate(infra_row[1])
    problems = validate_application(app, infra, check_entries=False)
    if problems:
        raise _http(FileValidationError(f"application {app.metadata.name}", problems))
    return req


@apps_api.post("", status_code=201)
def deploy(req: DeployRequest, m: ManagerDep, _: AdminDep) -> dict[str, Any]:
    try:
        return m.deploy(_validated(m, req)).model_dump(mode="json", by_alias=True)
    except UserError as exc:
        raise _http(exc) from None


@apps_api.put("/{name}")
def update(name: str, req: DeployRequest, m: ManagerDep, _: AdminDep,
           thorough: bool = False) -> dict[str, Any]:
    if req.topology.get("metadata", {}).get("name") != name:
        raise HTTPException(422, f"the topology's metadata.name must be {name!r}")
    try:
        return m.update(_validated(m, req), thorough=thorough).model_dump(mode="json",
                                                                          by_alias=True)
    except UserError as exc:
        raise _http(exc) from None


@apps_api.post("/plan")
def plan(req: DeployRequest, m: ManagerDep, _: AdminDep) -> dict[str, Any]:
    """Where the topology would be placed now (nothing is deployed)."""
    from edgecloud.application.topology import Application

    try:
        return m.dry_run(Application.model_validate(_validated(m, req).topology)).model_dump(
            mode="json", by_alias=True)
    except UserError as exc:
        raise _http(exc) from None


@apps_api.get("")
def list_apps(m: ManagerDep, _: AdminDep) -> list[dict[str, Any]]:
    out = []
    for row in m.p.store.apps():
        states = [i["state"] for i in app_instances(m.p.store, row["name"])]
        out.append({"name": row["name"], "revision": row["revision"],
                    "instances": len(states),
                    "running": sum(s == "Running" for s in states),
                    "updated_at": row["updated_at"]})
    return out


@apps_api.get("/{name}")
def get_app(name: str, m: ManagerDep, _: AdminDep) -> dict[str, Any]:
    row = m.p.store.app(name)
    if row is None:
        raise HTTPException(404, f"no application {name!r}")
    return {"name": name, "revision": row["revision"], "topology": row["spec"],
            "bundle": row["bundle"], "instances": app_instances(m.p.store, name)}


@apps_api.get("/{name}/plan")
def get_plan(name: str, m: ManagerDep, _: AdminDep) -> dict[str, Any]:
    try:
        return m.plan(name).model_dump(mode="json", by_alias=True)
    except UserError as exc:
        raise _http(exc) from None


@apps_api.delete("/{name}", status_code=204)
def delete(name: str, m: ManagerDep, _: AdminDep) -> None:
    try:
        m.delete(name)
    except UserError as exc:
        raise _http(exc) from None


@apps_api.get("/{name}/logs")
def logs(name: str, m: ManagerDep, _: AdminDep, select: str | None = None,
         after: int = 0, limit: Annotated[int, Query(ge=1, le=10000)] = 1000
         ) -> dict[str, Any]:
    """Output of the app's instances; `select` is a component or instance name."""
    if m.p.store.app(name) is None:
        raise HTTPException(404, f"no application {name!r}")
    chosen = None
    if select:
        rows = m.p.store.instances(name)
        chosen = [r["name"] for r in rows if select in (r["name"], r["component"])]
        if not chosen:
            known = sorted({r["component"] for r in rows} | {r["name"] for r in rows})
            raise HTTPException(404, f"no component or instance {select!r} in {name!r} "
                                     f"(known: {', '.join(known)})")
    entries = [{"id": r["id"], "instance": r["instance"], "node": r["node"], "ts": r["ts"],
                "text": r["text"]} for r in m.p.store.logs(name, chosen, after, limit)]
    return {"entries": entries, "next": entries[-1]["id"] if entries else after}


def app_instances(store: Store, app: str) -> list[dict[str, Any]]:
    """Planned instances joined with what their nodes last reported."""
    nodes = {n["name"]: n for n in store.nodes()}
    out = []
    for r in store.instances(app):
        node = nodes.get(r["node"])
        reported = next((s for s in (node["instance_status"] if node else [])
                         if s.get("app") == app and s.get("name") == r["name"]), None)
        state = "Pending"
        if reported is not None:
            state = reported["state"]
        if node is not None and node["state"] != "Ready" and reported is not None:
            state = "Unknown"  # the node stopped reporting; its last word may be stale
        out.append({
            "name": r["name"], "component": r["component"], "site": r["site"],
            "node": r["node"], "state": state,
            "restarts": reported.get("restarts", 0) if reported else 0,
            "reason": reported.get("reason", "") if reported else "",
            "pid": reported.get("pid") if reported else None,
            "cpu_percent": reported.get("cpu_percent", 0.0) if reported else 0.0,
            "memory_rss": reported.get("memory_rss", 0) if reported else 0,
            "metrics": reported.get("metrics", {}) if reported else {},
            "reported_at": node["last_heartbeat"] if node and reported else None,
            "up_to_date": bool(reported) and reported.get("digest")
            == _digest(r["spec"]),
        })
    return out


def _digest(spec: dict[str, Any]) -> str:
    from edgecloud.resource.runtime import InstanceSpec

    return InstanceSpec.model_validate(spec).digest()


class InstanceCollector(Collector):
    """Per-instance state, restarts, CPU, memory, and every SDK metric of every instance."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        labels = ["app", "instance", "component", "node"]
        up = GaugeMetricFamily("edgecloud_instance_running", "1 if Running", labels=labels)
        restarts = GaugeMetricFamily("edgecloud_instance_restarts", "restarts", labels=labels)
        cpu = GaugeMetricFamily("edgecloud_instance_cpu_percent", "CPU use", labels=labels)
        mem = GaugeMetricFamily("edgecloud_instance_memory_rss_bytes", "resident memory",
                                labels=labels)
        sdk: dict[str, GaugeMetricFamily] = {}
        for node in self.store.nodes():
            for s in node["instance_status"] or []:
                key = [str(s.get("app")), str(s.get("name")), str(s.get("component")),
                       node["name"]]
                up.add_metric(key, 1.0 if s.get("state") == "Running" else 0.0)
                restarts.add_metric(key, float(s.get("restarts", 0)))
                cpu.add_metric(key, float(s.get("cpu_percent", 0.0)))
                mem.add_metric(key, float(s.get("memory_rss", 0)))
                for family in (s.get("metrics") or {}).get("metrics", []):
                    for sample_name, sample_labels, value in family.get("samples", []):
                        name = f"edgecloud_app_{sample_name}"
                        extra = sorted(sample_labels)
                        fam = sdk.get(name + "|" + ",".join(extra))
                        if fam is None:
                            fam = GaugeMetricFamily(name, family.get("help", name),
                                                    labels=labels + extra)
                            sdk[name + "|" + ",".join(extra)] = fam
                        fam.add_metric(key + [str(sample_labels[k]) for k in extra],
                                       float(value))
        yield from (up, restarts, cpu, mem, *sdk.values())
