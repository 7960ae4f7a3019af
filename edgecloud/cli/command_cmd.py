"""`edgecloud app command APP OP [KEY=VALUE ...]`: a controller operation for an app's
components, sent through the platform (`POST /api/v1/apps/{name}/commands`)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from edgecloud.cli.common import HomeOption, JsonFlag, console, home_of, print_json, user_errors
from edgecloud.errors import UserError


def parse_args(pairs: list[str]) -> dict[str, Any]:
    """KEY=VALUE pairs; a value is JSON if it parses (2, 0.5, true, [1,2], {"a":1}), else
    the text itself."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise UserError(f"argument {pair!r}: expected KEY=VALUE (e.g. every=2)")
        try:
            out[key] = json.loads(text)
        except ValueError:
            out[key] = text
    return out


@user_errors
def command(
    name: Annotated[str, typer.Argument(help="Application")],
    op: Annotated[str, typer.Argument(help="start, terminate, set, filter, or one of the "
                                           "application's own operations")],
    args: Annotated[list[str] | None, typer.Argument(
        help="KEY=VALUE arguments (values parsed as JSON when they can be)")] = None,
    component: Annotated[str, typer.Option(
        "--component", "-c", help="Component or instance name (default: all)")] = "*",
    site: Annotated[list[str] | None, typer.Option(
        "--site", help="Site to send it to (repeatable; default: every site the app runs "
                       "at)")] = None,
    home: HomeOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Send a controller command to an application's components, e.g.
    `edgecloud app command relay-demo filter -c relay target=sink every=2`."""
    from edgecloud.application.messages import ControllerCommand
    from edgecloud.client import Client

    try:
        cmd = ControllerCommand(op=op, component=component, args=parse_args(args or []))
    except ValueError as exc:
        raise UserError(f"invalid command: {exc}") from None
    with Client.from_home(home_of(home)) as ec:
        result = ec.send_command(name, cmd, sites=site or None)
    if as_json:
        print_json(result.model_dump())
    else:
        console.print(f"sent {op!r} to {component} of {name} at {', '.join(result.sites)}")
