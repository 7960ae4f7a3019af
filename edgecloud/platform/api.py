"""HTTP routes of the platform API (`/api/v1`), plus `/healthz` and `/metrics`.

Handlers are plain functions (FastAPI runs them in worker threads, where the synchronous
store is fine) except the assignment long-poll, which waits on an asyncio.Event so that
thousands of idle polls cost no threads.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from edgecloud.log import get_logger
from edgecloud.platform.auth import (
    AdminDep,
    JoinDep,
    NodeDep,
    hash_token,
    new_token,
    principal,
    require_admin,
    unauthorized,
)
from edgecloud.platform.core import Platform
from edgecloud.platform.hooks import NodeTransition
from edgecloud.platform.monitor import platform_status
from edgecloud.platform.store import EventRow, NodeRow
from edgecloud.resource.infra import Resources, semantic_problems
from edgecloud.resource.protocol import (
    Assignment,
    Heartbeat,
    HeartbeatResponse,
    JoinRequest,
    JoinResponse,
    NodeInfo,
    PlatformStatus,
    RegisterInfrastructure,
    SiteInfo,
    TokenRequest,
    TokenResponse,
)
from edgecloud.resource.runtime import InstanceSpec
from edgecloud.schema import StrictModel

log = get_logger("platform.api")
MAX_WAIT_S = 60.0

api = APIRouter(prefix="/api/v1")
root = APIRouter()


def _p(request: Request) -> Platform:
    return request.app.state.platform


PlatformDep = Annotated[Platform, Depends(_p)]


# -- unauthenticated -------------------------------------------------------------------------
@root.get("/healthz", tags=["meta"])
def healthz() -> dict[str, str]:
    """Liveness probe (no token)."""
    return {"status": "ok"}


def metrics(request: Request) -> Response:
    """Prometheus exposition (open unless `metrics_require_auth`)."""
    p = _p(request)
    if p.config.metrics_require_auth:
        header = request.headers.get("authorization", "")
        token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        who = p.auth.resolve(token) if token else None
        if who is None:
            raise unauthorized("/metrics needs the admin token")
        require_admin(who)
    return Response(generate_latest(p.registry), media_type=CONTENT_TYPE_LATEST)


root.add_api_route("/metrics", metrics, methods=["GET"], tags=["meta"])
api.add_api_route("/metrics", metrics, methods=["GET"], tags=["meta"])


# -- infrastructure (admin) ------------------------------------------------------------------
@api.put("/infrastructure", tags=["infrastructure"])
def put_infrastructure(body: RegisterInfrastructure, p: PlatformDep,
                       _: AdminDep) -> dict[str, Any]:
    """Create or update the infrastructure, its sites and declared nodes (idempotent)."""
    infra = body.infrastructure
    problems = [f"infrastructure.{path}: {msg}" for path, msg in semantic_problems(infra)]
    declared = {s.name for s in infra.spec.sites}
    problems += [f"sites: no endpoints for site {s!r}" for s in sorted(declared - set(body.sites))]
    problems += [f"sites.{s}: not a site of the infrastructure"
                 for s in sorted(set(body.sites) - declared)]
    if problems:
        raise HTTPException(422, "; ".join(problems))
    current = p.store.infra.current()
    if current is not None and current.name != infra.name:
        raise HTTPException(409, f"this platform manages infrastructure {current.name!r}, not "
                                 f"{infra.name!r}; use a separate platform (or database)")
    site_rows = [SiteInfo(name=s.name, kind=s.kind, **body.sites[s.name].model_dump())
                 for s in infra.spec.sites]
    node_rows = [{"id": infra.node_id(s.name, n.name), "site": s.name, "name": n.name,
                  "labels": n.labels, "resources": n.resources.model_dump(), "speed": n.speed}
                 for s in infra.spec.sites for n in s.nodes]
    clash = _name_clash(p, node_rows)
    if clash:
        raise HTTPException(409, clash)
    p.store.infra.put(infra.name, infra.model_dump(mode="json", by_alias=True),
                               site_rows, node_rows)
    log.info("infrastructure registered", infra=infra.name, sites=len(site_rows),
             nodes=len(node_rows))
    return {"infra": infra.name, "sites": len(site_rows), "nodes": len(node_rows)}


def _name_clash(p: Platform, node_rows: list[dict[str, Any]]) -> str | None:
    # Node names are unique across the infrastructure, extension nodes included.
    for n in node_rows:
        other = p.store.nodes.by_name(n["name"])
        if other is not None and other.site != n["site"]:
            return (f"node {n['name']!r} is declared in site {n['site']!r} but already exists "
                    f"in site {other.site!r}")
    return None


@api.get("/infrastructure", tags=["infrastructure"])
def get_infrastructure(p: PlatformDep, _: AdminDep) -> dict[str, Any]:
    """The registered infrastructure, as the file's JSON."""
    current = p.store.infra.current()
    if current is None:
        raise HTTPException(404, "no infrastructure registered yet (PUT /api/v1/infrastructure)")
    return current.spec


