"""`edgecloud demo federated`: FedAvg with fp32, int8 and top-k updates on the platform.

Brings up the cloud and three edge sites (examples/federated/sites.yaml) on this
machine, deploys examples/federated (an aggregator in the cloud, one client per edge
site training on its own Dirichlet shard of Fashion-MNIST), then runs one FedAvg job per
compression on the same non-IID split — started through the in-app controller
(operation ``fl-run``) — and measures each job's WAN bytes at the link accounting
point (every edge link's counters, up and down). Prints accuracy and bytes per round and
a summary table; writes JSON and PNG plots.
"""

from __future__ import annotations

import json
import tempfile
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from edgecloud.application.messages import ControllerCommand
from edgecloud.demos.harness import DemoSettings, progress, pyplot, run_and_report, save_figure
from edgecloud.demos.infra import (
    Testbed,
    copy_example_app,
    deployed,
    embedded_infrastructure,
    examples_dir,
)
from edgecloud.errors import UserError
from edgecloud.resource.files import FileClient, FileServiceError

APP = "federated"


@dataclass
class Settings(DemoSettings):
    QUICK: ClassVar[dict[str, Any]] = {"rounds": 12, "local_steps": 30, "test_limit": 2000}

    quick: bool = False
    compressions: tuple[str, ...] = ("fp32", "int8", "topk")
    ratio: float = 0.01
    down_ratio: float = 0.03
    rounds: int = 40
    local_steps: int = 50
    lr: float = 0.05
    alpha: float = 0.5
    seed: int = 0
    train_limit: int | None = None
    test_limit: int | None = None
    round_timeout: float = 120.0
    aggregator_params: dict[str, Any] | None = None
    client_params: dict[str, Any] | None = None
    """Extra client parameters (e.g. a failure drill: ``{"crash": {"round": 2}}``)."""
    home: Path | None = None
    json_path: Path | None = None
    plots_dir: Path | None = None


def infrastructure(settings: Settings, console: Console) -> AbstractContextManager[Testbed]:
    """The cloud and three edge sites, each with one client node, for the block."""
    return embedded_infrastructure(examples_dir("federated") / "sites.yaml", settings.home,
                                  "the cloud and three edge sites", console,
                                  prefix="edgecloud-fl-")


def app_file(settings: Settings, workdir: Path) -> Path:
    """examples/federated, copied to `workdir`, with the demo's data settings (the
    aggregator waits for jobs instead of starting one)."""

    def edit(topo: dict[str, Any]) -> None:
        for comp in topo["spec"]["components"]:
            if comp["name"] == "aggregator":
                comp["params"].update(autostart=False, test_limit=settings.test_limit,
                                      **(settings.aggregator_params or {}))
            if comp["name"] == "client":
                comp["params"].update(alpha=settings.alpha, seed=settings.seed,
                                      train_limit=settings.train_limit,
                                      **(settings.client_params or {}))

    return copy_example_app("federated", workdir / "federated", "federated.yaml", edit,
                            "sites.yaml")


def start_job(tb: Testbed, job: dict[str, Any]) -> None:
    """Start a FedAvg job: the in-app controller operation `fl-run` for the aggregator."""
    tb.client.send_command(APP, ControllerCommand(op="fl-run", component="aggregator",
                                                  args=job), sites=[tb.state.cloud.name])


def history(files: FileClient, run: str) -> dict[str, Any] | None:
    """The job's history as the aggregator stored it in the cloud file service `files`
    (None before its start)."""
    key = f"fl/{run}/history.json"
    for _ in range(5):
        if files.stat(key) is None:
            return None
        try:
            return json.loads(files.get(files.ref(key)))
        except FileServiceError as exc:
            # The aggregator rewrites the history every round: one written between the
            # reference and the read is refused (409, it changed); read the new one.
            if "has changed" not in str(exc):
                raise
    raise UserError(f"{key}: the aggregator rewrote it during 5 reads in a row")


