"""Wire models of the applications API (`/api/v1/apps`), shared by the platform (which
answers with them, so OpenAPI documents them), the CLI and the library client (which
parse them). One model per concept; the platform never hand-builds these as dicts.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from edgecloud.application.messages import ControllerCommand
from edgecloud.application.topology import Application
from edgecloud.resource.files import FileRef
from edgecloud.schema import StrictModel

InstanceViewState = Literal["Pending", "Running", "Restarting", "Failed", "Succeeded",
                             "Unknown"]


class DeployRequest(StrictModel):
    """Body of `POST /apps`, `PUT /apps/{name}` and `POST /apps/plan`: a parsed topology
    and where its code is."""

    topology: Application
    bundle: FileRef | None = Field(default=None, description="tar.gz of the application directory "
                                                     "in the cloud site's file service")
    source_dir: str | None = Field(default=None, description="the application directory on the "
                                                     "machine that deployed it (embedded)")
    bundle_python_path: list[str] = Field(default=[], description="spec.pythonPath entries "
                                                                  "relative to the bundle")


class InstanceView(StrictModel):
    """A planned instance joined with what its node last reported."""

    name: str
    component: str
    site: str
    node: str
    state: InstanceViewState
    restarts: int = 0
    reason: str = Field(default="", description="why it is not Running (Pending included), or how "
                                        "it last exited")
    pid: int | None = None
    cpu_percent: float = 0.0
    memory_rss: int = 0
    metrics: dict[str, Any] = Field(default_factory=dict)
    reported_at: float | None = None
    up_to_date: bool = False


class AppSummary(StrictModel):
    """One row of `GET /apps`."""

    name: str
    revision: int
    instances: int
    running: int
    updated_at: float


class AppDetail(StrictModel):
    """`GET /apps/{name}`."""

    name: str
    revision: int
    topology: dict[str, Any]
    bundle: FileRef | None = None
    instances: list[InstanceView]


class LogEntry(StrictModel):
    id: int
    instance: str
    node: str
    ts: float
    text: str


class LogPage(StrictModel):
    """`GET /apps/{name}/logs`: entries with id > `after`; pass `next` as the next `after`."""

    entries: list[LogEntry]
    next: int


class CommandRequest(StrictModel):
    """Body of `POST /apps/{name}/commands`: a controller operation for the app's
    components, at the given sites (default: every site the application runs at)."""

    command: ControllerCommand
    sites: list[str] | None = None


class CommandResult(StrictModel):
    sites: list[str] = Field(description="sites the command was published to")
