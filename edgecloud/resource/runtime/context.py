"""What an instance knows about itself and its peers: the context its node hands it.

The platform builds one `InstanceContext` per instance from the deployment plan and sends
it inside the instance's `InstanceSpec`; the node fills in what only it knows (its site's
current broker and file-server URLs, where it unpacked the code bundle) and the process
runtime writes the result to `<instance dir>/context.json`, whose path is in the
environment variable EDGECLOUD_CONTEXT. The membership part (`live_part`) may change while
the instance runs: the file is then replaced atomically and the runner follows it. It
lives in the resource layer because the node's runtime carries it; components import it
from `edgecloud.application.context`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from edgecloud.errors import UserError
from edgecloud.resource.files import FileRef
from edgecloud.resource.infra import Resources
from edgecloud.schema import StrictModel

CONTEXT_ENV = "EDGECLOUD_CONTEXT"
LIVE_EXCLUDE: Any = {"peers": True, "members": True, "controller": {"sites"}}
"""The *live* part of a context (a `model_dump` exclude): the application's membership,
which a running instance follows without a restart (see `InstanceContext.live_part`)."""


class Peer(StrictModel):
    """An instance of a connected component and the site it runs at.

    The platform does not say which node a peer runs on: messages are addressed by site,
    and naming the node would restart every sender whenever a peer moves within its site.
    """

    instance: str
    component: str
    site: str
    node: str = Field(default="", description="not filled by the platform (see above)")


class ControllerInfo(StrictModel):
    """Where the in-app controllers run and which policy class the app uses."""

    policy: str = "edgecloud.application.policy:BasicPolicy"
    params: dict[str, Any] = {}
    report_interval_s: float = 1.0
    sites: list[str] = []
    """Sites that run a local controller (the cloud site's controller is the global one)."""


class InstanceContext(StrictModel):
    """Everything an instance is told about itself; see the module docstring."""

    app: str
    instance: str
    component: str
    role: Literal["component", "controller"] = "component"
    site: str
    site_kind: Literal["cloud", "edge"]
    cloud_site: str
    node: str
    node_speed: float = 1.0
    broker_url: str = Field(
        default="", description="the site's broker; filled by the node from its current "
                                "endpoints, so moved ports strand nobody")
    files_url: str = Field(default="", description="the site's file server; filled by the node")
    entry: str = ""
    source_dir: str = ""
    python_path: list[str] = []
    params: dict[str, Any] = {}
    resources: Resources | None = Field(
        default=None, description="what the instance was placed with (None: the in-app "
                                  "controller)")
    bundle: FileRef | None = Field(
        default=None, description="tar.gz of the application directory in the cloud site's "
                                  "file service")
    bundle_subdir: str = Field(default="", description="source_dir inside the unpacked bundle")
    bundle_python_path: list[str] = Field(
        default=[], description="python_path entries relative to the bundle")
    peers: dict[str, list[Peer]] = {}
    """Connected component name -> its instances (the targets of `send`)."""
    members: list[Peer] = []
    """Every instance of the application (controllers use it to address components)."""
    controller: ControllerInfo | None = None
    instance_dir: str = ""

    @classmethod
    def from_env(cls) -> InstanceContext:
        path = os.environ.get(CONTEXT_ENV)
        if not path:
            raise UserError(f"{CONTEXT_ENV} is not set: components are started by an "
                            "edgecloud agent (or `edgecloud.testing.run_component`)")
        try:
            return cls.model_validate(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: unreadable instance context: {exc}") from None

    def live_part(self) -> dict[str, Any]:
        """The application's membership as JSON values: `peers`, `members` and which sites
        run a local controller (`controller.sites`, where reports go).

        When only this changes, the node rewrites `context.json` in place (atomically)
        instead of restarting the instance, and the SDK runner hands the new membership to
        the running component (`with_membership_of`); everything else needs a restart.
        """
        return {"peers": {c: [p.model_dump(mode="json") for p in ps]
                          for c, ps in self.peers.items()},
                "members": [p.model_dump(mode="json") for p in self.members],
                "controller.sites": list(self.controller.sites) if self.controller else None}

    def with_membership_of(self, other: InstanceContext) -> InstanceContext:
        """This context with the live part (see `live_part`) of `other`."""
        controller = self.controller
        if controller is not None and other.controller is not None:
            controller = controller.model_copy(update={"sites": list(other.controller.sites)})
        return self.model_copy(update={"peers": other.peers, "members": other.members,
                                       "controller": controller})

    @property
    def controller_site(self) -> str:
        """The site whose controller receives this instance's reports."""
        if self.controller and self.site in self.controller.sites:
            return self.site
        return self.cloud_site
