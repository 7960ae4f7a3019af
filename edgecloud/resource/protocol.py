"""Wire models of the control plane (agent <-> platform, CLI <-> platform) and its client.

They live in the resource layer because the node agent needs them and resource code must
never import the platform package; the platform imports them from here. Every request
body is a `StrictModel` (unknown keys are a 422). `PlatformClient` is the one HTTP client
of the platform API, reused by the agent and the CLI.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import httpx
from pydantic import BaseModel, Field

from edgecloud.errors import UserError
from edgecloud.resource.infra import Infrastructure, Name, Resources
from edgecloud.resource.runtime.spec import InstanceSpec, InstanceStatus
from edgecloud.schema import StrictModel

API_PREFIX = "/api/v1"
NodeState = Literal["Ready", "NotReady"]


# -- infrastructure ------------------------------------------------------------------------
class SiteEndpoints(StrictModel):
    """Where a site's services are, as reachable from that site."""

    broker: str = Field(description="mqtt://host:port of the site's broker")
    files: str = Field(description="http://host:port of the site's file server")
    platform: str = Field(description="the platform URL as reachable from this site")


class RegisterInfrastructure(StrictModel):
    """Body of `PUT /infrastructure`: the infrastructure file plus the sites' endpoints."""

    infrastructure: Infrastructure
    sites: dict[str, SiteEndpoints]


class SiteInfo(BaseModel):
    name: str
    kind: Literal["cloud", "edge"]
    broker: str
    files: str
    platform: str


class NodeInfo(BaseModel):
    """A node as the platform sees it (`GET /nodes`, `/status`)."""

    name: str
    id: str
    site: str
    state: NodeState
    declared: bool = Field(description="declared in the infrastructure file (else joined "
                                        "as a cluster extension)")
    joined: bool
    labels: dict[str, str]
    resources: Resources
    speed: float
    last_heartbeat: datetime | None
    metrics: dict[str, Any]
    agent_version: str | None = None
    hostname: str | None = None
    assignment_revision: int = 0


class StatusNode(BaseModel):
    """A node in `GET /status` (the live part of `NodeInfo`)."""

    name: str
    id: str
    state: NodeState
    labels: dict[str, str]
    resources: Resources
    last_heartbeat: datetime | None
    metrics: dict[str, Any]


class StatusSite(BaseModel):
    name: str
    kind: Literal["cloud", "edge"]
    broker: str
    files: str
    nodes: list[StatusNode]


class PlatformInfo(BaseModel):
    url: str


class PlatformStatus(BaseModel):
    """`GET /status`: the platform, the infrastructure's name, sites with their nodes."""

    platform: PlatformInfo
    infra: str | None
    sites: list[StatusSite]


# -- tokens and join -------------------------------------------------------------------------
class TokenRequest(StrictModel):
    site: str
    ttl_s: float = Field(3600.0, gt=0, le=30 * 24 * 3600)


class TokenResponse(BaseModel):
    token: str
    site: str
    expires_at: datetime


class JoinRequest(StrictModel):
    """A node asks to join. For a node declared in the infrastructure, its declared labels
    are kept (the agent's add to or override them) and its declared resources are used
    unless the agent states `resources` explicitly; `detected` is the fallback."""

    site: str
    name: Name
    labels: dict[str, str] = {}
    resources: Resources | None = Field(None, description="capacity stated by the operator")
    detected: Resources | None = Field(None, description="capacity detected on the host")
    speed: float = Field(1.0, gt=0)
    agent_version: str = ""
    hostname: str = ""


class JoinResponse(BaseModel):
    node_id: str = Field(description="<infra>/<site>/<node>")
    node_token: str
    heartbeat_interval_s: float
    broker: str
    files: str


# -- heartbeat and assignment ----------------------------------------------------------------
class NodeMetrics(StrictModel):
    """Host metrics an agent reports with every heartbeat (bytes, percent, load average)."""

    cpu_percent: float
    memory_used: int
    memory_total: int
    disk_used: int | None = None
    disk_total: int | None = None
    load1: float | None = None
    load5: float | None = None
    load15: float | None = None


class Heartbeat(StrictModel):
    metrics: NodeMetrics
    instances: list[InstanceStatus] = Field(default=[], description="per-instance status")
    logs: dict[str, str] = Field(
        default={}, description="new output per instance (`<app>/<instance>`) since the "
                                "last heartbeat")
    interval_s: float | None = Field(
        None, gt=0, description="the agent's heartbeat interval, if not the platform's")
    problems: list[str] = Field(
        default=[], description="what the agent could not do since it last succeeded "
                                "(e.g. an assignment it failed to apply), newest last")