@api.get("/sites", tags=["infrastructure"])
def get_sites(p: PlatformDep, _: AdminDep) -> list[SiteInfo]:
    return p.store.infra.sites()


@api.get("/nodes", tags=["nodes"])
def get_nodes(p: PlatformDep, _: AdminDep) -> list[NodeInfo]:
    return [n.info() for n in p.store.nodes.all()]


@api.get("/nodes/{site}/{name}", tags=["nodes"])
def get_node(site: str, name: str, p: PlatformDep, _: AdminDep) -> NodeInfo:
    return _node_row(p, site, name).info()


@api.delete("/nodes/{site}/{name}", status_code=204, tags=["nodes"])
def delete_node(site: str, name: str, p: PlatformDep, _: AdminDep) -> Response:
    """Remove a node; its token stops working (its agent exits on the next heartbeat)."""
    row = _node_row(p, site, name)
    p.store.nodes.delete(row.id)
    log.info("node removed", node=row.id)
    return Response(status_code=204)


def _node_row(p: Platform, site: str, name: str) -> NodeRow:
    row = p.store.nodes.get(site, name)
    if row is None:
        raise HTTPException(404, f"no node {name!r} in site {site!r}")
    return row


@api.get("/status", tags=["meta"])
def get_status(p: PlatformDep, _: AdminDep) -> PlatformStatus:
    """Sites with their nodes, states and last metrics."""
    return platform_status(p)


@api.get("/events", tags=["meta"])
def get_events(p: PlatformDep, _: AdminDep, after: int = 0,
               limit: Annotated[int, Query(ge=1, le=1000)] = 1000) -> list[EventRow]:
    """Recorded events (node joined / ready / not ready), oldest first, id > `after`."""
    return p.store.events.since(after, limit)


# -- tokens and join -------------------------------------------------------------------------
@api.post("/tokens", tags=["nodes"])
def create_token(body: TokenRequest, p: PlatformDep, _: AdminDep) -> TokenResponse:
    """A one-time join token for a node of `site`, valid `ttl_s` seconds."""
    if p.store.infra.site(body.site) is None:
        known = ", ".join(s.name for s in p.store.infra.sites()) or "none"
        raise HTTPException(404, f"no site {body.site!r}; known sites: {known}")
    token = new_token()
    expires = time.time() + body.ttl_s
    p.store.tokens.add(hash_token(token), body.site, expires)
    return TokenResponse(token=token, site=body.site,
                         expires_at=datetime.fromtimestamp(expires, UTC))


