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
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgecloud.application import topics
from edgecloud.demos.infra import (
    copy_example_app,
    deploy_app,
    embedded_infrastructure,
    examples_dir,
)
from edgecloud.errors import UserError
from edgecloud.resource.files import FileClient
from edgecloud.resource.mqtt import MqttClient
from edgecloud.resource.protocol import PlatformClient
from edgecloud.resource.state import RunState
from edgecloud.resource.wan import LinkClient

APP = "federated"


@dataclass
class Settings:
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

    @classmethod
    def quick_settings(cls, **kw: Any) -> Settings:
        base: dict[str, Any] = {"quick": True, "rounds": 12, "local_steps": 30,
                                "test_limit": 2000}
        return cls(**{**base, **{k: v for k, v in kw.items() if v is not None}})


def infrastructure(settings: Settings, console: Console) -> AbstractContextManager[RunState]:
    """The cloud and three edge sites, each with one client node, for the block."""
    return embedded_infrastructure(examples_dir("federated") / "sites.yaml", settings.home,
                                  "the cloud and three edge sites", console,
                                  prefix="edgecloud-fl-")


def deploy(state: RunState, settings: Settings, workdir: Path) -> PlatformClient:
    """Deploy examples/federated with the demo's data settings; wait until it runs."""

    def edit(topo: dict[str, Any]) -> None:
        for comp in topo["spec"]["components"]:
            if comp["name"] == "aggregator":
                comp["params"].update(autostart=False, test_limit=settings.test_limit,
                                      **(settings.aggregator_params or {}))
            if comp["name"] == "client":
                comp["params"].update(alpha=settings.alpha, seed=settings.seed,
                                      train_limit=settings.train_limit,
                                      **(settings.client_params or {}))

    topo_file = copy_example_app("federated", workdir / "federated", "federated.yaml", edit,
                                 "sites.yaml")
    return deploy_app(state, topo_file, APP)


class Operator:
    """Starts jobs through the in-app controller channel and reads the WAN counters."""

    def __init__(self, state: RunState) -> None:
        self.state = state
        self.broker = MqttClient(state.cloud.broker.url("mqtt"), src="fl-operator").connect()
        self.files = FileClient(state.cloud.files.url("http"), state.cloud.name)
        self.links = [LinkClient(s.wan_control.url("http"), s.name)
                      for s in state.sites if s.wan_control]

    def start(self, job: dict[str, Any]) -> None:
        self.broker.publish(topics.commands(self.state.cloud.name, APP),
                            {"op": "fl-run", "component": "aggregator", "args": job})
        self.broker.flush(5)

    def wan_bytes(self) -> int:
        return sum(st.bytes_up + st.bytes_down for st in (lk.status() for lk in self.links))

    def history(self, run: str) -> dict[str, Any] | None:
        key = f"fl/{run}/history.json"
        if self.files.stat(key) is None:
            return None
        return json.loads(self.files.get(self.files.ref(key)))  # type: ignore[no-any-return]

    def close(self) -> None:
        self.broker.close()


def run_job(op: Operator, settings: Settings, compression: str, bar: Progress,
            console: Console) -> dict[str, Any]:
    run = f"{compression}-{int(time.time())}"
    job = {"run": run, "compression": compression, "ratio": settings.ratio,
           "down_ratio": settings.down_ratio,
           "rounds": settings.rounds, "local_steps": settings.local_steps,
           "lr": settings.lr, "seed": settings.seed, "round_timeout": settings.round_timeout,
           "min_clients": 2, "wait_clients": 3, "strategy": "fedavg"}
    b0 = op.wan_bytes()
    op.start(job)
    task = bar.add_task(f"FedAvg {compression}", total=settings.rounds)
    seen, doc = 0, None
    deadline = time.monotonic() + 300 + settings.rounds * (settings.round_timeout + 30)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        doc = op.history(run)
        if doc is None:
            continue
        for r in doc["rounds"][seen:]:
            m = r["metrics"]
            console.print(f"  {compression:>5} round {r['round']:>3}: accuracy "
                          f"{m.get('accuracy', float('nan')):.4f}  up {r['bytes_up'] / 1e3:8.1f}"
                          f" kB  down {r['bytes_down'] / 1e3:8.1f} kB  answered "
                          f"{len(r['answered'])}/{len(r['selected'])}")
        seen = len(doc["rounds"])
        bar.update(task, completed=seen)
        if doc["state"] in ("done", "failed"):
            break
    wan = op.wan_bytes() - b0
    if doc is None or doc["state"] != "done":
        state = doc["state"] if doc else "never started"
        raise UserError(f"federated job {run} did not finish ({state}): see `edgecloud app "
                        f"logs {APP} --home {op.state.home}`", exit_code=1)
    rounds = doc["rounds"]
    return {"compression": compression, "run": run, "rounds": len(rounds),
            "final_accuracy": doc["final_accuracy"], "wan_bytes": wan,
            "accuracy_per_round": [r["metrics"].get("accuracy") for r in rounds],
            "payload_bytes_per_round": [r["bytes_up"] + r["bytes_down"] for r in rounds],
            "payload_bytes": sum(r["bytes_up"] + r["bytes_down"] for r in rounds),
            "dropped": sum(len(r["dropped"]) for r in rounds)}


def run_demo(settings: Settings, console: Console) -> dict[str, Any]:
    t_start = time.monotonic()
    out: dict[str, Any] = {"settings": {
        "quick": settings.quick, "rounds": settings.rounds, "local_steps": settings.local_steps,
        "alpha": settings.alpha, "ratio": settings.ratio, "clients": 3,
        "test_limit": settings.test_limit}, "runs": []}
    with infrastructure(settings, console) as state, tempfile.TemporaryDirectory() as tmp:
        with console.status("deploying examples/federated"):
            client = deploy(state, settings, Path(tmp))
        op = Operator(state)
        try:
            with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn(
                    "round {task.completed}/{task.total}"), TimeElapsedColumn(),
                    console=console) as bar:
                for compression in settings.compressions:
                    out["runs"].append(run_job(op, settings, compression, bar, console))
        finally:
            op.close()
            client.request("DELETE", f"/apps/{APP}", "delete")
            client.close()
    out["elapsed_s"] = time.monotonic() - t_start
    print_table(out, console)
    if settings.json_path:
        settings.json_path.write_text(json.dumps(out, indent=2))
    if settings.plots_dir:
        plot(out, settings.plots_dir)
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots_dir.mkdir(parents=True, exist_ok=True)
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
    fig.tight_layout()
    path = plots_dir / "federated_accuracy.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.bar([r["compression"] for r in out["runs"]], [r["wan_bytes"] / 1e6 for r in out["runs"]])
    ax.set_ylabel("WAN bytes per job (MB)")
    ax.set_title("measured at the WAN link accounting point")
    fig.tight_layout()
    bars = plots_dir / "federated_wan_bytes.png"
    fig.savefig(bars, dpi=110)
    plt.close(fig)
    return [path, bars]
