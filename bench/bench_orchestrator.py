"""Orchestrator at scale: ~10,000 instances on ~1,000 nodes, goal <= 5 s.

    python bench/bench_orchestrator.py [--seed N] [--sites 10] [--nodes-per-site 100]

Builds 10 edge sites x 100 nodes (Raspberry Pis with cameras in two memory sizes, PCs,
GPU boxes, gateways) plus a cloud site, and 20 applications of 10 components each (perNode
sensors on camera nodes, replicated relays, detectors on GPU nodes, cloud aggregators,
chained by connections). Prints the size of the problem, the solve time of
`orchestrator.place` and the lexicographic objective (WAN, moves, peak per-mille).
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

from edgecloud.application.topology import Application
from edgecloud.platform.orchestrator import NodeInfo, place, plan_cost
from edgecloud.resource.infra import Resources

GIB = 1 << 30


def make_nodes(sites: int = 10, per_site: int = 100, cloud_nodes: int = 10) -> list[NodeInfo]:
    """Edge sites of mixed node kinds plus a cloud site."""
    kinds = [  # (share, prefix, cpu, memory GiB, gpu, labels)
        (0.35, "rpi4", 4, 4, 0, {"camera": "true"}),
        (0.25, "rpi8", 4, 8, 0, {"camera": "true"}),
        (0.20, "pc", 8, 16, 0, {}),
        (0.10, "jet", 6, 8, 1, {"accelerator": "gpu", "camera": "true"}),
        (0.10, "gw", 2, 2, 0, {"role": "gateway"}),
    ]
    nodes: list[NodeInfo] = []
    for s in range(1, sites + 1):
        site = f"ec-{s}"
        left = per_site
        for k, (share, prefix, cpu, mem, gpu, labels) in enumerate(kinds):
            n = left if k == len(kinds) - 1 else round(share * per_site)
            left -= n
            nodes += [NodeInfo(name=f"{site}-{prefix}-{i}", site=site, site_kind="edge",
                               labels=labels, resources=Resources(cpu=cpu, memory=mem * GIB,
                                                                  gpu=gpu))
                      for i in range(n)]
    nodes += [NodeInfo(name=f"cc-{i}", site="cloud", site_kind="cloud", labels={"tier": "big"},
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
    """One placement; returns sizes, time and objective."""
    nodes = make_nodes(sites, per_site)
    apps = make_apps(n_apps, sites, seed)
    t0 = time.perf_counter()
    plans = place(apps, nodes, time_limit_s=time_limit_s)
    elapsed = time.perf_counter() - t0
    n_inst = sum(len(p.instances) for p in plans.values())
    return {"nodes": len(nodes), "components": sum(len(a.spec.components) for a in apps),
            "instances": n_inst, "seconds": elapsed,
            "objective": plan_cost(list(plans.values()), nodes)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--sites", type=int, default=10)
    ap.add_argument("--nodes-per-site", type=int, default=100)
    ap.add_argument("--apps", type=int, default=20)
    args = ap.parse_args()
    r = run(args.sites, args.nodes_per_site, args.apps, args.seed)
    wan, moves, peak = r["objective"]
    print(f"nodes={r['nodes']} components={r['components']} instances={r['instances']}")
    print(f"solve_s={r['seconds']:.2f} (goal <= 5.00) objective: wan={wan} moves={moves} "
          f"peak_permille={peak}")


if __name__ == "__main__":
    main()
