"""Bench of DNN partitioning: the chosen cut against every cut, measured side by side.

Brings up the embedded infrastructure (examples/partition/infra.yaml: an edge device at
declared speed 0.1, emulated by sleeping), deploys examples/partition (EfficientNet-Lite0)
and, at every WAN rate, measures the candidate cuts and the head's own choice in
interleaved rounds (the `edgecloud demo partition` sweep). Prints per rate: chosen/best
latency, speed-up of the chosen cut over all-edge, all-cloud and the worse of the two,
and the issue's targets:

- chosen cut within 10% of the best measured cut at every rate (1-100 Mbit/s);
- at the mid rate (the sweep's middle, 10 Mbit/s by default) >= 2x faster than the
  worse of all-edge and all-cloud.

    python bench/bench_partition.py [--quick] [--int8] [--from-json demo.json]

`--from-json` re-prints the figures of a saved `edgecloud demo partition --json` run.
Figures come from one machine shared by edge and cloud (and by other jobs): latencies
are medians of a few requests; run it twice to see the noise.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from edgecloud.demos.partition import Settings, run_demo, targets


def print_ratios(out: dict[str, Any], console: Console) -> None:
    table = Table("Mbit/s", "chosen", "best", "chosen/best", "vs all-edge", "vs all-cloud",
                  "vs worse", title="chosen cut vs fixed strategies (ratios of median "
                                    "latencies, > 1 = chosen faster)")
    for r in out["runs"]:
        c = r["chosen_latency_s"]
        table.add_row(f"{r['mbit']:g}", r["chosen_cut"], r["best_cut"],
                      f"{c / r['best_latency_s']:.2f}",
                      f"{r['all_edge_latency_s'] / c:.2f}x",
                      f"{r['all_cloud_latency_s'] / c:.2f}x",
                      f"{max(r['all_edge_latency_s'], r['all_cloud_latency_s']) / c:.2f}x")
    console.print(table)
    t = targets(out["runs"])
    console.print(f"TARGET chosen within 10% of best at every rate: worst chosen/best = "
                  f"{t['worst_chosen_over_best']:.2f} -> "
                  f"{'MET' if t['within_10pct'] else 'MISSED'}")
    console.print(f"TARGET >= 2x vs the worse of all-edge/all-cloud at the mid rate "
                  f"({t['mid_mbit']:g} Mbit/s): {t['mid_speedup_vs_worse']:.2f}x -> "
                  f"{'MET' if t['mid_2x'] else 'MISSED'}")
    console.print(out["settings"]["note"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="3 rates (1, 10, 100 Mbit/s), 2 rounds")
    parser.add_argument("--int8", action="store_true", help="int8 crossing tensors")
    parser.add_argument("--from-json", type=Path, help="a saved demo JSON to re-print")
    parser.add_argument("--json", type=Path, help="write the run's JSON here")
    args = parser.parse_args()
    console = Console()
    if args.from_json:
        out = json.loads(args.from_json.read_text())
    else:
        kw: dict[str, Any] = {"int8": args.int8, "early_exit": False, "json_path": args.json}
        out = run_demo(Settings.from_options(args.quick, **kw), console)
    print_ratios(out, console)


if __name__ == "__main__":
    main()
