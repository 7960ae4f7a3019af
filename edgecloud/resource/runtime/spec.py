"""What the platform asks a node to run, and what the node reports back (wire models)."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import Field

from edgecloud.resource.runtime.context import InstanceContext
from edgecloud.schema import StrictModel

InstanceState = Literal["Pending", "Running", "Restarting", "Failed", "Succeeded"]


class InstanceSpec(StrictModel):
    """One instance a node must run.

    `kind="entry"`: the agent runs the SDK runner (`python -m edgecloud.application.runner`)
    which imports `context.entry`; `kind="command"`: the agent runs `command` as given.
    `context` is written to `<instance dir>/context.json`; its path is in the environment
    variable EDGECLOUD_CONTEXT, so a command written in any language can read it.
    """

    app: str
    name: str
    component: str
    kind: Literal["entry", "command"] = "entry"
    command: list[str] = []
    env: dict[str, str] = {}
    context: InstanceContext | None = Field(
        None, description="None only for commands started outside a platform (tests)")
    restart: Literal["always", "on-failure", "never"] = "always"
    generation: int = Field(1, ge=1, description="bumped by a thorough update, so that "
                                                 "every instance restarts")

    @property
    def key(self) -> str:
        """Identity on a node: instance names are unique within an app."""
        return f"{self.app}/{self.name}"

    def digest(self) -> str:
        """Changes whenever anything that requires a restart changes."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def context_json(self, instance_dir: str) -> str:
        """The document written to `<instance dir>/context.json`."""
        if self.context is None:
            return json.dumps({"instance_dir": instance_dir})
        return self.context.model_copy(update={"instance_dir": instance_dir}).model_dump_json()


class InstanceStatus(StrictModel):
    """How an instance is doing on its node; sent with every heartbeat."""

    app: str
    name: str
    component: str
    state: InstanceState
    digest: str
    restarts: int = 0
    pid: int | None = None
    exit_code: int | None = None
    reason: str = ""
    started_at: float | None = None
    cpu_percent: float = 0.0
    memory_rss: int = 0
    metrics: dict[str, Any] = Field(default_factory=dict)
