"""Pieces every CLI module shares: the --home option, the console, user-error handling."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console

from edgecloud.config import Home
from edgecloud.errors import UserError

# Piped into a file or CI log, rich would wrap tables to 80 columns and clip every cell.
console = Console(width=None if Console().is_terminal else 160)
err_console = Console(stderr=True)

P = ParamSpec("P")
R = TypeVar("R")

HomeOption = Annotated[
    Path | None,
    typer.Option("--home", help="State directory of the run (default ./.edgecloud or "
                                "$EDGECLOUD_HOME)", show_default=False),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")]


def home_of(path: Path | None) -> Home:
    return Home(path)


def user_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorator for commands: a UserError prints its message (no traceback) and exits."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True,
                              soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None

    return wrapper


def print_json(data: Any) -> None:
    """Plain JSON on stdout (no colour), for scripts."""
    typer.echo(json.dumps(data, indent=2, default=str))
