"""Orchestrator at scale: ~10,000 instances on ~1,000 nodes, goal <= 5 s.

    python bench/bench_orchestrator.py [--seed N] [--sites 10] [--nodes-per-site 100]
                                       [--small 200]

Builds 10 edge sites x 100 nodes (Raspberry Pis with cameras in two memory sizes, PCs,
GPU boxes, gateways) plus a cloud site, and 20 applications of 10 components each (perNode
sensors on camera nodes, replicated relays, detectors on GPU nodes, cloud aggregators,
chained by connections). Prints the size of the problem, the solve time of
`orchestrator.place` and the lexicographic objective (WAN, moves, peak per-mille); then
re-plans with 5% of the nodes NotReady (stickiness: only their instances should move); then
checks `--small` random small instances against a brute-force enumeration of every plan
(the objective must equal the optimum; infeasible exactly when no plan exists).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from edgecloud.application.topology import Application
from edgecloud.platform.orchestrator import PlacementError, PlacementNode, place, plan_cost
from edgecloud.resource.infra import Resources

GIB = 1 << 30


def make_nodes(sites: int = 10, per_site: int = 100, cloud_nodes: int = 10) -> list[PlacementNode]:
    """Edge sites of mixed node kinds plus a cloud site."""
    kinds = [  # (share, prefix, cpu, memory GiB, gpu, labels)
        (0.35, "rpi4", 4, 4, 0, {"camera": "true"}),
        (0.25, "rpi8", 4, 8, 0, {"camera": "true"}),
        (0.20, "pc", 8, 16, 0, {}),
        (0.10, "jet", 6, 8, 1, {"accelerator": "gpu", "camera": "true"}),
        (0.10, "gw", 2, 2, 0, {"role": "gateway"}),
    ]
    nodes: list[PlacementNode] = []
    for s in range(1, sites + 1):
        site = f"ec-{s}"
        left = per_site
        for k, (share, prefix, cpu, mem, gpu, labels) in enumerate(kinds):
            n = left if k == len(kinds) - 1 else round(share * per_site)
            left -= n
            nodes += [PlacementNode(name=f"{site}-{prefix}-{i}", site=site, site_kind="edge",
                               labels=labels, resources=Resources(cpu=cpu, memory=mem * GIB,
                                                                  gpu=gpu))
                      for i in range(n)]
    nodes += [PlacementNode(name=f"cc-{i}", site="cloud", site_kind="cloud", labels={"tier": "big"},
                       resources=Resources(cpu=64, memory=256 * GIB, gpu=4))
              for i in range(cloud_nodes)]
    return nodes


def _component(name: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "entry": f"app:{name.title().replace('-', '')}", **kw}


def make_apps(n_apps: int = 20, sites: int = 10, seed: int = 1) -> list[Application]:
    """`n_apps` applications of 10 components each (perNode + replicas + connections)."""
    rnd = random.Random(seed)
    apps = []
    for a in range(n_apps):
        home = f"ec-{a % sites + 1}"
        comps = [
            _component("sensor", site="edge" if a % 4 == 0 else home,
                       perNode={"labels": {"camera": "true"}},
                       resources={"cpu": 0.1, "memory": "64Mi"}, connections=["filter"]),
            _component("gw-agent", site="edge", perNode={"labels": {"role": "gateway"}},
                       resources={"cpu": 0.05, "memory": "32Mi"}, connections=["relay"])
            if a % 5 == 0 else
            _component("gw-agent", site=home, labels={"role": "gateway"}, replicas=2,
                       resources={"cpu": 0.05, "memory": "32Mi"}, connections=["relay"]),
            _component("filter", site="edge", replicas=rnd.randint(80, 160),
                       resources={"cpu": 0.2, "memory": "128Mi"}, connections=["relay"]),
            _component("relay", site="edge", replicas=rnd.randint(20, 60),
                       resources={"cpu": 0.25, "memory": "128Mi"}, connections=["detector"]),
            _component("detector", site="edge", labels={"accelerator": "gpu"},
                       replicas=rnd.randint(10, 20),
                       resources={"cpu": 0.5, "memory": "512Mi"}, connections=["aggregator"]),
            _component("aggregator", site="cloud", replicas=rnd.randint(2, 6),
                       resources={"cpu": 1, "memory": "1Gi"}, connections=["trainer"]),
            _component("trainer", site="cloud", replicas=1,
                       resources={"cpu": 2, "memory": "4Gi", "gpu": 1 if a % 4 == 0 else 0}),
            _component("cache", site="any", replicas=rnd.randint(10, 30),
                       resources={"cpu": 0.1, "memory": "256Mi"}),
            _component("monitor", site="edge", replicas=rnd.randint(10, 40),
                       resources={"cpu": 0.05, "memory": "64Mi"}, connections=["aggregator"]),
            _component("uploader", site=home, replicas=rnd.randint(5, 15),
                       resources={"cpu": 0.1, "memory": "128Mi"}, connections=["aggregator"]),
        ]
        apps.append(Application.model_validate({
            "apiVersion": "edgecloud/v1", "kind": "Application",
            "metadata": {"name": f"app-{a}"}, "spec": {"components": comps}}))
    return apps


def run(sites: int = 10, per_site: int = 100, n_apps: int = 20, seed: int = 1,
        time_limit_s: float = 10.0) -> dict[str, Any]:
    """One placement, then a re-plan with 5% of the nodes NotReady; sizes, times, costs."""
    nodes = make_nodes(sites, per_site)
    apps = make_apps(n_apps, sites, seed)
    t0 = time.perf_counter()
    plans = place(apps, nodes, time_limit_s=time_limit_s)
    elapsed = time.perf_counter() - t0
    n_inst = sum(len(p.instances) for p in plans.values())
    current = {f"{p.app}/{i.name}": i.node for p in plans.values() for i in p.instances}
    lost = set(random.Random(seed).sample([n.name for n in nodes], len(nodes) // 20))
    nodes2 = [n.model_copy(update={"ready": n.name not in lost}) for n in nodes]
    t0 = time.perf_counter()
    plans2 = place(apps, nodes2, current=current, time_limit_s=time_limit_s)
    elapsed2 = time.perf_counter() - t0
    moved = sum(1 for p in plans2.values() for i in p.instances
                if current.get(f"{p.app}/{i.name}") not in (None, i.node))
    # replicas on a lost node must move; perNode instances there just go away
    forced = sum(1 for p in plans.values() for i in p.instances if i.node in lost
                 and p.application.component(i.component).per_node is None)
    return {"nodes": len(nodes), "components": sum(len(a.spec.components) for a in apps),
            "instances": n_inst, "seconds": elapsed,
            "objective": plan_cost(list(plans.values()), nodes),
            "replan_seconds": elapsed2, "replan_instances":
                sum(len(p.instances) for p in plans2.values()),
            "lost_nodes": len(lost), "forced": forced, "moved": moved}


def agreement(n: int, seed: int = 0) -> dict[str, Any]:
    """Random small instances until `n` have a plan: place() vs the brute-force optimum
    (the infeasible ones met on the way are checked too)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.test_orchestrator import brute_force, random_case

    rnd = random.Random(seed)
    same = infeasible = worse = wrong_infeasible = 0
    slowest = 0.0
    while same + worse + wrong_infeasible < n:  # n cases that have a plan
        app, nodes, placed, current = random_case(rnd)
        best = brute_force(app, nodes, placed, current)
        t0 = time.perf_counter()
        try:
            plans = place([app], nodes, placed=placed, current=current)
        except PlacementError:
            infeasible += best is None
            wrong_infeasible += best is not None
            continue
        finally:
            slowest = max(slowest, time.perf_counter() - t0)
        got = plan_cost(list(plans.values()), nodes, placed=placed, current=current)
        same += got == best
        worse += got != best
    return {"cases": n + infeasible, "optimal": same, "infeasible_agreed": infeasible,
            "differ": worse, "false_infeasible": wrong_infeasible, "slowest_s": slowest}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--sites", type=int, default=10)
    ap.add_argument("--nodes-per-site", type=int, default=100)
    ap.add_argument("--apps", type=int, default=20)
    ap.add_argument("--small", type=int, default=200, help="random small instances checked "
                                                           "against brute force")
    args = ap.parse_args()
    r = run(args.sites, args.nodes_per_site, args.apps, args.seed)
    wan, moves, peak = r["objective"]
    console = Console(width=max(Console().width, 120))
    table = Table("run", "size", "seconds", "goal", "result",
                  title="orchestrator.place on this machine (2 cores)")
    size = f"{r['nodes']} nodes, {r['components']} components, {r['instances']:,} instances"
    table.add_row("first placement", size, f"{r['seconds']:.2f}", "<= 5.00",
                  f"wan={wan} moves={moves} peak cpu={peak / 10:.1f}%")
    table.add_row(f"re-plan, {r['lost_nodes']} nodes NotReady", size.replace(
        f"{r['instances']:,}", f"{r['replan_instances']:,}"), f"{r['replan_seconds']:.2f}",
        "<= 5.00", f"moved={r['moved']} (replicas on lost nodes: {r['forced']})")
    if args.small:
        a = agreement(args.small, args.seed)
        table.add_row(f"{a['cases']} small random cases vs brute force",
                      "2-4 nodes, 2-3 components, <= 12 instances",
                      f"{a['slowest_s']:.2f} max", "all optimal",
                      f"optimal={a['optimal']} infeasible (agreed)={a['infeasible_agreed']} "
                      f"differ={a['differ']} false infeasible={a['false_infeasible']}")
    console.print(table)

if __name__ == "__main__":
    main()
