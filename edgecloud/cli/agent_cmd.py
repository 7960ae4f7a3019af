"""`edgecloud agent` (run a node agent) and `edgecloud token create` (join tokens)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from edgecloud.cli.common import HomeOption, JsonFlag, console, home_of, print_json, user_errors
from edgecloud.config import default_home
from edgecloud.errors import UserError
from edgecloud.log import setup_logging
from edgecloud.resource.agent import AgentConfig, run_agent
from edgecloud.resource.infra import Resources
from edgecloud.resource.protocol import PlatformClient
from edgecloud.resource.state import load_run_state, read_admin_token
from edgecloud.schema import validation_problems
from edgecloud.service import stop_event_on_signals
from edgecloud.units import parse_duration

token_app = typer.Typer(help="Create join tokens for node agents.", no_args_is_help=True)


def parse_labels(items: list[str]) -> dict[str, str]:
    """`["camera=true", "zone=a,floor=2"]` -> {"camera": "true", "zone": "a", "floor": "2"}."""
    labels: dict[str, str] = {}
    for item in items:
        for pair in filter(None, (p.strip() for p in item.split(","))):
            key, sep, value = pair.partition("=")
            if not sep or not key.strip():
                raise UserError(f"--labels: expected key=value, got {pair!r}")
            labels[key.strip()] = value.strip()
    return labels


def parse_resources(text: str) -> Resources:
    """`cpu=4,memory=4Gi,gpu=0` -> Resources (same spellings as infrastructure files)."""
    fields: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = pair.partition("=")
        if not sep:
            raise UserError(f"--resources: expected key=value (cpu=4,memory=4Gi,gpu=0), "
                            f"got {pair!r}")
        fields[key.strip()] = value.strip()
    try:
        return Resources.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(f"{p}: {m}" for p, m in validation_problems(exc))
        raise UserError(f"--resources {text!r}: {problems}") from None


def read_token_file(path: Path) -> str:
    """The join token stored in `path` (surrounding whitespace ignored)."""
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise UserError(f"--token-file {path}: cannot read it ({exc.strerror})") from None
    if not token:
        raise UserError(f"--token-file {path}: the file is empty; put the join token from "
                        "`edgecloud token create` in it")
    return token


@user_errors
def agent(
    platform: Annotated[str, typer.Option("--platform", help="Platform URL as reachable from "
                                                             "this node")],
    site: Annotated[str, typer.Option("--site", help="Site this node belongs to")],
    name: Annotated[str, typer.Option("--name", help="Node name (unique in the "
                                                     "infrastructure)")],
    token: Annotated[str | None, typer.Option(
        "--token", envvar="EDGECLOUD_JOIN_TOKEN",
        help="One-time join token (not needed once joined: the node token is saved)")] = None,
    token_file: Annotated[Path | None, typer.Option(
        "--token-file", help="Read the join token from this file (keeps it out of `ps`; "
                             "what `edgecloud up` uses)")] = None,
    labels: Annotated[list[str] | None, typer.Option(
        "--labels", help="Node labels key=value (repeat or comma-separate)")] = None,
    resources: Annotated[str | None, typer.Option(
        "--resources", help="Declared capacity, e.g. cpu=4,memory=4Gi,gpu=0 (default: "
                            "detected)")] = None,
    speed: Annotated[float, typer.Option("--speed", help="Compute speed factor")] = 1.0,
    state_dir: Annotated[Path | None, typer.Option(
        "--state-dir", help="Node token and last assignment (default "
                            "<home>/nodes/<name>)")] = None,
    heartbeat: Annotated[float | None, typer.Option(
        "--heartbeat", help="Heartbeat interval in seconds (default: the platform's)")] = None,
) -> None:
    """Run a node agent: join the platform, heartbeat, follow the node's assignment."""
    if speed <= 0:
        raise UserError("--speed must be positive")
    if heartbeat is not None and heartbeat <= 0:
        raise UserError("--heartbeat must be positive")
    if token_file is not None:
        if token is not None:
            raise UserError("pass either --token or --token-file, not both")
        token = read_token_file(token_file)
    config = AgentConfig(
        platform_url=platform, site=site, name=name, join_token=token,
        labels=parse_labels(labels or []),
        resources=parse_resources(resources) if resources else None, speed=speed,
        state_dir=state_dir or default_home() / "nodes" / name,
        heartbeat_interval_s=heartbeat)
    setup_logging()
    run_agent(config, stop_event_on_signals())


@user_errors
def token_create(
    site: Annotated[str, typer.Option("--site", help="Site the new node will join")],
    ttl: Annotated[str, typer.Option("--ttl", help="Validity, e.g. 10m, 1h")] = "1h",
    home: HomeOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a one-time join token and print the `edgecloud agent` command for the device."""
    try:
        ttl_s = parse_duration(ttl)
    except ValueError as exc:
        raise UserError(f"--ttl: {exc}") from None
    h = home_of(home)
    state = load_run_state(h)
    site_rt = state.site(site)
    # Edge agents reach the platform through their site's WAN route (like `edgecloud up`).
    route = site_rt.routes.get("platform")
    url = route.url("http") if route else state.platform.url("http")
    with PlatformClient(state.platform.url("http"), read_admin_token(h)) as client:
        tok = client.create_token(site, ttl_s)
    command = (f"edgecloud agent --platform {shlex.quote(url)} --token "
               f"{shlex.quote(tok.token)} --site {shlex.quote(site)} --name <NODE-NAME>")
    if as_json:
        print_json({"token": tok.token, "site": tok.site,
                    "expires_at": tok.expires_at.isoformat(), "platform": url,
                    "command": command})
        return
    console.print(f"join token for site [bold]{site}[/] (one-time, expires "
                  f"{tok.expires_at:%Y-%m-%d %H:%M:%S} UTC):", highlight=False)
    console.print(f"  {tok.token}", highlight=False, soft_wrap=True)
    console.print("run on the device (pick a node name unique in the infrastructure):",
                  highlight=False)
    console.print(f"  {command}", highlight=False, soft_wrap=True, markup=False)
    if url.startswith(("http://127.", "http://localhost")):
        console.print(f"[yellow]note:[/] {url} is a loopback address; a device on the network "
                      "needs an address of this machine it can reach.", highlight=False)


token_app.command("create")(token_create)


def register(app: typer.Typer) -> None:
    """Add `agent` and the `token` group to the main app."""
    app.command("agent")(agent)
    app.add_typer(token_app, name="token", help="Create join tokens for node agents.")
