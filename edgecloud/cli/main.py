"""The `edgecloud` command: one entry point, one sub-app per area."""

from __future__ import annotations

import typer

from edgecloud.cli import (
    agent_cmd,
    app_cmd,
    command_cmd,
    demo_cmd,
    files_cmd,
    infra_cmd,
    link_cmd,
    model_cmd,
)

app = typer.Typer(
    name="edgecloud",
    help="Build, deploy and run AIoT applications across edge sites and a central cloud.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
infra_cmd.register(app)
agent_cmd.register(app)
app.add_typer(link_cmd.app, name="link", help="Show and change the emulated WAN links.")
app.add_typer(files_cmd.app, name="files", help="Put, get and list objects in site file stores.")
app.add_typer(app_cmd.app, name="app", help="Validate, plan, deploy and manage applications.")
app_cmd.app.command("command")(command_cmd.command)
app.add_typer(demo_cmd.app, name="demo", help="Run the end-to-end demonstrations.")
app.add_typer(model_cmd.app, name="model", help="Compress models (quantize, prune, distill, ONNX).")


if __name__ == "__main__":
    app()