def run_job(tb: Testbed, settings: Settings, compression: str, bar: Progress,
            console: Console) -> dict[str, Any]:
    run = f"{compression}-{int(time.time())}"
    job = {"run": run, "compression": compression, "ratio": settings.ratio,
           "down_ratio": settings.down_ratio,
           "rounds": settings.rounds, "local_steps": settings.local_steps,
           "lr": settings.lr, "seed": settings.seed, "round_timeout": settings.round_timeout,
           "min_clients": 2, "wait_clients": 3, "strategy": "fedavg"}
    b0 = tb.links.bytes()["total"]
    start_job(tb, job)
    task = bar.add_task(f"FedAvg {compression}", total=settings.rounds)
    seen, doc = 0, None
    deadline = time.monotonic() + 300 + settings.rounds * (settings.round_timeout + 30)
    with tb.files() as files:  # one connection for the whole job's polling
        while time.monotonic() < deadline:
            time.sleep(1.0)
            doc = history(files, run)
            if doc is None:
                continue
            for r in doc["rounds"][seen:]:
                m = r["metrics"]
                console.print(f"  {compression:>5} round {r['round']:>3}: accuracy "
                              f"{m.get('accuracy', float('nan')):.4f}  up "
                              f"{r['bytes_up'] / 1e3:8.1f} kB  down "
                              f"{r['bytes_down'] / 1e3:8.1f} kB  answered "
                              f"{len(r['answered'])}/{len(r['selected'])}")
            seen = len(doc["rounds"])
            bar.update(task, completed=seen)
            if doc["state"] in ("done", "failed"):
                break
    wan = tb.links.bytes()["total"] - b0
    if doc is None or doc["state"] != "done":
        state = doc["state"] if doc else "never started"
        raise UserError(f"federated job {run} did not finish ({state}): see `edgecloud app "
                        f"logs {APP} --home {tb.home}`", exit_code=1)
    rounds = doc["rounds"]
    return {"compression": compression, "run": run, "rounds": len(rounds),
            "final_accuracy": doc["final_accuracy"], "wan_bytes": wan,
            "accuracy_per_round": [r["metrics"].get("accuracy") for r in rounds],
            "payload_bytes_per_round": [r["bytes_up"] + r["bytes_down"] for r in rounds],
            "payload_bytes": sum(r["bytes_up"] + r["bytes_down"] for r in rounds),
            "dropped": sum(len(r["dropped"]) for r in rounds)}


def run_demo(settings: Settings, console: Console) -> dict[str, Any]:
    return run_and_report(settings, console, lambda: experiment(settings, console),
                          print_table, plot)


def experiment(settings: Settings, console: Console) -> dict[str, Any]:
    """Deploy examples/federated, run one job per compression on the same split."""
    out: dict[str, Any] = {"settings": {
        "quick": settings.quick, "rounds": settings.rounds, "local_steps": settings.local_steps,
        "alpha": settings.alpha, "ratio": settings.ratio, "clients": 3,
        "test_limit": settings.test_limit}, "runs": []}
    with infrastructure(settings, console) as tb, tempfile.TemporaryDirectory() as tmp, \
            deployed(tb.client, app_file(settings, Path(tmp)), console,
                     "deploying examples/federated"), \
            progress(console, "round {task.completed}/{task.total}") as bar:
        for compression in settings.compressions:
            out["runs"].append(run_job(tb, settings, compression, bar, console))
    return out


def print_table(out: dict[str, Any], console: Console) -> None:
    s = out["settings"]
    table = Table("compression", "rounds", "final acc", "WAN MB", "% of fp32 WAN",
                  "payload MB", "acc. loss vs fp32 (pt)", "dropped",
                  title=f"FedAvg on Fashion-MNIST, 3 edge sites, Dirichlet alpha={s['alpha']}, "
                        f"{s['local_steps']} local steps/round")
    base = next((r for r in out["runs"] if r["compression"] == "fp32"), None)
    for r in out["runs"]:
        share = f"{100 * r['wan_bytes'] / base['wan_bytes']:.1f}%" if base else "-"
        loss = (f"{100 * (base['final_accuracy'] - r['final_accuracy']):+.2f}"
                if base else "-")
        table.add_row(r["compression"], str(r["rounds"]), f"{r['final_accuracy']:.4f}",
                      f"{r['wan_bytes'] / 1e6:.2f}", share, f"{r['payload_bytes'] / 1e6:.2f}",
                      loss, str(r["dropped"]))
    console.print(table)
    console.print("WAN bytes: every edge link's counters (up + down) during the job — "
                  "updates, broadcasts, coordination messages and heartbeats. Payload: the "
                  "encoded weights and updates alone. The first round ships the full fp32 "
                  "model to every client in every run.")


def plot(out: dict[str, Any], plots_dir: Path) -> list[Path]:
    """Accuracy per round, and accuracy against cumulative payload bytes."""
    plt = pyplot(plots_dir)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for r in out["runs"]:
        acc = r["accuracy_per_round"]
        ax1.plot(range(1, len(acc) + 1), acc, marker=".", label=r["compression"])
        cum, total = [], 0
        for b in r["payload_bytes_per_round"]:
            total += b
            cum.append(total / 1e6)
        ax2.plot(cum, acc, marker=".", label=r["compression"])
    ax1.set_xlabel("round")
    ax1.set_ylabel("test accuracy")
    ax2.set_xlabel("cumulative payload (MB)")
    ax2.set_ylabel("test accuracy")
    ax2.set_xscale("log")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("FedAvg on non-IID Fashion-MNIST: fp32 vs int8 vs top-k with error feedback")
    path = save_figure(fig, plots_dir / "federated_accuracy.png")
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.bar([r["compression"] for r in out["runs"]], [r["wan_bytes"] / 1e6 for r in out["runs"]])
    ax.set_ylabel("WAN bytes per job (MB)")
    ax.set_title("measured at the WAN link accounting point")
    return [path, save_figure(fig, plots_dir / "federated_wan_bytes.png")]
