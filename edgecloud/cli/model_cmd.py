"""`edgecloud model compress`: compress a model and print size, latency and accuracy
before and after (edgecloud.ml.compression)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgecloud.cli.common import console, user_errors
from edgecloud.units import format_bytes

if TYPE_CHECKING:
    from edgecloud.ml.compression.report import CompressionReport

app = typer.Typer(no_args_is_help=True)


def render(report: CompressionReport) -> Table:
    """The before/after table of a CompressionReport."""
    metric = "acc %" if report.metric == "accuracy" else "agree %"
    table = Table(title=f"{report.model} · {report.method}", caption="; ".join(
        f"{row.variant}: {row.note}" for row in report.rows if row.note) or None)
    for col in ("variant", "size", "smaller", "ms", "faster", metric, "Δ pts", "zeros"):
        table.add_column(col, justify="left" if col == "variant" else "right",
                         no_wrap=True)
    for row in report.rows:
        r = report.ratios(row)
        table.add_row(row.variant, format_bytes(row.bytes), f"{r['size_ratio']:.2f}x",
                      f"{row.latency_ms:.2f}", f"{r['speedup']:.2f}x",
                      f"{100 * row.accuracy:.2f}", f"{r['accuracy_delta_points']:+.2f}",
                      f"{row.sparsity:.0%}")
    return table


@app.command("compress")
@user_errors
def compress_cmd(
    model: Annotated[str, typer.Option("--model", help="fashion-cnn | efficientnet-lite0")]
        = "fashion-cnn",
    method: Annotated[str, typer.Option(
        "--method", help="int8-dynamic | int8-static | int8-onnx | prune | prune-channels "
        "| distill | onnx")] = "int8-static",
    amount: Annotated[float, typer.Option(help="prune: share of weights zeroed; "
                                          "prune-channels: share of channels removed")] = 0.5,
    fine_tune_steps: Annotated[int, typer.Option(help="Adam steps after pruning "
                                                 "(fashion-cnn)")] = 300,
    frames: Annotated[int, typer.Option(help="efficientnet-lite0: crops to measure "
                                        "top-1 agreement on")] = 300,
    test_limit: Annotated[int | None, typer.Option(help="Fashion-MNIST test images to use "
                                                   "(default all 10,000)")] = None,
    latency_runs: Annotated[int, typer.Option(help="batch-1 forward passes timed")] = 50,
    threads: Annotated[int, typer.Option(help="torch threads (1 = one edge core)")] = 1,
    json_file: Annotated[Path | None, typer.Option("--json", help="Also write the report "
                                                   "as JSON to this file")] = None,
) -> None:
    """Compress a model; print size, CPU latency (batch 1) and accuracy before and after.

    Example: edgecloud model compress --model fashion-cnn --method int8-static
    """
    import torch

    from edgecloud.errors import UserError
    from edgecloud.ml.compression.report import Settings, compress

    if threads < 1:
        raise UserError("--threads must be >= 1")
    if frames < 1 or latency_runs < 1:
        raise UserError("--frames and --latency-runs must be >= 1")
    torch.set_num_threads(threads)
    settings = Settings(amount=amount, fine_tune_steps=fine_tune_steps, frames=frames,
                        test_limit=test_limit, latency_runs=latency_runs)
    with Progress(TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task(f"{model} {method}", total=None)
        report = compress(
            model, method, settings,
            step=lambda text: bar.update(task, description=text, completed=0, total=None),
            progress=lambda done, total: bar.update(task, completed=done, total=total))
    console.print(render(report))
    console.print(f"latency: median of {latency_runs} batch-1 CPU passes, {threads} thread(s)"
                  + ("; accuracy column = top-1 agreement with fp32 on "
                     f"{report.settings.get('crops')} clip crops (no ImageNet labels here); "
                     "fp32 agrees with itself on the crops shifted by 1 px for "
                     f"{100 * report.settings.get('fp32_1px_shift_agreement', 0):.1f}%"
                     if report.metric != "accuracy" else
                     "; accuracy on the Fashion-MNIST test set"))
    if json_file is not None:
        json_file.parent.mkdir(parents=True, exist_ok=True)
        json_file.write_text(json.dumps(report.as_dict(), indent=2))
        console.print(f"wrote {json_file}")
