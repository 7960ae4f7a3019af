"""`plan_cost`: the three objective terms of finished plans (e.g. for a brute-force check)."""

from __future__ import annotations

from collections import defaultdict

from edgecloud.application.plan import DeploymentPlan
from edgecloud.platform.orchestrator.model import PlacedInstance, PlacementNode, _req


def plan_cost(plans: list[DeploymentPlan], nodes: list[PlacementNode], *,
              placed: list[PlacedInstance] | tuple[()] = (),
              current: dict[str, str] | None = None) -> tuple[int, int, int]:
    """The objective of finished plans: (WAN, moves, peak CPU per-mille), as defined above.

    Moves count planned instances whose name runs on another node in `current`; the peak
    is ceil(1000 * CPU used / CPU capacity), the maximum over Ready nodes, counting
    `placed` instances too.
    """
    current = current or {}
    by_name = {n.name: n for n in nodes if n.ready}
    wan = moves = 0
    cpu: dict[str, int] = defaultdict(int)
    for p in placed:
        cpu[p.node] += _req(p.resources)[0]
    for plan in plans:
        comps = {c.name: c for c in plan.application.spec.components}
        sites: dict[str, set[str]] = defaultdict(set)
        for i in plan.instances:
            sites[i.component].add(i.site)
            cpu[i.node] += _req(comps[i.component].resources)[0]
            was = current.get(f"{plan.app}/{i.name}", current.get(i.name, i.node))
            moves += was != i.node
        for i in plan.instances:
            wan += sum(1 for t in comps[i.component].connections if i.site not in sites[t])
    peak = max((-(-1000 * load // cap) for n, load in cpu.items() if n in by_name
                and (cap := _req(by_name[n].resources)[0]) > 0), default=0)
    return wan, moves, peak
