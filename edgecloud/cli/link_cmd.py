"""`edgecloud link set | show`: the emulated WAN links of the edge sites, live."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich import box
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
from edgecloud.errors import UserError
from edgecloud.resource.state import RunState, load_run_state
from edgecloud.resource.wan import LinkClient, LinkStatus
from edgecloud.units import format_bytes, format_rate, parse_duration, parse_rate

app = typer.Typer(no_args_is_help=True)


def _client(state: RunState, site: str) -> LinkClient:
    """The control client of `site`'s link, or a UserError naming the sites that have one."""
    edges = ", ".join(x.name for x in state.sites if x.wan_control) or "none"
    s = next((x for x in state.sites if x.name == site), None)
    if s is None:
        raise UserError(f"no site {site!r} in the running infrastructure {state.infra!r}; "
                        f"edge sites with WAN links: {edges}")
    if s.wan_control is None:
        raise UserError(f"site {site!r} is the {s.kind} site and has no WAN link of its own "
                        f"(each edge site's link joins it to the cloud); edge sites with WAN "
                        f"links: {edges}")
    return LinkClient(s.wan_control.url("http"), site)


def _loss(text: str) -> float:
    value = float(text.strip().rstrip("%")) / (100 if text.strip().endswith("%") else 1)
    if not 0 <= value < 1:
        raise ValueError("expected a loss probability in [0, 1) such as 0.01 or 1%")
    return value


def _parse(option: str, text: str | None, parser: Any) -> Any:
    if text is None:
        return None
    try:
        return parser(text)
    except ValueError as exc:
        raise UserError(f"{option}: {exc}") from None


@app.command("set")
@user_errors
def set_link(
    site: Annotated[str, typer.Argument(help="Edge site")],
    up: Annotated[str | None, typer.Option(help="Rate edge->cloud, e.g. 20mbit")] = None,
    down: Annotated[str | None, typer.Option(help="Rate cloud->edge, e.g. 40mbit")] = None,
    delay: Annotated[str | None, typer.Option(help="One-way delay, e.g. 50ms")] = None,
    jitter: Annotated[str | None, typer.Option(help="Delay jitter, e.g. 5ms")] = None,
    loss: Annotated[str | None, typer.Option(help="Loss probability, e.g. 0.01 or 1%")]
    = None,
    partition: Annotated[bool, typer.Option("--partition", help="Cut the link")] = False,
    heal: Annotated[bool, typer.Option("--heal", help="Restore a cut link")] = False,
    home: HomeOption = None,
) -> None:
    """Change a site's WAN link live (open connections feel it at once)."""
    if partition and heal:
        raise UserError("--partition and --heal exclude each other")
    changes: dict[str, Any] = {}
    for key, value in (("up_bps", _parse("--up", up, parse_rate)),
                       ("down_bps", _parse("--down", down, parse_rate)),
                       ("delay_s", _parse("--delay", delay, parse_duration)),
                       ("jitter_s", _parse("--jitter", jitter, parse_duration)),
                       ("loss", _parse("--loss", loss, _loss))):
        if value is not None:
            changes[key] = value
    if partition or heal:
        changes["partitioned"] = partition
    if not changes:
        raise UserError("nothing to change: give --up, --down, --delay, --jitter, --loss, "
                        "--partition or --heal")
    status = _client(load_run_state(home_of(home)), site).update(**changes)
    _print([status])


@app.command("show")
@user_errors
def show(home: HomeOption = None, as_json: JsonFlag = False,
         routes: Annotated[bool, typer.Option("--routes", help="Also split the bytes by "
                                              "route (mqtt, files, platform, ...)")] = False,
         ) -> None:
    """Settings of every edge site's link and the bytes sent up and down since start."""
    state = load_run_state(home_of(home))
    statuses: list[LinkStatus] = []
    failed: list[str] = []
    for site in state.sites:
        if site.wan_control is None:
            continue
        try:
            statuses.append(_client(state, site.name).status())
        except UserError as exc:  # one dead proxy must not hide the other links
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            failed.append(site.name)
    if as_json:
        print_json({"sites": [{"site": s.site, **s.model_dump(exclude={"site"})}
                              for s in statuses]})
    else:
        _print(statuses)
        if routes:
            _print_routes(statuses)
    if failed:
        raise typer.Exit(1)


def _print(statuses: list[LinkStatus]) -> None:
    # simple box, no edge padding: fits an 80-column terminal with "unlimited" rates
    table = Table("site", "up", "down", "delay", "jitter", "loss", "partition", "bytes up",
                  "bytes down", box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0))
    for st in statuses:
        s = st.settings
        table.add_row(st.site, format_rate(s.up_bps), format_rate(s.down_bps),
                      f"{s.delay_s * 1000:g}ms", f"{s.jitter_s * 1000:g}ms", f"{s.loss * 100:g}%",
                      "[red]yes[/]" if s.partitioned else "[green]no[/]",
                      format_bytes(st.bytes_up), format_bytes(st.bytes_down))
    console.print(table)


def _print_routes(statuses: list[LinkStatus]) -> None:
    table = Table("site", "route", "bytes up", "bytes down", box=box.SIMPLE_HEAD,
                  show_edge=False, padding=(0, 1, 0, 0))
    for st in statuses:
        for route, counts in sorted(st.by_route.items()):
            table.add_row(st.site, route, format_bytes(counts.get("up", 0)),
                          format_bytes(counts.get("down", 0)))
    console.print(table)
