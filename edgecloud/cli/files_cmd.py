"""`edgecloud files put | get | ls | rm`: objects in the sites' file stores.

Every command talks to one site's file server, found in the run's state.json (default:
the cloud site). `get` fetches through that server, so an object of another site crosses
the WAN (and lands in that server's cache) exactly as it would for a component.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgecloud.cli.common import HomeOption, JsonFlag, console, home_of, print_json, user_errors
from edgecloud.errors import UserError
from edgecloud.resource.files import FileClient, FileRef
from edgecloud.resource.state import RunState, load_run_state
from edgecloud.units import format_bytes

app = typer.Typer(no_args_is_help=True)

SiteOption = Annotated[str | None, typer.Option("--site", help="Site whose file server to "
                                                               "use (default: the cloud)")]


def _client(state: RunState, site: str | None) -> FileClient:
    s = state.site(site) if site else state.cloud
    return FileClient(s.files.url("http"), s.name)


def _parse_ref(text: str, state: RunState) -> FileRef:
    """`site:key` (size and sha256 looked up at that site) or a FileRef as JSON."""
    text = text.strip()
    if text.startswith("{"):
        try:
            return FileRef.model_validate(json.loads(text))
        except ValueError as exc:
            raise UserError(f"not a valid file reference: {exc}") from None
    site, sep, key = text.partition(":")
    if not sep or not key:
        raise UserError(f"expected SITE:KEY (e.g. cloud:models/eoc.bin) or a JSON reference, "
                        f"got {text!r}")
    return _client(state, site).ref(key)


@app.command("put")
@user_errors
def put(path: Annotated[Path, typer.Argument(help="File to store")], site: SiteOption = None,
        key: Annotated[str | None, typer.Option(help="Object key (default: the file name "
                                                     "under files/)")] = None,
        home: HomeOption = None, as_json: JsonFlag = False) -> None:
    """Store a file at a site; prints its reference."""
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    ref = _client(load_run_state(home_of(home)), site).put(path, key or f"files/{path.name}")
    if as_json:
        print_json(ref.model_dump())
    else:
        console.print(f"stored {format_bytes(ref.size)} as [bold]{ref.site}:{ref.key}[/] "
                      f"(sha256 {ref.sha256[:16]}…)")
        typer.echo(ref.model_dump_json())


@app.command("get")
@user_errors
def get(ref: Annotated[str, typer.Argument(help="SITE:KEY or a JSON reference")],
        output: Annotated[Path, typer.Option("-o", "--output", help="Where to write it")],
        site: SiteOption = None, home: HomeOption = None) -> None:
    """Fetch an object through a site's file server (across the WAN if it lives elsewhere)."""
    state = load_run_state(home_of(home))
    file_ref = _parse_ref(ref, state)
    _client(state, site).get_to(file_ref, output)
    console.print(f"wrote {format_bytes(file_ref.size)} to {output} (sha256 verified)")


@app.command("ls")
@user_errors
def ls(site: SiteOption = None, prefix: Annotated[str, typer.Option(help="Key prefix")] = "",
       home: HomeOption = None, as_json: JsonFlag = False) -> None:
    """List the objects stored at a site."""
    objects = _client(load_run_state(home_of(home)), site).ls(prefix)
    if as_json:
        print_json([o.model_dump() for o in objects])
        return
    if not objects:
        console.print(f"no objects{f' under {prefix!r}' if prefix else ''}")
        return
    table = Table("key", "size", "sha256", "modified")
    for o in objects:
        table.add_row(o.key, format_bytes(o.size), o.sha256[:16] + "…",
                      time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(o.modified)))
    console.print(table)


@app.command("rm")
@user_errors
def rm(key: Annotated[str, typer.Argument(help="Object key")], site: SiteOption = None,
       home: HomeOption = None) -> None:
    """Delete an object stored at a site (cached copies elsewhere stay until evicted)."""
    client = _client(load_run_state(home_of(home)), site)
    if not client.delete(key):
        raise UserError(f"no object {key!r} at site {client.site}")
    console.print(f"deleted {client.site}:{key}")
