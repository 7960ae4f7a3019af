"""At-least-once delivery into a component across its own crash, on the embedded
infrastructure (the measurement of issue 11).

    python bench/bench_delivery.py [--count 800] [--rate 40] [--kill-after 99]

A sender at edge site ec-1 sends `count` numbered messages at `rate`/s to a receiver in
the cloud (through the edge broker, the bridge's outbox, the emulated WAN and the cloud
broker). Once the receiver has handled `kill-after` of them its process is killed with
SIGKILL; its agent restarts it. Printed: sent, handled at least once, lost for good,
handled twice. Before issue 11 (inbox acknowledged on receipt, held in memory), this run
lost 101 of 800.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgecloud.demos.infra import deployed, embedded_infrastructure  # noqa: E402

APP = "delivery-bench"
console = Console(width=max(100, Console().width))


def topology(out: Path, count: int, rate: float) -> dict[str, object]:
    return {"apiVersion": "edgecloud/v1", "kind": "Application", "metadata": {"name": APP},
            "spec": {"components": [
                {"name": "sender", "entry": "delivery_app:Sender", "site": "ec-1",
                 "connections": ["receiver"], "params": {"count": count, "rate": rate}},
                {"name": "receiver", "entry": "delivery_app:Receiver", "site": "cloud",
                 "params": {"out": str(out)}}]}}


def handled(out: Path) -> list[int]:
    try:
        return [int(x) for x in out.read_text().split()]
    except FileNotFoundError:
        return []


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=800)
    ap.add_argument("--rate", type=float, default=40.0)
    ap.add_argument("--kill-after", type=int, default=99)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-delivery-"))
    try:
        app_dir = work / "app"
        shutil.copytree(ROOT / "bench/apps/delivery", app_dir)
        out = work / "handled.txt"
        topo = app_dir / "delivery.yaml"
        topo.write_text(yaml.safe_dump(topology(out, args.count, args.rate), sort_keys=False))
        with embedded_infrastructure(ROOT / "examples/infra/local.yaml", work / "home",
                                     "the local infrastructure", console) as tb:
            with deployed(tb.client, topo, timeout_s=120):
                t0 = time.monotonic()
                while len(handled(out)) < args.kill_after:
                    if time.monotonic() - t0 > 120:
                        raise SystemExit("the receiver handled nothing for 120 s")
                    time.sleep(0.02)
                pid = next(i.pid for i in tb.client.app(APP).instances if i.name == "receiver-0")
                if pid is None:
                    raise SystemExit("receiver process not found")
                os.kill(pid, signal.SIGKILL)
                killed_at = len(handled(out))
                deadline = time.monotonic() + args.count / args.rate + 120
                while len(set(handled(out))) < args.count and time.monotonic() < deadline:
                    time.sleep(0.2)
                time.sleep(2.0)  # late duplicates, if any, would show up now
                got = handled(out)
                restarts = next(i.restarts for i in tb.client.app(APP).instances
                                if i.name == "receiver-0")
        counts = Counter(got)
        lost = args.count - len(counts)
        twice = sum(1 for c in counts.values() if c > 1)
        table = Table(title="at-least-once into a component killed with SIGKILL mid-stream "
                            f"({args.count} messages ec-1 -> cloud at {args.rate:g}/s)")
        for col in ("sent", "handled before the kill", "handled at least once",
                    "lost for good", "handled twice", "receiver restarts", "before issue 11"):
            table.add_column(col)
        table.add_row(str(args.count), str(killed_at), str(len(counts)), str(lost), str(twice),
                      str(restarts), "101 of 800 lost")
        console.print(table)
        result = {"sent": args.count, "handled_before_kill": killed_at,
                  "handled": len(counts), "lost": lost, "handled_twice": twice,
                  "restarts": restarts}
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        return 0 if lost == 0 else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
