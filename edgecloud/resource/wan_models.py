"""The WAN emulation's models: link settings, the control API's bodies, proxy config.

Shared by the proxy process (`wan`), its data path (`wan_shaper`) and the clients
(`edgecloud link`, the demos), so none of them imports another for a type.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edgecloud.resource.infra import WanSpec
from edgecloud.service import Endpoint


class LinkSettings(BaseModel):
    """Live settings of one edge site's WAN link (rates in bit/s, None = unlimited)."""

    up_bps: float | None = Field(None, gt=0, description="edge -> cloud (None = unlimited)")
    down_bps: float | None = Field(None, gt=0, description="cloud -> edge (None = unlimited)")
    delay_s: float = Field(0.0, ge=0, le=60, description="one-way delay in seconds")
    jitter_s: float = Field(0.0, ge=0, le=60, description="std deviation of the delay")
    loss: float = Field(0.0, ge=0, lt=1, description="probability a chunk is retransmitted")
    partitioned: bool = False

    @classmethod
    def from_spec(cls, spec: WanSpec | None) -> LinkSettings:
        """Settings declared in the infrastructure file (None: an unshaped link)."""
        if spec is None:
            return cls()
        return cls(up_bps=spec.up, down_bps=spec.down, delay_s=spec.delay,
                   jitter_s=spec.jitter, loss=spec.loss)


class LinkUpdate(BaseModel):
    """Body of `PATCH /link`: only the fields given change (a null rate = unlimited)."""

    model_config = ConfigDict(extra="forbid")
    up_bps: float | None = Field(None, gt=0)
    down_bps: float | None = Field(None, gt=0)
    # The default None means "unchanged" but the types leave None out, so that an explicit
    # null is a 422 (see below): hence ignore[assignment] on these four defaults.
    delay_s: float = Field(None, ge=0, le=60)  # type: ignore[assignment]
    jitter_s: float = Field(None, ge=0, le=60)  # type: ignore[assignment]
    loss: float = Field(None, ge=0, lt=1)  # type: ignore[assignment]
    partitioned: bool = None  # type: ignore[assignment]
    # (non-rate fields are typed without None so an explicit null is a 422, not a crash)


class Route(BaseModel):
    """listen -> target; bytes from the connecting client to the target flow `up` when
    the initiator is the edge side, `down` when it is the cloud side."""

    name: str
    listen: Endpoint
    target: Endpoint
    initiator: Literal["edge", "cloud"]


class WanConfig(BaseModel):
    """Config of `python -m edgecloud.resource.wan` (one process per edge site)."""

    site: str
    control: Endpoint
    routes: list[Route]
    link: LinkSettings = LinkSettings()
    state_file: Path


class LinkStatus(BaseModel):
    """What `GET /link` answers: settings and payload bytes delivered since `since`."""

    site: str
    settings: LinkSettings
    bytes_up: int
    bytes_down: int
    by_route: dict[str, dict[str, int]] = Field(
        default={}, description="the same bytes per route: {route: {'up': n, 'down': n}}")
    connections: int
    since: float
