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
from edgecloud.procutil import is_same_process, spawn_command
from edgecloud.resource.infra import load_infrastructure
from edgecloud.resource.state import (
    RunState,
    load_run_state,
    read_admin_token,
    supervisor_holding,
)

DETACHED_ENV = "EDGECLOUD_DETACHED_CHILD"


# --broker's values, typed as the Supervisor takes them.
_BROKER_KINDS: dict[str, Literal["amqtt", "mosquitto"]] = {"amqtt": "amqtt",
                                                           "mosquitto": "mosquitto"}


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
    kind = _BROKER_KINDS.get(broker or default_broker())
    if kind is None:
        raise UserError(f"--broker: expected amqtt or mosquitto, got {broker!r}")
    if kind == "mosquitto" and not (shutil.which("mosquitto")
                                    or os.path.exists("/usr/sbin/mosquitto")):
        raise UserError("--broker mosquitto: the mosquitto binary is not installed "
                        "(apt-get install mosquitto), or use --broker amqtt")
    h = home_of(home)
    if detach:
        _detach(file, h, kind, port, heartbeat)
        return
    sup = Supervisor(infra, file, h, broker=kind, heartbeat_s=heartbeat,
                     platform_port=port)

    def _on_signal(signum: int, frame: Any) -> None:
        sup.stopping.set()

    # `edgecloud down` (SIGTERM) and a closed terminal (SIGHUP) stop like Ctrl-C does.
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    quiet = os.environ.get(DETACHED_ENV) == "1"
    try:
        _run_foreground(sup, h, quiet)
    finally:  # whatever ends the run (an error too) stops every child; a refused run
        _stop_with_progress(sup, quiet)  # (home in use) owns nothing and stops nothing


def _run_foreground(sup: Any, h: Home, quiet: bool) -> None:
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


def _start_with_progress(sup: Any, quiet: bool) -> RunState:
    if quiet:
        return sup.start()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("starting", total=None)

        def step(what: str) -> None:
            bar.update(task, description=f"starting {what}")
            bar.console.print(f"  [dim]•[/] {what}")

        return sup.start(step)


def _stop_with_progress(sup: Any, quiet: bool) -> None:
    if quiet or not sup.owns_home:
        sup.stop()
        return
    with console.status("stopping") as s:
        sup.stop(lambda what: s.update(what))
    console.print("[green]Stopped.[/]")


def _detach(file: Path, home: Home, broker: str, port: int | None, heartbeat: float) -> None:
    """Run the supervisor as a background process and wait until it is ready."""
    from edgecloud.embedded.supervisor import already_running

    holder = supervisor_holding(home)
    if holder is not None:  # refused before anything is touched: the run's state stays
        raise already_running(home, holder or "?")
    home.root.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "edgecloud.cli.main", "up", str(file), "--home",
            str(home.root), "--broker", broker, "--heartbeat", str(heartbeat)]
    if port:
        argv += ["--port", str(port)]
    log = home.log_file("supervisor")
    proc = spawn_command("supervisor", argv, log, env={DETACHED_ENV: "1"})
    with console.status("starting in the background"):
        # A state.json left by an earlier run does not count: only the one of our child.
        while _state_pid(home) != proc.pid:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace").strip().splitlines()[-20:]
                raise UserError("edgecloud up failed:\n  " + "\n  ".join(tail),
                                exit_code=proc.returncode or 1)
            time.sleep(0.2)
    state = load_run_state(home)
    _print_state_table(state, _fetch_status(home, state))
    console.print(f"[green]Running in the background[/] (supervisor pid {proc.pid}). "
                  f"Stop with `edgecloud down --home {home.root}`.")


def _state_pid(home: Home) -> int | None:
    try:
        return load_run_state(home).supervisor_pid
    except NotRunningError:
        return None


