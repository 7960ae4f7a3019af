"""Typed payloads of the in-app control topics (`topics.commands`, `topics.decisions`).

Every sender builds these models and every receiver parses them once, so a malformed
command is rejected with a clear reason at the receiver instead of half-applied:

    ControllerCommand(op="set", component="filter", args={"every": 2})

The in-app controller, the SDK, the platform's `POST /api/v1/apps/{name}/commands` route
and the library client all use this one definition.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from edgecloud.schema import StrictModel

BUILTIN_OPS = ("start", "terminate", "set", "filter")
"""Operations every component understands; others reach `Component.on_command`."""


class ControllerCommand(StrictModel):
    """One controller operation for the components at a site."""

    op: str = Field(min_length=1, description="start | terminate | set | filter | an "
                                              "application-specific operation")
    component: str = Field("*", description="a component name, an instance name, or '*'")
    args: dict[str, Any] = Field(default_factory=dict)
