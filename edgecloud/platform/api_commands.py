"""`POST /api/v1/apps/{name}/commands`: controller operations for an application's
components, published through the cloud site's broker (platform/commands.py).

    curl -X POST -H "Authorization: Bearer $TOKEN" $PLATFORM/api/v1/apps/relay-demo/commands \\
         -d '{"command": {"op": "set", "component": "sink", "args": {"every": 2}}}'

The router owns its publisher: created at the first command, closed with the platform
(the router's lifespan, merged into the app's by `include_router`).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request

from edgecloud.application.wire import CommandRequest, CommandResult
from edgecloud.platform.auth import AdminDep
from edgecloud.platform.commands import BrokerUnavailable, CommandPublisher

_publisher_lock = threading.Lock()


def _publisher(app: FastAPI) -> CommandPublisher:
    with _publisher_lock:
        publisher: CommandPublisher | None = getattr(app.state, "command_publisher", None)
        if publisher is None:
            publisher = app.state.command_publisher = CommandPublisher()
        return publisher


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    try:
        yield
    finally:
        publisher = getattr(app.state, "command_publisher", None)
        if publisher is not None:
            publisher.close()


commands_api = APIRouter(prefix="/api/v1/apps", tags=["apps"], lifespan=_lifespan)


@commands_api.post("/{name}/commands", responses={
    404: {"description": "no such application"},
    422: {"description": "unknown sites, or an invalid command"},
    503: {"description": "the cloud broker did not accept the command"}})
def send_command(name: str, req: CommandRequest, request: Request,
                 _: AdminDep) -> CommandResult:
    """Publish a controller operation (`start`, `terminate`, `set`, `filter` or one of the
    application's own) for the components of `name` at the given sites (default: every
    site where the application has instances). A 200 means the cloud broker accepted it;
    edge sites receive it through their bridges."""
    store = request.app.state.platform.store
    if not store.apps.exists(name):
        raise HTTPException(404, f"no application {name!r}; `edgecloud app list` shows the "
                                 "deployed ones")
    sites_rows = {s.name: s for s in store.infra.sites()}
    sites = _target_sites(name, req.sites, sorted({r.site for r in store.apps.instances(name)}),
                          sites_rows)
    cloud = next((s for s in sites_rows.values() if s.kind == "cloud"), None)
    if cloud is None:
        raise HTTPException(409, "no infrastructure is registered (no cloud site)")
    try:
        _publisher(request.app).publish(cloud.broker, name, sites, req.command)
    except BrokerUnavailable as exc:
        raise HTTPException(503, str(exc)) from None
    return CommandResult(sites=sites)


def _target_sites(app: str, asked: list[str] | None, app_sites: list[str],
                  known: dict[str, Any]) -> list[str]:
    """The sites to publish at: those asked (each a site of the infrastructure), or every
    site where the application has instances."""
    if asked is None:
        if not app_sites:
            raise HTTPException(409, f"application {app!r} has no instances to command")
        return app_sites
    if not asked:
        raise HTTPException(422, "sites: give at least one site, or leave it out to reach "
                                 f"every site where {app!r} runs")
    unknown = [s for s in asked if s not in known]
    if unknown:
        raise HTTPException(422, f"sites: unknown site(s) {', '.join(map(repr, unknown))}; "
                                 f"the infrastructure has {', '.join(sorted(known))}")
    return list(dict.fromkeys(asked))  # each site once, in the order asked
