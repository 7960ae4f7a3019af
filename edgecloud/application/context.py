"""What an instance knows about itself and its peers: the context the agent hands it.

The platform builds one `InstanceContext` per instance from the deployment plan; the agent
writes it to `<instance dir>/context.json` and passes the path in EDGECLOUD_CONTEXT.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from edgecloud.errors import UserError

CONTEXT_ENV = "EDGECLOUD_CONTEXT"


class Peer(BaseModel):
    """An instance of a connected component and the site it runs at."""

    instance: str
    component: str
    site: str
    node: str = ""


class ControllerInfo(BaseModel):
    """Where the in-app controllers run and which policy class the app uses."""

    policy: str = "edgecloud.application.policy:BasicPolicy"
    params: dict[str, Any] = {}
    report_interval_s: float = 1.0
    sites: list[str] = []
    """Sites that run a local controller (the cloud site's controller is the global one)."""


class InstanceContext(BaseModel):
    app: str
    instance: str
    component: str
    role: Literal["component", "controller"] = "component"
    site: str
    site_kind: Literal["cloud", "edge"]
    cloud_site: str
    node: str
    node_speed: float = 1.0
    broker_url: str
    files_url: str
    entry: str = ""
    source_dir: str = ""
    python_path: list[str] = []
    params: dict[str, Any] = {}
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

    @property
    def controller_site(self) -> str:
        """The site whose controller receives this instance's reports."""
        if self.controller and self.site in self.controller.sites:
            return self.site
        return self.cloud_site
