"""`edgecloud app ...`: validate and plan topologies; deploy and manage applications."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgecloud.cli import app_lifecycle
from edgecloud.cli.common import HomeOption, JsonFlag, console, home_of, print_json, user_errors
from edgecloud.resource.infra import Infrastructure, load_infrastructure
from edgecloud.resource.state import load_run_state

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
    from edgecloud.platform.orchestrator import NodeInfo, place

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
        application = load_application(file, inf)
        nodes = [NodeInfo(name=n.name, site=s.name, site_kind=s.kind, labels=n.labels,
                          resources=n.resources) for s in inf.spec.sites for n in s.nodes]
        doc = place([application], nodes)[application.name].model_dump(mode="json",
                                                                       by_alias=True)
    if as_json:
        print_json(doc)
        return
    table = Table("instance", "component", "site", "node", title=f"plan of {doc['app']}")
    for i in doc["instances"]:
        table.add_row(i["name"], i["component"], i["site"], i["node"])
    console.print(table)
