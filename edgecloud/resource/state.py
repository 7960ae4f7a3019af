"""What a running embedded infrastructure looks like from outside: `<home>/state.json`.

The supervisor of `edgecloud up` writes it once every service is up; every other command
(`status`, `link`, `files`, `app ...`) reads it to find the platform, brokers, file
servers and WAN controls.
"""

from __future__ import annotations

import fcntl
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from edgecloud.config import Home
from edgecloud.errors import NotRunningError
from edgecloud.service import Endpoint


class SiteRuntime(BaseModel):
    name: str
    kind: Literal["cloud", "edge"]
    broker: Endpoint
    files: Endpoint
    wan_control: Endpoint | None = None
    routes: dict[str, Endpoint] = {}
    """WAN route name -> listen endpoint of this site's shaping proxy (edge sites only):
    `mqtt` (-> cloud broker), `platform` (-> platform API), `files-cloud`,
    `files-<edge>` (-> that edge's `files-in`), `files-in` (-> this site's file server)."""


ServiceHealth = Literal["running", "restarting", "failed"]


class ServiceRuntime(BaseModel):
    """One service process of the run, as the supervisor last saw it."""

    name: str
    pid: int = Field(description="the current (or, once failed, the last) process id")
    log: Path
    started: float | None = Field(
        None, description="the process's start time (epoch s): tells our pid from a later "
                          "process that reuses it")
    state: ServiceHealth = "running"
    restarts: int = Field(0, description="restarts since the run started")
    detail: str = Field("", description="why it is restarting or failed")


class RunState(BaseModel):
    infra: str
    infra_file: Path
    home: Path
    supervisor_pid: int
    broker_kind: Literal["amqtt", "mosquitto"]
    platform: Endpoint
    sites: list[SiteRuntime]
    services: list[ServiceRuntime] = []

    def site(self, name: str) -> SiteRuntime:
        for s in self.sites:
            if s.name == name:
                return s
        known = ", ".join(s.name for s in self.sites)
        raise NotRunningError(f"no site {name!r} in the running infrastructure (sites: {known})")

    @property
    def cloud(self) -> SiteRuntime:
        return next(s for s in self.sites if s.kind == "cloud")

    def save(self, home: Home) -> None:
        tmp = home.state_file.with_suffix(".tmp")
        tmp.write_text(self.model_dump_json(indent=2))
        tmp.replace(home.state_file)


def load_run_state(home: Home) -> RunState:
    """Read state.json, or say clearly that nothing runs under this home."""
    path = home.state_file
    try:
        return RunState.model_validate(json.loads(path.read_text()))
    except FileNotFoundError:
        raise NotRunningError(
            f"no edgecloud infrastructure is running under {home.root} (no {path.name}); "
            "start one with `edgecloud up FILE` or pass --home"
        ) from None
    except (ValueError, ValidationError) as exc:
        raise NotRunningError(f"{path}: unreadable state file ({exc}); run `edgecloud down` "
                              "and `edgecloud up` again") from None


def read_admin_token(home: Home) -> str:
    try:
        return home.admin_token_file.read_text().strip()
    except FileNotFoundError:
        raise NotRunningError(f"{home.admin_token_file}: admin token not found; is this the "
                              "home of a running `edgecloud up`?") from None




def supervisor_holding(home: Home) -> int | None:
    """The pid of the supervisor that holds this home's lock, or None if none does.

    The lock (flock on `supervisor.lock`) is held for a supervisor's whole life and
    released by the kernel when it dies, however it dies: unlike a pid in a file, it
    cannot be stale. 0 means held, but the holder has not written its pid yet.
    """
    try:
        fh = open(home.lock_file)  # noqa: SIM115 - closed below; never create it here
    except FileNotFoundError:
        return None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = fh.read().strip()
            return int(text) if text.isdigit() else 0
        fcntl.flock(fh, fcntl.LOCK_UN)
    return None
