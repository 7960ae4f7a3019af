"""`edgecloud app ...`: validate and plan topologies; deploy and manage applications."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from edgecloud.cli import app_lifecycle
from edgecloud.cli.common import HomeOption, JsonFlag, console, home_of, print_json, user_errors
from edgecloud.resource.infra import Infrastructure, load_infrastructure
from edgecloud.resource.state import load_run_state

if TYPE_CHECKING:
    from edgecloud.application.plan import DeploymentPlan
    from edgecloud.application.topology import Application
    from edgecloud.platform.orchestrator import PlacementNode

app = typer.Typer(no_args_is_help=True)
app_lifecycle.register(app)

InfraOption = Annotated[Path | None, typer.Option("--infra", help="Infrastructure file to "
                                                                  "check against (offline)")]


def _infra(infra: Path | None, home: Path | None) -> Infrastructure | None:
    if infra is not None:
        return load_infrastructure(infra)
    if home is not None or home_of(None).state_file.exists():
        return load_infrastructure(load_run_state(home_of(home)).infra_file)
    return None


@app.command("validate")
@user_errors
def validate(file: Annotated[Path, typer.Argument(help="Topology file")],
             infra: InfraOption = None, home: HomeOption = None) -> None:
    """Check a topology file: schema, connections, sites, entries, resources."""
    from edgecloud.application.topology import load_application

    application = load_application(file, _infra(infra, home))
    console.print(f"ok: {application.name}, {len(application.spec.components)} components")


@app.command("plan")
@user_errors
def plan(file: Annotated[Path, typer.Argument(help="Topology file")],
         infra: InfraOption = None, home: HomeOption = None, as_json: JsonFlag = False) -> None:
    """Show where every instance would run, without deploying.

    With a running infrastructure (--home, or ./.edgecloud) the platform plans with live
    node states and the applications already deployed; with --infra every declared node
    is taken as Ready and empty.
    """
    from edgecloud.application.topology import load_application

    if infra is None and (home is not None or home_of(None).state_file.exists()):
        client, state = app_lifecycle.client_for(home_of(home))
        with client:
            req = app_lifecycle.deploy_request(file, state, upload=False)
            doc = client.request("POST", "/apps/plan", "plan", json=req)
    else:
        inf = _infra(infra, home)
        if inf is None:
            from edgecloud.errors import UserError

            raise UserError("no infrastructure to plan on: pass --infra FILE, or --home of a "
                            "running `edgecloud up`")
        doc = plan_for(load_application(file, inf), inf).model_dump(mode="json",
                                                                     by_alias=True)
    if as_json:
        print_json(doc)
        return
    table = Table("instance", "component", "site", "node", title=f"plan of {doc['app']}")
    for i in doc["instances"]:
        table.add_row(i["name"], i["component"], i["site"], i["node"])
    console.print(table)


class ExportFormat(StrEnum):
    compose = "compose"
    k8s = "k8s"


@app.command("export")
@user_errors
def export(name_or_file: Annotated[str, typer.Argument(
               help="A deployed application's name, or a topology file (planned offline)")],
           fmt: Annotated[ExportFormat, typer.Option("--format", help="compose: one compose "
                                                     "file per node; k8s: manifests")],
           out: Annotated[Path, typer.Option("-o", "--output", help="Directory to write")],
           infra: InfraOption = None, home: HomeOption = None) -> None:
    """Write docker compose files or Kubernetes manifests for an application's plan.

    NAME: the plan of the deployed application (`--home` of a running platform). FILE: the
    topology is planned like `app plan` (offline with --infra: every node Ready and empty;
    service endpoints from the infrastructure file's `services`, else placeholders).
    """
    from edgecloud.application.plan import DeploymentPlan
    from edgecloud.platform.export import export_compose, export_k8s

    path = Path(name_or_file)
    if path.is_file() and infra is not None:
        inf = load_infrastructure(infra)
        plan = _offline_plan(path, inf)
        sites = {s.name: {"kind": s.kind,
                          "broker": s.services.broker or f"mqtt://broker.{s.name}:1883",
                          "files": s.services.files or f"http://files.{s.name}:8080"}
                 for s in inf.spec.sites}
    else:
        client, state = app_lifecycle.client_for(home_of(home))
        with client:
            if path.is_file():
                req = app_lifecycle.deploy_request(path, state, upload=False)
                doc = client.request("POST", "/apps/plan", "plan", json=req)
            else:
                doc = client.request("GET", f"/apps/{name_or_file}/plan", "app plan")
        plan = DeploymentPlan.model_validate(doc)
        sites = {s.name: {"kind": s.kind, "broker": s.broker.url("mqtt"),
                          "files": s.files.url("http")} for s in state.sites}
    writer = export_compose if fmt is ExportFormat.compose else export_k8s
    files = writer(plan, sites, out)
    console.print(f"wrote {len(files)} {fmt.value} file(s) for {plan.app} to {out}")


def _offline_plan(file: Path, inf: Infrastructure) -> DeploymentPlan:
    """Plan a topology on a declared infrastructure (every node Ready and empty)."""
    from edgecloud.application.topology import load_application

    return plan_for(load_application(file, inf), inf)


def plan_for(application: Application, inf: Infrastructure,
             node_infos: list[PlacementNode] | None = None) -> DeploymentPlan:
    """Place one application on `inf`: on `node_infos` (live states) when given, else on
    every declared node taken as Ready and empty."""
    from edgecloud.platform.orchestrator import PlacementNode, place

    if node_infos is None:
        node_infos = [PlacementNode(name=n.name, site=s.name, site_kind=s.kind, labels=n.labels,
                               resources=n.resources) for s in inf.spec.sites for n in s.nodes]
    return place([application], node_infos)[application.name]
