"""Bench of federated learning on non-IID Fashion-MNIST: accuracy and bytes of FedAvg with
fp32, int8 and top-k (error feedback) updates, side by side in one run.

Uses the in-process simulation (:mod:`edgecloud.ml.training.simulation`): the same
client and server code as the platform application and the same encoded payloads, so
bytes are real payload sizes (broadcasts fetched + updates sent), without the platform's
process and WAN overheads (``edgecloud demo federated`` measures those on the link).
Every configuration uses the same Dirichlet split, initial model and seeds.

Targets (issue 5): FedAvg non-IID >= 88 % test accuracy (full run); int8 <= 26 % of
fp32's bytes with <= 0.5 point accuracy loss; top-k 1 % + error feedback <= 5 % of the
bytes with <= 1.5 points loss.

    python bench/bench_federated.py [--rounds 150] [--local-steps 50] [--alpha 0.5]
        [--clients 3] [--json out.json] [--plots DIR] [--threads 1]
    python bench/bench_federated.py --quick          # ~2 minutes, targets not meaningful
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgecloud.ml.training.simulation import SimConfig, run_simulation

TARGETS = {"fedavg_accuracy": 0.88, "int8_bytes": 0.26, "int8_loss_pt": 0.5,
           "topk_bytes": 0.05, "topk_loss_pt": 1.5}


def run_all(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    configs = [("fp32", {}), ("int8", {}),
               ("topk", {"ratio": args.ratio, "down_ratio": args.down_ratio})]
    out: dict[str, Any] = {"settings": vars(args) | {"plots": str(args.plots),
                                                     "json": str(args.json)}, "runs": []}
    with Progress(TextColumn("{task.description}"), BarColumn(),
                  TextColumn("round {task.completed}/{task.total}"),
                  TextColumn("{task.fields[acc]}"), TimeElapsedColumn(), console=console) as bar:
        for name, extra in configs:
            task = bar.add_task(f"FedAvg {name:>4}", total=args.rounds, acc="")
            cfg = SimConfig(clients=args.clients, alpha=args.alpha, rounds=args.rounds,
                            compression=name, local_steps=args.local_steps, lr=args.lr,
                            test_limit=None, seed=args.seed, eval_every=args.eval_every,
                            **extra)

            def progress(rec: Any, task: Any = task, name: str = name) -> None:
                acc = rec.metrics.get("accuracy")
                bar.update(task, advance=1, acc=f"acc {acc:.4f}" if acc else "")
                if acc is not None and not console.is_terminal:  # a log when redirected
                    console.print(f"{name} round {rec.round}: accuracy {acc:.4f}")
            t0 = time.monotonic()
            res = run_simulation(cfg, progress=progress)
            out["runs"].append({
                "compression": name, "rounds": len(res.history),
                "final_accuracy": res.final_accuracy,
                "best_accuracy": max(a for a in res.accuracy_per_round if a == a),
                "bytes": res.total_bytes,
                "bytes_up": sum(r.bytes_up for r in res.history),
                "bytes_down": sum(r.bytes_down for r in res.history),
                "accuracy_per_round": [a if a == a else None  # not evaluated: null
                                       for a in res.accuracy_per_round],
                "elapsed_s": time.monotonic() - t0, **extra})
    return out


def report(out: dict[str, Any], console: Console) -> dict[str, bool]:
    runs = {r["compression"]: r for r in out["runs"]}
    base = runs["fp32"]
    table = Table("compression", "final acc", "best acc", "MB (up+down)", "% of fp32 bytes",
                  "loss vs fp32 (pt)", "s", title="FedAvg, non-IID Fashion-MNIST, "
                  f"{out['settings']['clients']} clients, alpha={out['settings']['alpha']}, "
                  f"{out['settings']['rounds']} rounds x {out['settings']['local_steps']} "
                  "local steps")
    for r in out["runs"]:
        r["bytes_share"] = r["bytes"] / base["bytes"]
        r["loss_pt"] = 100 * (base["final_accuracy"] - r["final_accuracy"])
        table.add_row(r["compression"], f"{r['final_accuracy']:.4f}",
                      f"{r['best_accuracy']:.4f}", f"{r['bytes'] / 1e6:.2f}",
                      f"{100 * r['bytes_share']:.2f}%", f"{r['loss_pt']:+.2f}",
                      f"{r['elapsed_s']:.0f}")
    console.print(table)
    met = {
        "fedavg non-IID >= 88%": base["final_accuracy"] >= TARGETS["fedavg_accuracy"],
        "int8 <= 26% bytes": runs["int8"]["bytes_share"] <= TARGETS["int8_bytes"],
        "int8 <= 0.5 pt loss": runs["int8"]["loss_pt"] <= TARGETS["int8_loss_pt"],
        "top-k 1% + EF <= 5% bytes": runs["topk"]["bytes_share"] <= TARGETS["topk_bytes"],
        "top-k 1% + EF <= 1.5 pt loss": runs["topk"]["loss_pt"] <= TARGETS["topk_loss_pt"],
    }
    for what, ok in met.items():
        console.print(f"  {'MET ' if ok else 'MISSED'}  {what}")
    console.print("Accuracy on the full 10,000-image test set after the last round; bytes "
                  "are encoded payloads (broadcasts fetched + updates sent), in-process "
                  "simulation. Timings on a 2-core machine shared with other jobs.")
    return met


def plot(out: dict[str, Any], plots: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in out["runs"]:
        pts = [(i + 1, a) for i, a in enumerate(r["accuracy_per_round"]) if a is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".",
                label=f"{r['compression']} ({100 * r['bytes_share']:.1f}% bytes)")
    ax.axhline(TARGETS["fedavg_accuracy"], color="grey", ls="--", lw=0.8)
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = plots / "bench_federated.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=150)
    parser.add_argument("--local-steps", type=int, default=50)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--ratio", type=float, default=0.01, help="top-k share sent up")
    parser.add_argument("--down-ratio", type=float, default=0.03,
                        help="top-k share of the broadcast delta (the mean of the clients' "
                             "sparse updates has up to clients x ratio non-zeros)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval-every", type=int, default=5,
                        help="evaluate on the 10,000 test images every N rounds (and last)")
    parser.add_argument("--quick", action="store_true", help="10 rounds x 20 steps")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plots", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.local_steps = 10, 20
    torch.set_num_threads(args.threads)
    console = Console()
    out = run_all(args, console)
    out["targets_met"] = report(out, console)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    if args.plots:
        console.print(f"plot: {plot(out, args.plots)}")


if __name__ == "__main__":
    main()