class HeartbeatResponse(BaseModel):
    revision: int = Field(description="the node's current assignment revision")
    server_time: datetime
    broker: str | None = Field(None, description="the node's site broker as registered now "
                                                 "(it changes when the site's services move)")
    files: str | None = Field(None, description="the node's site file server as registered "
                                                "now")


class Assignment(StrictModel):
    """The desired instance set of one node; `revision` grows with every change."""

    revision: int = 0
    instances: list[InstanceSpec] = []


# -- client --------------------------------------------------------------------------------
class PlatformUnreachable(UserError):
    """The platform did not answer (connection refused, timeout, DNS)."""

    exit_code = 1


class PlatformError(UserError):
    """The platform answered with an HTTP error; `status` and `detail` say which."""

    exit_code = 1

    def __init__(self, status: int, detail: str, what: str) -> None:
        self.status = status
        self.detail = detail
        super().__init__(f"{what}: platform answered {status}: {detail}")


class PlatformClient:
    """Small synchronous client of the platform API (`/api/v1`), authenticated by a token.

    Connection problems raise `PlatformUnreachable` naming the URL; HTTP errors raise
    `PlatformError` with the platform's `detail`. Both are `UserError`s.
    """

    def __init__(self, url: str, token: str | None = None, timeout: float = 15.0) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url + API_PREFIX, headers=headers,
                                  timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PlatformClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, what: str, *, json: Any = None,
                params: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        """One API call; returns the decoded JSON body (None for 204). A pydantic model
        as `json` is sent as its JSON (by alias, as the files spell it)."""
        if isinstance(json, BaseModel):
            json = json.model_dump(mode="json", by_alias=True)
        kwargs: dict[str, Any] = {"json": json, "params": params}
        if timeout is not None:
            kwargs["timeout"] = timeout
        try:
            r = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise PlatformUnreachable(
                f"{what}: the platform at {self.url} is not reachable "
                f"({type(exc).__name__}: {exc or 'no answer'})") from None
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            raise PlatformError(r.status_code, str(detail), what)
        return r.json() if r.content else None

    # -- admin ---------------------------------------------------------------------------
    def register_infrastructure(self, body: RegisterInfrastructure) -> dict[str, Any]:
        data = body.model_dump(mode="json", by_alias=True)
        doc: dict[str, Any] = self.request("PUT", "/infrastructure", "register infrastructure",
                                           json=data)
        return doc

    def infrastructure(self) -> dict[str, Any]:
        doc: dict[str, Any] = self.request("GET", "/infrastructure", "get infrastructure")
        return doc

    def sites(self) -> list[SiteInfo]:
        return [SiteInfo.model_validate(s) for s in self.request("GET", "/sites", "list sites")]

    def nodes(self) -> list[NodeInfo]:
        return [NodeInfo.model_validate(n) for n in self.request("GET", "/nodes", "list nodes")]

    def node(self, site: str, name: str) -> NodeInfo:
        return NodeInfo.model_validate(
            self.request("GET", f"/nodes/{site}/{name}", f"get node {site}/{name}"))

    def delete_node(self, site: str, name: str) -> None:
        self.request("DELETE", f"/nodes/{site}/{name}", f"remove node {site}/{name}")

    def create_token(self, site: str, ttl_s: float = 3600.0) -> TokenResponse:
        body = TokenRequest(site=site, ttl_s=ttl_s).model_dump()
        return TokenResponse.model_validate(
            self.request("POST", "/tokens", f"create a join token for site {site}", json=body))

    def status(self) -> dict[str, Any]:
        """`GET /status` as JSON (see `platform_status` for the typed document)."""
        doc: dict[str, Any] = self.request("GET", "/status", "platform status")
        return doc

    def platform_status(self) -> PlatformStatus:
        return PlatformStatus.model_validate(self.status())

    # -- node ----------------------------------------------------------------------------
    def join(self, req: JoinRequest) -> JoinResponse:
        return JoinResponse.model_validate(self.request(
            "POST", "/nodes/join", f"join node {req.site}/{req.name}",
            json=req.model_dump(mode="json")))

    def heartbeat(self, site: str, name: str, beat: Heartbeat) -> HeartbeatResponse:
        return HeartbeatResponse.model_validate(self.request(
            "POST", f"/nodes/{site}/{name}/heartbeat", "heartbeat",
            json=beat.model_dump(mode="json")))

    def assignment(self, site: str, name: str, after: int = -1, wait: float = 0.0) -> Assignment:
        """Long-poll: returns once the revision is > `after`, or after `wait` seconds."""
        return Assignment.model_validate(self.request(
            "GET", f"/nodes/{site}/{name}/assignment", "fetch assignment",
            params={"after": after, "wait": wait}, timeout=wait + 15.0))
