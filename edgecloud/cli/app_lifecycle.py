"""`edgecloud app deploy | list | status | logs | update | delete`: apps on a running platform."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from edgecloud.application.plan import DeploymentPlan
from edgecloud.application.wire import AppDetail, AppSummary, DeployRequest, LogPage
from edgecloud.cli.common import HomeOption, JsonFlag, console, home_of, print_json, user_errors
from edgecloud.config import Home
from edgecloud.errors import UserError
from edgecloud.resource.protocol import PlatformClient
from edgecloud.resource.state import RunState, load_run_state, read_admin_token
from edgecloud.units import format_bytes


def register(app: typer.Typer) -> None:
    app.command("deploy")(deploy)
    app.command("list")(list_apps)
    app.command("status")(status)
    app.command("logs")(logs)
    app.command("update")(update)
    app.command("delete")(delete)


def client_for(home: Home) -> tuple[PlatformClient, RunState]:
    state = load_run_state(home)
    return PlatformClient(state.platform.url("http"), read_admin_token(home)), state


def deploy_request(file: Path, state: RunState, upload: bool = True) -> DeployRequest:
    """Validate the topology against the running infrastructure, ship its bundle."""
    from edgecloud.application.bundle import bundle_python_path, make_bundle
    from edgecloud.application.topology import load_application
    from edgecloud.resource.files import FileClient
    from edgecloud.resource.infra import load_infrastructure

    infra = load_infrastructure(state.infra_file)
    application = load_application(file, infra)
    source_dir = file.resolve().parent
    bundle = None
    if upload:
        cloud = state.cloud
        files = FileClient(cloud.files.url("http"), cloud.name)
        bundle = files.put(make_bundle(source_dir, exclude=(file,)),
                           key=f"apps/{application.metadata.name}/bundle.tgz")
    return DeployRequest(topology=application, bundle=bundle, source_dir=str(source_dir),
                         bundle_python_path=bundle_python_path(
                             source_dir, list(application.spec.python_path or [])))



def app_detail(client: PlatformClient, name: str) -> AppDetail:
    return AppDetail.model_validate(client.request("GET", f"/apps/{name}", "app status"))


FileArg = Annotated[Path, typer.Argument(help="Topology file (kind: Application)")]
WaitOpt = Annotated[float, typer.Option("--wait", help="Seconds to wait for every instance "
                                                       "to run (0: don't wait)")]


@user_errors
def deploy(file: FileArg, home: HomeOption = None, wait: WaitOpt = 60.0,
           as_json: JsonFlag = False) -> None:
    """Place the application's components and start them on their nodes."""
    client, state = client_for(home_of(home))
    with client:
        plan = DeploymentPlan.model_validate(client.request(
            "POST", "/apps", "deploy", json=deploy_request(file, state)))
        if wait > 0:
            _wait_running(client, plan.app, wait)
        if as_json:
            print_json(plan.model_dump(mode="json", by_alias=True))
        else:
            _print_instances(app_detail(client, plan.app))


@user_errors
def update(file: FileArg, home: HomeOption = None,
           thorough: Annotated[bool, typer.Option(
               "--thorough", help="Delete and redeploy instead of restarting only what "
                                  "changed")] = False,
           wait: WaitOpt = 60.0) -> None:
    """Apply a changed topology: only changed components restart (or all, --thorough)."""
    client, state = client_for(home_of(home))
    with client:
        req = deploy_request(file, state)
        name = req.topology.metadata.name
        client.request("PUT", f"/apps/{name}", "update", json=req,
                       params={"thorough": str(thorough).lower()})
        if wait > 0:
            _wait_running(client, name, wait)
        _print_instances(app_detail(client, name))


def _wait_running(client: PlatformClient, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with console.status(f"waiting for the instances of {name} to run"):
        while time.monotonic() < deadline:
            insts = app_detail(client, name).instances
            if insts and all(i.state == "Running" and i.up_to_date for i in insts):
                return
            failed = [i for i in insts if i.state == "Failed"]
            if failed:
                raise UserError("instances failed: " + "; ".join(
                    f"{i.name} on {i.node}: {i.reason}" for i in failed), exit_code=1)
            time.sleep(0.5)
    console.print(f"[yellow]not all instances of {name} are running after {timeout:.0f}s; "
                  f"see `edgecloud app status {name}` and `edgecloud app logs {name}`[/]")


@user_errors
def list_apps(home: HomeOption = None, as_json: JsonFlag = False) -> None:
    """Deployed applications."""
    client, _ = client_for(home_of(home))
    with client:
        apps = [AppSummary.model_validate(a)
                for a in client.request("GET", "/apps", "list apps")]
    if as_json:
        print_json([a.model_dump(mode="json") for a in apps])
        return
    table = Table("app", "revision", "instances", "running")
    for a in apps:
        table.add_row(a.name, str(a.revision), str(a.instances), str(a.running))
    console.print(table)


@user_errors
def status(name: str, home: HomeOption = None, as_json: JsonFlag = False) -> None:
    """Instances of an application: where they run, state, restarts, CPU, memory."""
    client, _ = client_for(home_of(home))
    with client:
        doc = app_detail(client, name)
    if as_json:
        print_json(doc.model_dump(mode="json"))
    else:
        _print_instances(doc)


def _print_instances(doc: AppDetail) -> None:
    table = Table("instance", "component", "site", "node", "state", "restarts", "cpu %",
                  "memory", "reason", title=f"{doc.name} (revision {doc.revision})")
    colours = {"Running": "green", "Pending": "yellow", "Restarting": "yellow"}
    for i in doc.instances:
        c = colours.get(i.state, "red")
        table.add_row(i.name, i.component, i.site, i.node, f"[{c}]{i.state}[/]",
                      str(i.restarts), f"{i.cpu_percent:.0f}",
                      format_bytes(i.memory_rss) if i.memory_rss else "-", i.reason[:80])
    console.print(table)


@user_errors
def logs(name: str,
         select: Annotated[str | None, typer.Argument(help="Component or instance")] = None,
         home: HomeOption = None,
         follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new "
                                                                      "output")] = False,
         ) -> None:
    """Output of an application's instances (shipped by agents with their heartbeats)."""
    client, _ = client_for(home_of(home))
    after = 0
    with client:
        while True:
            params: dict[str, Any] = {"after": after}
            if select:
                params["select"] = select
            page = LogPage.model_validate(
                client.request("GET", f"/apps/{name}/logs", "app logs", params=params))
            for e in page.entries:
                for line in e.text.splitlines():
                    typer.echo(f"{e.instance:>16} | {line}")
            after = page.next
            if not follow:
                return
            time.sleep(1.0)


@user_errors
def delete(name: str, home: HomeOption = None) -> None:
    """Stop and remove every instance of an application."""
    client, _ = client_for(home_of(home))
    with client:
        client.request("DELETE", f"/apps/{name}", "delete app")
    console.print(f"deleted {name}")
