"""`edgecloud up`, `down` and `status`: bring an infrastructure up on this machine."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgecloud.cli.common import (
    HomeOption,
    JsonFlag,
    console,
    err_console,
    home_of,
    print_json,
    user_errors,
)
from edgecloud.config import Home
from edgecloud.errors import NotRunningError, UserError
from edgecloud.procutil import pid_alive, spawn_command
from edgecloud.resource.infra import load_infrastructure
from edgecloud.resource.state import RunState, load_run_state, read_admin_token

DETACHED_ENV = "EDGECLOUD_DETACHED_CHILD"


def default_broker() -> Literal["amqtt", "mosquitto"]:
    """Mosquitto when installed (faster, persistent), amqtt (pure Python) otherwise."""
    return "mosquitto" if shutil.which("mosquitto") or os.path.exists("/usr/sbin/mosquitto") \
        else "amqtt"


def register(app: typer.Typer) -> None:
    app.command("up")(up)
    app.command("down")(down)
    app.command("status")(status)


@user_errors
def up(
    file: Annotated[Path, typer.Argument(help="Infrastructure file (kind: Infrastructure)")],
    home: HomeOption = None,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Run in the background")]
    = False,
    broker: Annotated[str | None, typer.Option(
        "--broker", help="amqtt or mosquitto (default: mosquitto when installed)")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Platform API port "
                                                             "(default: a free one)")] = None,
    heartbeat: Annotated[float, typer.Option("--heartbeat", help="Agent heartbeat seconds")]
    = 5.0,
) -> None:
    """Start the platform, brokers, bridges, file servers, WAN emulation and node agents."""
    from edgecloud.embedded.supervisor import Supervisor

    infra = load_infrastructure(file)
    kind = broker or default_broker()
    if kind not in ("amqtt", "mosquitto"):
        raise UserError(f"--broker: expected amqtt or mosquitto, got {kind!r}")
    if kind == "mosquitto" and not (shutil.which("mosquitto")
                                    or os.path.exists("/usr/sbin/mosquitto")):
        raise UserError("--broker mosquitto: the mosquitto binary is not installed "
                        "(apt-get install mosquitto), or use --broker amqtt")
    h = home_of(home)
    if detach:
        _detach(file, h, kind, port, heartbeat)
        return
    sup = Supervisor(infra, file, h, broker=kind, heartbeat_s=heartbeat,  # type: ignore[arg-type]
                     platform_port=port)
    stop_requested = {"flag": False}

    def _on_signal(signum: int, frame: Any) -> None:
        stop_requested["flag"] = True
        sup.stopping.set()

    signal.signal(signal.SIGTERM, _on_signal)
    quiet = os.environ.get(DETACHED_ENV) == "1"
    try:
        state = _start_with_progress(sup, quiet)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    try:  # Ctrl-C anywhere from here on stops everything cleanly
        if not quiet:
            _print_state_table(state, _fetch_status(h, state))
            console.print(f"[green]Running.[/] Logs in {h.root / 'logs'}. Press Ctrl-C to "
                          f"stop (or `edgecloud down --home {h.root}`).")
        sup.watch()
    except KeyboardInterrupt:
        pass
    _stop_with_progress(sup, quiet)


def _start_with_progress(sup: Any, quiet: bool) -> RunState:
    if quiet:
        return sup.start()  # type: ignore[no-any-return]
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("starting", total=None)

        def step(what: str) -> None:
            bar.update(task, description=f"starting {what}")
            bar.console.print(f"  [dim]•[/] {what}")

        return sup.start(step)  # type: ignore[no-any-return]


def _stop_with_progress(sup: Any, quiet: bool) -> None:
    if quiet:
        sup.stop()
        return
    with console.status("stopping") as s:
        sup.stop(lambda what: s.update(what))
    console.print("[green]Stopped.[/]")


def _detach(file: Path, home: Home, broker: str, port: int | None, heartbeat: float) -> None:
    """Run the supervisor as a background process and wait until it is ready."""
    home.root.mkdir(parents=True, exist_ok=True)
    home.state_file.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "edgecloud.cli.main", "up", str(file), "--home",
            str(home.root), "--broker", broker, "--heartbeat", str(heartbeat)]
    if port:
        argv += ["--port", str(port)]
    log = home.log_file("supervisor")
    proc = spawn_command("supervisor", argv, log, env={DETACHED_ENV: "1"})
    with console.status("starting in the background"):
        while not home.state_file.exists():
            if proc.poll() is not None:
                tail = log.read_text(errors="replace").strip().splitlines()[-20:]
                raise UserError("edgecloud up failed:\n  " + "\n  ".join(tail),
                                exit_code=proc.returncode or 1)
            time.sleep(0.2)
    state = load_run_state(home)
    _print_state_table(state, _fetch_status(home, state))
    console.print(f"[green]Running in the background[/] (supervisor pid {proc.pid}). "
                  f"Stop with `edgecloud down --home {home.root}`.")


@user_errors
def down(home: HomeOption = None,
         timeout: Annotated[float, typer.Option(help="Seconds to wait for a clean stop")]
         = 60.0) -> None:
    """Stop everything started by `edgecloud up` under this home."""
    h = home_of(home)
    try:
        state = load_run_state(h)
    except NotRunningError:
        pid = _lock_pid(h)
        if pid is None or not pid_alive(pid):
            console.print(f"nothing is running under {h.root}")
            return
        state = None
    pid = state.supervisor_pid if state else _lock_pid(h)
    assert pid is not None
    if pid_alive(pid):
        os.kill(pid, signal.SIGTERM)
        with console.status(f"stopping (supervisor pid {pid})"):
            deadline = time.monotonic() + timeout
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
    if state is not None:  # a supervisor that was killed leaves its children: end them
        for svc in state.services:
            if pid_alive(svc.pid):
                try:
                    os.killpg(svc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        h.state_file.unlink(missing_ok=True)
    console.print("[green]Stopped.[/]")


def _lock_pid(home: Home) -> int | None:
    try:
        text = home.lock_file.read_text().strip()
        return int(text) if text else None
    except (FileNotFoundError, ValueError):
        return None


def _fetch_status(home: Home, state: RunState) -> dict[str, Any]:
    token = read_admin_token(home)
    url = state.platform.url("http") + "/api/v1/status"
    try:
        r = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    except httpx.HTTPError as exc:
        raise UserError(f"the platform at {state.platform.url('http')} is not reachable "
                        f"({exc}); is `edgecloud up` still running?", exit_code=1) from None
    if r.status_code != 200:
        raise UserError(f"platform status failed: {r.status_code} {r.text}", exit_code=1)
    return r.json()  # type: ignore[no-any-return]


def status_document(state: RunState, platform_status: dict[str, Any]) -> dict[str, Any]:
    """The JSON of `edgecloud status --json`: run state joined with the platform's view."""
    nodes_by_site = {s["name"]: s.get("nodes", []) for s in platform_status.get("sites", [])}
    return {
        "infra": state.infra,
        "home": str(state.home),
        "broker_kind": state.broker_kind,
        "platform": {"url": state.platform.url("http"), "pid": state.supervisor_pid},
        "sites": [{
            "name": s.name,
            "kind": s.kind,
            "broker": s.broker.url("mqtt"),
            "files": s.files.url("http"),
            "wan_control": s.wan_control.url("http") if s.wan_control else None,
            "nodes": [{"name": n["name"], "id": n.get("id"), "state": n["state"],
                       "labels": n.get("labels", {}), "resources": n.get("resources", {}),
                       "last_heartbeat": n.get("last_heartbeat"),
                       "metrics": n.get("metrics", {})}
                      for n in nodes_by_site.get(s.name, [])],
        } for s in state.sites],
    }