@api.post("/nodes/join", tags=["nodes"])
def join(req: JoinRequest, p: PlatformDep, who: JoinDep) -> JoinResponse:
    """Exchange a join token for a node token; undeclared nodes extend their site."""
    check = p.store.tokens.check(who.token_hash)
    if check.problem is not None:
        raise unauthorized(check.problem)
    if req.site != check.site:
        raise HTTPException(403, f"this join token is for site {check.site!r}, not "
                                 f"{req.site!r}")
    site = p.store.infra.site(req.site)
    current = p.store.infra.current()
    if site is None or current is None:
        raise HTTPException(404, f"site {req.site!r} is not registered")
    other = p.store.nodes.by_name(req.name)
    if other is not None and other.site != req.site:
        raise HTTPException(409, f"a node named {req.name!r} already exists in site "
                                 f"{other.site!r}; node names are unique")
    node_id = f"{current.name}/{req.site}/{req.name}"
    existing = p.store.nodes.get(req.site, req.name)
    declared = existing is not None and existing.declared
    labels = {**(existing.labels if existing else {}), **req.labels}
    resources = (req.resources if req.resources else
                 existing.resources if declared and existing else
                 (req.detected or Resources())).model_dump()
    node_token = new_token()
    row = {"id": node_id, "site": req.site, "name": req.name, "labels": labels,
           "resources": resources, "speed": req.speed,
           "agent_version": req.agent_version, "hostname": req.hostname}
    if not p.store.nodes.join(who.token_hash, row, hash_token(node_token)):
        raise unauthorized("join token already used or expired")
    log.info("node joined", node=node_id, hostname=req.hostname, declared=declared)
    return JoinResponse(node_id=node_id, node_token=node_token,
                        heartbeat_interval_s=p.config.heartbeat_interval_s,
                        broker=site.broker, files=site.files)


# -- node calls ------------------------------------------------------------------------------
@api.post("/nodes/{site}/{name}/heartbeat", tags=["nodes"])
def heartbeat(beat: Heartbeat, p: PlatformDep, who: NodeDep) -> HeartbeatResponse:
    """Record a node's liveness and metrics; answers its current assignment revision and
    its site's current endpoints (the agent follows them when the site's services moved)."""
    assert who.node_id is not None and who.site is not None
    try:
        previous, revision = p.store.nodes.record_heartbeat(
            who.node_id, beat.metrics.model_dump(), beat.instances, beat.interval_s,
            beat.problems)
    except KeyError:
        raise unauthorized("the node was removed") from None
    p.store.logs.append(who.node_id.rsplit("/", 1)[-1], beat.logs)
    site = p.store.infra.site(who.site)
    for listener in p.heartbeat_listeners:
        listener(who.node_id)
    now = time.time()
    if previous != "Ready":
        p.hooks.emit(NodeTransition(who.node_id, "Ready", "heartbeat", now))
    return HeartbeatResponse(revision=revision, server_time=datetime.fromtimestamp(now, UTC),
                             broker=site.broker if site else None,
                             files=site.files if site else None)


@api.get("/nodes/{site}/{name}/assignment", tags=["nodes"])
async def get_assignment(p: PlatformDep, who: NodeDep, after: int = -1,
                         wait: Annotated[float, Query(ge=0)] = 0.0) -> Assignment:
    """Long-poll: answers at once if the revision is > `after`, else within `wait` s (<= 60)."""
    assert who.node_id is not None
    node_id = who.node_id
    event = p.notifier.event_for(node_id)  # before reading, so no change is missed
    current = await run_in_threadpool(p.store.nodes.assignment, node_id)
    if current is None:
        raise unauthorized("the node was removed")
    if current.revision <= after and wait > 0:
        try:
            await asyncio.wait_for(event.wait(), min(wait, MAX_WAIT_S))
        except TimeoutError:
            pass
        current = await run_in_threadpool(p.store.nodes.assignment, node_id) or current
    if current.revision > after:
        # What `app status` needs to say "node N has not fetched its assignment yet".
        await run_in_threadpool(p.store.nodes.mark_fetched, node_id, current.revision)
    return current


class AssignmentUpdate(StrictModel):
    instances: list[InstanceSpec]


@api.put("/nodes/{site}/{name}/assignment", tags=["nodes"])
def put_assignment(site: str, name: str, body: AssignmentUpdate, p: PlatformDep,
                   _: AdminDep) -> Assignment:
    """Admin override of a node's desired instances (debugging; the controller owns it)."""
    row = _node_row(p, site, name)
    revision = p.set_assignment(row.id, body.instances)
    return Assignment(revision=revision, instances=body.instances)


__all__ = ["api", "root", "principal"]
