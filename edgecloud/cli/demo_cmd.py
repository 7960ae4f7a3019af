"""`edgecloud demo ...`: the project's end-to-end demonstrations, measured."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgecloud.cli.common import console, user_errors
from edgecloud.demos.harness import launch
from edgecloud.errors import UserError

app = typer.Typer(no_args_is_help=True)

# The options every demo takes.
JsonOption = Annotated[Path | None, typer.Option("--json", help="Write results here")]
PlotsOption = Annotated[Path | None, typer.Option("--plots", help="Write PNG plots here")]
HomeOption = Annotated[Path | None, typer.Option(
    "--home", help="Keep the run's state here (default: a temp dir)")]


@app.command("video-query")
@user_errors
def video_query(
    quick: Annotated[bool, typer.Option("--quick", help="A short sweep (about 5 minutes)")]
    = False,
    query: Annotated[str, typer.Option(help="What to look for: person, car, van, truck, bus, "
                                            "bicycle, motorcycle, vehicle")] = "person",
    cameras: Annotated[int, typer.Option(help="Camera nodes of the ACE testbed to run "
                                              "(9 in the paper)")] = 3,
    run_seconds: Annotated[float | None, typer.Option("--run-seconds",
                                                      help="Seconds per setting")] = None,
    json_path: JsonOption = None,
    plots: PlotsOption = None,
    home: HomeOption = None,
    uplink: Annotated[str | None, typer.Option(
        help="Every edge site's uplink rate, e.g. 1mbit (default: the testbed's 20mbit)")]
    = None,
) -> None:
    """ACE's video-query experiment: CI, EI, ECCI and ECCI+ under load and WAN delay."""
    from edgecloud.demos.infra import testbed_cameras
    from edgecloud.demos.video_query import Settings, run_demo
    from edgecloud.ml.vision import query_classes

    # Bad options fail here, before minutes of bringing up and training.
    try:
        query_classes(query)
    except KeyError as exc:
        raise UserError(f"--query: {exc.args[0]}") from None
    available = testbed_cameras()
    if not 1 <= cameras <= available:
        raise UserError(f"--cameras must be 1..{available} (the ACE testbed's camera "
                        f"nodes), not {cameras}")
    if run_seconds is not None and run_seconds <= 0:
        raise UserError(f"--run-seconds must be > 0, not {run_seconds:g}")
    from edgecloud.units import parse_rate

    try:
        uplink_bps = parse_rate(uplink) if uplink is not None else None
    except ValueError as exc:
        raise UserError(f"--uplink: {exc}") from None
    launch(Settings, run_demo, quick, console, query=query, cameras=cameras, home=home,
           json_path=json_path, plots_dir=plots, uplink_bps=uplink_bps, run_s=run_seconds)


@app.command("partition")
@user_errors
def partition(
    quick: Annotated[bool, typer.Option("--quick", help="3 WAN rates, 2 rounds (about 2-3 "
                                                        "minutes)")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="Send the crossing tensor as int8")]
    = False,
    json_path: JsonOption = None,
    plots: PlotsOption = None,
    home: HomeOption = None,
) -> None:
    """DNN partitioning: EfficientNet-Lite0 split edge/cloud across WAN rates 1-100 Mbit/s."""
    from edgecloud.demos.partition import Settings, run_demo

    launch(Settings, run_demo, quick, console, int8=int8, home=home, json_path=json_path,
           plots_dir=plots)


@app.command("federated")
@user_errors
def federated(
    quick: Annotated[bool, typer.Option("--quick", help="12 short rounds per job (~3 min)")]
    = False,
    rounds: Annotated[int | None, typer.Option(help="Rounds per job")] = None,
    json_path: JsonOption = None,
    plots: PlotsOption = None,
    home: HomeOption = None,
) -> None:
    """Federated learning across 3 edge sites: FedAvg with fp32, int8 and top-k updates."""
    from edgecloud.demos.federated import Settings, run_demo

    if rounds is not None and rounds < 1:
        raise UserError(f"--rounds must be >= 1, not {rounds}")
    launch(Settings, run_demo, quick, console, rounds=rounds, home=home, json_path=json_path,
           plots_dir=plots)


@app.command("edge-training")
@user_errors
def edge_training(
    quick: Annotated[bool, typer.Option("--quick", help="Short blocks on 20k images "
                                                        "(about 2 minutes)")] = False,
    compression: Annotated[str, typer.Option(help="Gradient encoding: fp32, int8 or topk")]
    = "fp32",
    processes: Annotated[bool, typer.Option("--processes", help="Run the workers as plain "
                                            "processes instead of components on the embedded "
                                            "infrastructure")] = False,
    json_path: JsonOption = None,
    plots: PlotsOption = None,
    home: HomeOption = None,
) -> None:
    """Data-parallel training over 3 edge workers (one 3x slower): equal vs aware split, a
    killed and a joining worker, a coordinator restart from its checkpoint."""
    from edgecloud.demos.edge_training import Settings, run_demo

    if compression not in ("fp32", "int8", "topk"):
        raise UserError(f"--compression must be fp32, int8 or topk, not {compression!r}")
    launch(Settings, run_demo, quick, console, compression=compression, json_path=json_path,
           plots_dir=plots, platform=not processes, home=home)
