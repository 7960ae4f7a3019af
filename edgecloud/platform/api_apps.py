"""HTTP routes for applications: deploy, update, plan, status, logs, delete (`/api/v1/apps`).

Routes answer with the wire models of `edgecloud.application.wire` (so OpenAPI documents
them and the CLI parses the same models) and raise `UserError`s, which the exception
handlers of `server.py` turn into HTTP errors — no route catches them itself.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request

from edgecloud.application.plan import DeploymentPlan
from edgecloud.application.topology import validate_application
from edgecloud.application.wire import (
    AppDetail,
    AppSummary,
    DeployRequest,
    InstanceView,
    InstanceViewState,
    LogEntry,
    LogPage,
)
from edgecloud.errors import FileValidationError
from edgecloud.platform.apps import AppManager, AppNotFound, NoInfrastructure
from edgecloud.platform.auth import AdminDep
from edgecloud.platform.store import InstanceRow, NodeRow
from edgecloud.resource.infra import Infrastructure

apps_api = APIRouter(prefix="/api/v1/apps", tags=["apps"])


def _m(request: Request) -> AppManager:
    return request.app.state.apps


ManagerDep = Annotated[AppManager, Depends(_m)]


def _validated(m: AppManager, req: DeployRequest) -> DeployRequest:
    """Check the (already parsed) topology against the registered infrastructure."""
    infra_row = m.p.store.infra.current()
    if infra_row is None:
        raise NoInfrastructure("no infrastructure is registered; run `edgecloud up` or "
                               "PUT /api/v1/infrastructure first")
    infra = Infrastructure.model_validate(infra_row.spec)
    problems = validate_application(req.topology, infra, check_entries=False)
    if problems:
        raise FileValidationError(f"application {req.topology.metadata.name}", problems)
    return req


@apps_api.post("", status_code=201, response_model_by_alias=True)
def deploy(req: DeployRequest, m: ManagerDep, _: AdminDep) -> DeploymentPlan:
    return m.deploy(_validated(m, req))


@apps_api.put("/{name}", response_model_by_alias=True)
def update(name: str, req: DeployRequest, m: ManagerDep, _: AdminDep,
           thorough: bool = False) -> DeploymentPlan:
    if req.topology.metadata.name != name:
        raise HTTPException(422, f"the topology's metadata.name must be {name!r}")
    return m.update(_validated(m, req), thorough=thorough)


@apps_api.post("/plan", response_model_by_alias=True)
def plan(req: DeployRequest, m: ManagerDep, _: AdminDep) -> DeploymentPlan:
    """Where the topology would be placed now (nothing is deployed)."""
    return m.dry_run(_validated(m, req).topology)


@apps_api.get("")
def list_apps(m: ManagerDep, _: AdminDep) -> list[AppSummary]:
    nodes = _nodes(m)
    out = []
    for row in m.apps():
        views = instance_views(m, row.name, nodes)
        out.append(AppSummary(name=row.name, revision=row.revision, instances=len(views),
                              running=sum(v.state == "Running" for v in views),
                              updated_at=row.updated_at))
    return out


@apps_api.get("/{name}")
def get_app(name: str, m: ManagerDep, _: AdminDep) -> AppDetail:
    row = m.app(name)
    return AppDetail(name=name, revision=row.revision,
                     topology=row.topology.model_dump(mode="json", by_alias=True),
                     bundle=row.bundle, instances=instance_views(m, name, _nodes(m)))


@apps_api.get("/{name}/plan", response_model_by_alias=True)
def get_plan(name: str, m: ManagerDep, _: AdminDep) -> DeploymentPlan:
    return m.plan(name)


@apps_api.delete("/{name}", status_code=204)
def delete(name: str, m: ManagerDep, _: AdminDep) -> None:
    m.delete(name)


@apps_api.get("/{name}/logs")
def logs(name: str, m: ManagerDep, _: AdminDep, select: str | None = None,
         after: int = 0, limit: Annotated[int, Query(ge=1, le=10000)] = 1000) -> LogPage:
    """Output of the app's instances; `select` is a component or instance name."""
    rows = m.instances(name)
    chosen = None
    if select:
        chosen = [r.name for r in rows if select in (r.name, r.component)]
        if not chosen:
            known = sorted({r.component for r in rows} | {r.name for r in rows})
            raise AppNotFound(f"no component or instance {select!r} in {name!r} "
                              f"(known: {', '.join(known)})")
    entries = [LogEntry(id=r.id, instance=r.instance, node=r.node, ts=r.ts, text=r.text)
               for r in m.p.store.logs.read(name, chosen, after, limit)]
    return LogPage(entries=entries, next=entries[-1].id if entries else after)


def _nodes(m: AppManager) -> dict[str, NodeRow]:
    return {n.name: n for n in m.p.store.nodes.all()}


def instance_views(m: AppManager, app: str, nodes: dict[str, NodeRow]) -> list[InstanceView]:
    """Planned instances joined with what their nodes last reported."""
    try:
        rows = m.instances(app)
    except AppNotFound:
        return []
    return [_view(m, r, nodes.get(r.node)) for r in rows]


def _view(m: AppManager, r: InstanceRow, node: NodeRow | None) -> InstanceView:
    reported = node.status_of(r.app, r.name) if node else None
    base = InstanceView(name=r.name, component=r.component, site=r.site, node=r.node,
                        state="Pending")
    if reported is None:
        return base.model_copy(update={"reason": pending_reason(m, r, node)})
    state: InstanceViewState = reported.state
    if node is not None and node.state != "Ready":
        state = "Unknown"  # the node stopped reporting; its last word may be stale
    return base.model_copy(update={
        "state": state, "restarts": reported.restarts, "reason": reported.reason,
        "pid": reported.pid, "cpu_percent": reported.cpu_percent,
        "memory_rss": reported.memory_rss, "metrics": reported.metrics,
        "reported_at": node.last_heartbeat if node else None,
        "up_to_date": reported.digest == r.spec.digest()})


def pending_reason(m: AppManager, r: InstanceRow, node: NodeRow | None) -> str:
    """Why an instance its node has not reported is not running (yet)."""
    withheld = m.withheld.get((r.app, r.name))
    if withheld:
        return withheld
    if node is None:
        return f"node {r.node} is not registered"
    if node.state != "Ready":
        return f"node {r.node} is NotReady"
    if node.problems:
        return f"node {r.node}: {node.problems[-1]}"
    if node.fetched_revision < node.assignment_revision:
        return (f"node {r.node} has not fetched its assignment yet (revision "
                f"{node.assignment_revision}, last fetched {node.fetched_revision})")
    return f"not yet reported by node {r.node} (fetching the bundle or starting)"
