"""Moving a model from the cloud to three edge sites over emulated 20 Mbit/s links.

    python bench/bench_files.py [--mbytes 50] [--mbit 20] [--delay-ms 50]

Brings up an embedded infrastructure (a cloud and three edge sites, one node each, WAN
down = the given rate), puts a model in the cloud's file store, fetches it at the three
edge sites at once, and prints achieved rate / link rate per site (goal >= 90%) and the
bytes the WAN accounting point saw. The three links are separate, so each transfer has
its own 20 Mbit/s.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgecloud.config import Home
from edgecloud.resource.files import FileClient
from edgecloud.resource.state import load_run_state
from edgecloud.resource.wan import LinkClient


def infra_yaml(mbit: float, delay_ms: float) -> str:
    sites = ["    - name: cloud\n      kind: cloud\n      nodes: [{name: cc}]"]
    for i in (1, 2, 3):
        sites.append(f"    - name: ec-{i}\n      kind: edge\n      wan: {{up: {mbit}mbit, "
                     f"down: {mbit}mbit, delay: {delay_ms}ms}}\n      nodes: [{{name: ec-{i}-n}}]")
    return ("apiVersion: edgecloud/v1\nkind: Infrastructure\nmetadata: {name: bench}\n"
            "spec:\n  sites:\n" + "\n".join(sites) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mbytes", type=float, default=50)
    ap.add_argument("--mbit", type=float, default=20)
    ap.add_argument("--delay-ms", type=float, default=50)
    args = ap.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        infra = Path(tmp) / "infra.yaml"
        infra.write_text(infra_yaml(args.mbit, args.delay_ms))
        home = Path(tmp) / "home"
        edgecloud = [sys.executable, "-m", "edgecloud.cli.main"]
        subprocess.run([*edgecloud, "up", str(infra), "--home", str(home), "--detach"],
                       check=True, capture_output=True)
        try:
            state = load_run_state(Home(home))
            size = int(args.mbytes * 1e6)
            cloud = FileClient(state.cloud.files.url("http"), "cloud")
            ref = cloud.put(os.urandom(size), key="models/model.bin")
            links = {s.name: LinkClient(s.wan_control.url("http"), s.name)
                     for s in state.sites if s.wan_control}
            before = {n: lk.status().bytes_down for n, lk in links.items()}
            times: dict[str, float] = {}

            def fetch(site: str) -> None:
                s = state.site(site)
                t0 = time.monotonic()
                FileClient(s.files.url("http"), site).get_to(ref, Path(tmp) / f"{site}.bin")
                times[site] = time.monotonic() - t0

            threads = [threading.Thread(target=fetch, args=(n,)) for n in links]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            table = Table("site", "seconds", "achieved Mbit/s", "link Mbit/s", "ratio",
                          "WAN bytes down",
                          title=f"{args.mbytes:g} MB cloud -> 3 edge sites, {args.mbit:g} "
                                f"Mbit/s, {args.delay_ms:g} ms one-way")
            ratios = []
            for site, secs in sorted(times.items()):
                rate = size * 8 / secs / 1e6
                ratios.append(rate / args.mbit)
                table.add_row(site, f"{secs:.2f}", f"{rate:.2f}", f"{args.mbit:g}",
                              f"{rate / args.mbit:.3f}",
                              f"{links[site].status().bytes_down - before[site]:,}")
            console.print(table)
            console.print(f"mean achieved/link ratio: {sum(ratios) / len(ratios):.3f} "
                          f"(goal >= 0.90); 2-core machine, all processes local")
        finally:
            subprocess.run([*edgecloud, "down", "--home", str(home)], capture_output=True)


if __name__ == "__main__":
    main()