@user_errors
def down(home: HomeOption = None,
         timeout: Annotated[float, typer.Option(help="Seconds to wait for a clean stop")]
         = 60.0) -> None:
    """Stop everything started by `edgecloud up` under this home."""
    h = home_of(home)
    try:
        state: RunState | None = load_run_state(h)
    except NotRunningError:
        state = None
    # Only a supervisor that holds the home's lock is signalled: a pid in a file may
    # belong to an unrelated process by now.
    pid = supervisor_holding(h)
    if pid is None and state is None:
        console.print(f"nothing is running under {h.root}")
        return
    if pid is not None:
        _stop_supervisor(h, pid or (state.supervisor_pid if state else 0), timeout)
    left = _end_leftover_services(state) if state is not None else 0
    h.state_file.unlink(missing_ok=True)
    if pid is None and left == 0:
        console.print(f"nothing was running under {h.root} (its supervisor had died; "
                      "removed its stale state)")
        return
    console.print("[green]Stopped.[/]")


def _stop_supervisor(h: Home, pid: int, timeout: float) -> None:
    if pid <= 0:
        raise UserError(f"{h.lock_file} is locked but names no supervisor pid; try again in "
                        "a moment", exit_code=1)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with console.status(f"stopping (supervisor pid {pid})"):
        deadline = time.monotonic() + timeout
        while supervisor_holding(h) is not None and time.monotonic() < deadline:
            time.sleep(0.2)
    if supervisor_holding(h) is not None:
        raise UserError(f"the supervisor (pid {pid}) did not stop within {timeout:g}s; see "
                        f"{h.log_file('supervisor')} or try again with a longer --timeout",
                        exit_code=1)


def _end_leftover_services(state: RunState) -> int:
    """Kill the process groups of services that outlived their supervisor; only those
    whose pid still is the process recorded in state.json (same start time)."""
    killed = 0
    for svc in state.services:
        if svc.started is None or not is_same_process(svc.pid, svc.started):
            continue
        try:
            os.killpg(svc.pid, signal.SIGKILL)
            killed += 1
        except (ProcessLookupError, PermissionError):
            pass
    return killed


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
    return r.json()


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
        "services": [{"name": svc.name, "state": svc.state, "restarts": svc.restarts,
                      "pid": svc.pid, "detail": svc.detail, "log": str(svc.log)}
                     for svc in state.services],
    }


@user_errors
def status(home: HomeOption = None, as_json: JsonFlag = False) -> None:
    """Show sites, nodes (Ready/NotReady), service URLs and the health of every service."""
    h = home_of(home)
    state = load_run_state(h)
    if supervisor_holding(h) is None:
        raise NotRunningError(f"the supervisor (pid {state.supervisor_pid}) of the run under "
                              f"{h.root} is gone; `edgecloud down --home {h.root}` cleans up "
                              "what is left, then start again with `edgecloud up`")
    doc = status_document(state, _fetch_status(h, state))
    if as_json:
        print_json(doc)
    else:
        _print_state_table(state, None, doc, every=True)


def _print_state_table(state: RunState, platform_status: dict[str, Any] | None,
                       doc: dict[str, Any] | None = None, every: bool = False) -> None:
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
    _print_services(doc["services"], every)


SERVICE_COLOURS = {"running": "green", "restarting": "yellow", "failed": "red"}


def _print_services(services: list[dict[str, Any]], every: bool = False) -> None:
    """The services' health: a table (all of them with `every`, else only when one is
    not running or has restarted), or one line when all is well."""
    unhealthy = [s for s in services if s["state"] != "running" or s["restarts"]]
    if not unhealthy and not every:
        if services:
            console.print(f"services: all {len(services)} running", highlight=False)
        return
    table = Table(title="services")
    for col in ("service", "state", "restarts", "pid", "detail"):
        table.add_column(col)
    for svc in services:
        colour = SERVICE_COLOURS.get(svc["state"], "red")
        table.add_row(svc["name"], f"[{colour}]{svc['state']}[/]", str(svc["restarts"]),
                      str(svc["pid"]), svc["detail"])
    console.print(table)


__all__ = ["register", "status_document", "err_console"]