@user_errors
def status(home: HomeOption = None, as_json: JsonFlag = False) -> None:
    """Show sites, nodes (Ready/NotReady) and service URLs of the running infrastructure."""
    h = home_of(home)
    state = load_run_state(h)
    doc = status_document(state, _fetch_status(h, state))
    if as_json:
        print_json(doc)
    else:
        _print_state_table(state, None, doc)


def _print_state_table(state: RunState, platform_status: dict[str, Any] | None,
                       doc: dict[str, Any] | None = None) -> None:
    doc = doc or status_document(state, platform_status or {})
    table = Table(title=f"edgecloud · {state.infra} · platform {doc['platform']['url']}")
    for col in ("site", "kind", "node", "state", "labels", "broker", "files"):
        table.add_column(col)
    for site in doc["sites"]:
        first = True
        for node in site["nodes"] or [{"name": "-", "state": "-", "labels": {}}]:
            colour = "green" if node["state"] == "Ready" else "red"
            table.add_row(site["name"] if first else "", site["kind"] if first else "",
                          node["name"], f"[{colour}]{node['state']}[/]",
                          ",".join(f"{k}={v}" for k, v in node["labels"].items()),
                          site["broker"] if first else "", site["files"] if first else "")
            first = False
    console.print(table)


__all__ = ["register", "status_document", "err_console"]
