"""`place`: all applications' instances onto the Ready nodes, in one CP-SAT model."""

from __future__ import annotations

import time

from ortools.sat.python import cp_model

from edgecloud.application.plan import DeploymentPlan
from edgecloud.application.topology import Application, ComponentSpec, matches
from edgecloud.platform.orchestrator.classes import _groups, _split, _spread
from edgecloud.platform.orchestrator.explain import _explain
from edgecloud.platform.orchestrator.model import (
    PlacedInstance,
    PlacementError,
    PlacementNode,
    _Comp,
    _req,
    _sites,
)
from edgecloud.platform.orchestrator.naming import _current_nodes, _name_instances
from edgecloud.platform.orchestrator.solve import _solve

EXACT_MAX_VARS = 3000
"""Above this many (component, node) variables, identical nodes are merged into classes."""
PEAK_TIME_S = 2.0
"""With classes, the balance stage stops after this long (the WAN/moves stage is exact)."""


def place(apps: list[Application], nodes: list[PlacementNode], *,
          placed: list[PlacedInstance] | tuple[()] = (),
          current: dict[str, str] | None = None,
          time_limit_s: float = 10.0) -> dict[str, DeploymentPlan]:
    """One deployment plan per application, all placed together on `nodes`.

    `placed`: instances of other applications that keep running (they use capacity);
    `current`: instance name (or `<app>/<instance>`) -> node it runs on now, so that a
    re-plan moves as few instances as possible. Only Ready nodes are used. perNode
    components get one instance per eligible Ready node (none if there is none).
    Raises PlacementError naming the first component that cannot be placed and why.
    """
    deadline = time.monotonic() + time_limit_s
    current = current or {}
    ready = [n for n in nodes if n.ready]
    by_name = {n.name: n for n in ready}
    free = {n.name: list(_req(n.resources)) for n in ready}
    for p in placed:
        if p.node in free:
            for k, v in enumerate(_req(p.resources)):
                free[p.node][k] -= v
    comps = [_component(app, c, ready) for app in apps for c in app.spec.components]
    merge = sum(len(c.eligible) for c in comps if not c.fixed) > EXACT_MAX_VARS
    groups = _groups(ready, free, merge=merge)
    cur = {c.key: _current_nodes(c, current) for c in comps}
    while True:
        budget = max(deadline - time.monotonic(), 0.5)
        status, solution = _solve(comps, groups, cur, budget,
                                  peak_time_s=PEAK_TIME_S if merge else None)
        if solution is None and status == cp_model.UNKNOWN:
            raise PlacementError(f"no plan found within {time_limit_s:g} s for "
                                 f"{sum(c.count for c in comps)} instances; raise the time "
                                 "limit or simplify the constraints")
        if solution is None:
            raise _explain(comps, nodes, free, groups)
        per_node, failed = _spread(comps, solution, groups, cur)
        if not failed:
            break
        groups = _split(groups, failed)
    return {app.metadata.name: DeploymentPlan(
        app=app.metadata.name, application=app,
        instances=[i for c in comps if c.app == app.metadata.name
                   for i in _name_instances(c, per_node[c.key], by_name, current)])
        for app in apps}


def _component(app: Application, spec: ComponentSpec, ready: list[PlacementNode]) -> _Comp:
    infra_sites = {n.site: n.site_kind for n in ready}
    sites = _sites(spec.site, infra_sites)
    selector = {**spec.labels, **(spec.per_node.labels if spec.per_node else {})}
    eligible = [n.name for n in ready if n.site in sites and matches(n.labels, selector)]
    fixed = spec.per_node is not None
    count = len(eligible) if fixed else spec.count
    return _Comp(app.metadata.name, spec, eligible, fixed, count, _req(spec.resources))
