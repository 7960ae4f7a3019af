"""What the platform asks a node to run, and what the node reports back (wire models)."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import Field

from edgecloud.resource.runtime.context import LIVE_EXCLUDE, InstanceContext
from edgecloud.schema import StrictModel

InstanceState = Literal["Pending", "Running", "Restarting", "Failed", "Succeeded"]

class InstanceSpec(StrictModel):
    """One instance a node must run.

    `kind="entry"`: the agent runs the SDK runner (`python -m edgecloud.application.runner`)
    which imports `context.entry`; `kind="command"`: the agent runs `command` as given.
    `context` is written to `<instance dir>/context.json`; its path is in the environment
    variable EDGECLOUD_CONTEXT, so a command written in any language can read it.

    Two parts, two digests. The *live* part is the application's membership (the
    context's `peers`, `members` and `controller.sites`, see `InstanceContext.live_part`): when
    only it changes, the node rewrites `context.json` in place and the running instance
    picks it up (the SDK runner watches the file); everything else is the *restart* part,
    and a change there restarts the instance. `restart_digest()` covers the restart part,
    `digest()` the whole spec: the platform compares `digest()` to know whether a node has
    what it was assigned (a node reports it once the instance runs with it), nodes compare
    `restart_digest()` to know whether to restart.
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
        """Changes whenever anything in the spec changes (live part included)."""
        return _digest_of(self.model_dump(mode="json"))

    def restart_digest(self) -> str:
        """Changes whenever anything that requires a restart changes (not the live part)."""
        return _digest_of(self.model_dump(mode="json", exclude={"context": LIVE_EXCLUDE}))

    def live_part(self) -> dict[str, Any]:
        """The membership a running instance is given without a restart (JSON values)."""
        return {} if self.context is None else self.context.live_part()

    def context_json(self, instance_dir: str) -> str:
        """The document written to `<instance dir>/context.json`."""
        if self.context is None:
            return json.dumps({"instance_dir": instance_dir})
        return self.context.model_copy(update={"instance_dir": instance_dir}).model_dump_json()


def _digest_of(doc: dict[str, Any]) -> str:
    blob = json.dumps(doc, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class InstanceStatus(StrictModel):
    """How an instance is doing on its node; sent with every heartbeat."""

    app: str
    name: str
    component: str
    state: InstanceState
    digest: str = Field(description="`InstanceSpec.digest()` of the spec the instance runs "
                                    "with (its context file rewritten for the live part)")
    restarts: int = 0
    pid: int | None = None
    exit_code: int | None = None
    reason: str = ""
    started_at: float | None = None
    cpu_percent: float = 0.0
    memory_rss: int = 0
    metrics: dict[str, Any] = Field(default_factory=dict)
