"""The orchestrator: places every instance of every application on the infrastructure.

OR-Tools CP-SAT over integer counts (how many instances of component c on node n), so
the model grows with components x eligible nodes, not with instances. Identical nodes
(same site, labels and free capacity) are merged into classes when the exact model would
be large, and the class counts are spread over the class's nodes afterwards.

Hard constraints: site (edge | cloud | a site | any), node labels, perNode (one instance
on every eligible Ready node), replicas, capacity (cpu, memory, gpu) summed over all
applications. NotReady nodes are not eligible.

Objective, lexicographic (each term dominates the next):
  1. WAN traffic: for every connection A -> B and every instance a of A, cost 1 when no
     instance of B runs at a's site (the SDK sends to same-site peers first);
  2. moves: instances not kept on the node they run on now (`current`);
  3. balance: the highest CPU utilisation of any node, in per-mille of its capacity.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from ortools.sat.python import cp_model
from pydantic import BaseModel

from edgecloud.application.plan import DeploymentPlan, Instance
from edgecloud.application.topology import Application, ComponentSpec, matches
from edgecloud.errors import UserError
from edgecloud.resource.infra import Resources


class NodeInfo(BaseModel):
    name: str
    site: str
    site_kind: str
    labels: dict[str, str] = {}
    resources: Resources
    ready: bool = True


class PlacedInstance(BaseModel):
    """An instance of another application: it consumes capacity on its node."""

    node: str
    resources: Resources


class PlacementError(UserError):
    """No plan exists; the message says which component and which constraint."""


@dataclass
class _Comp:
    app: str
    spec: ComponentSpec
    eligible: list[str]  # node names
    fixed: bool  # perNode: one instance per eligible node
    count: int
    req: tuple[int, int, int]  # millicores, MiB, gpus
    vars: dict[str, cp_model.IntVar | int] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.app}/{self.spec.name}"


def _req(r: Resources | object) -> tuple[int, int, int]:
    return (int(round(r.cpu * 1000)), int(math.ceil(r.memory / (1 << 20))),  # type: ignore[attr-defined]
            int(r.gpu))  # type: ignore[attr-defined]


def place(apps: list[Application], nodes: list[NodeInfo], *,
          placed: list[PlacedInstance] | tuple[()] = (),
          current: dict[str, str] | None = None,
          time_limit_s: float = 10.0) -> dict[str, DeploymentPlan]:
    """Plans for `apps`; raises PlacementError when some component cannot be placed."""
    current = current or {}
    ready = [n for n in nodes if n.ready]
    by_name = {n.name: n for n in ready}
    free = {n.name: list(_req(n.resources)) for n in ready}
    for p in placed:
        if p.node in free:
            for k, v in enumerate(_req(p.resources)):
                free[p.node][k] -= v
    comps = [_component(app, c, ready, free) for app in apps for c in app.spec.components]
    status, solution = _solve(comps, by_name, free, current, time_limit_s)
    if solution is None:
        raise _explain(comps, by_name, free, status)
    return {app.metadata.name: DeploymentPlan(
        app=app.metadata.name, application=app,
        instances=[i for c in comps if c.app == app.metadata.name
                   for i in _name_instances(c, solution[c.key], by_name, current)])
        for app in apps}


def _component(app: Application, spec: ComponentSpec, ready: list[NodeInfo],
               free: dict[str, list[int]]) -> _Comp:
    infra_sites = {n.site: n.site_kind for n in ready}
    sites = _sites(spec.site, infra_sites)
    selector = {**spec.labels, **(spec.per_node.labels if spec.per_node else {})}
    eligible = [n.name for n in ready if n.site in sites and matches(n.labels, selector)]
    fixed = spec.per_node is not None
    count = len(eligible) if fixed else spec.count
    return _Comp(app.metadata.name, spec, eligible, fixed, count, _req(spec.resources))


def _sites(selector: str, kinds: dict[str, str]) -> set[str]:
    if selector == "any":
        return set(kinds)
    if selector in ("edge", "cloud"):
        return {s for s, k in kinds.items() if k == selector}
    return {selector} & set(kinds)


def _solve(comps: list[_Comp], nodes: dict[str, NodeInfo], free: dict[str, list[int]],
           current: dict[str, str], time_limit_s: float
           ) -> tuple[int, dict[str, dict[str, int]] | None]:
    m = cp_model.CpModel()
    for c in comps:
        if c.fixed:
            c.vars = {n: 1 for n in c.eligible}
        else:
            c.vars = {n: m.new_int_var(0, c.count, f"x[{c.key},{n}]") for n in c.eligible}
            m.add(sum(c.vars.values()) == c.count)
            if c.count and not c.eligible:
                return cp_model.INFEASIBLE, None
    # capacity
    load: dict[str, list[list[tuple[int, cp_model.IntVar | int]]]] = {
        n: [[], [], []] for n in nodes}
    for c in comps:
        for n, x in c.vars.items():
            for k in range(3):
                if c.req[k]:
                    load[n][k].append((c.req[k], x))
    for n, dims in load.items():
        for k in range(3):
            if dims[k]:
                m.add(sum(w * x for w, x in dims[k]) <= max(free[n][k], 0))
    # 1. WAN traffic between connected components
    by_key = {(c.app, c.spec.name): c for c in comps}
    wan_terms = []
    site_count: dict[tuple[str, str], cp_model.LinearExpr | int] = {}

    def at_site(c: _Comp, site: str) -> cp_model.LinearExpr | int:
        key = (c.key, site)
        if key not in site_count:
            site_count[key] = sum(x for n, x in c.vars.items() if nodes[n].site == site)
        return site_count[key]

    present: dict[tuple[str, str], cp_model.IntVar] = {}
    for a in comps:
        for target in a.spec.connections:
            b = by_key.get((a.app, target))
            if b is None or not a.count:
                continue
            for site in {nodes[n].site for n in a.eligible}:
                if (b.key, site) not in present:
                    z = m.new_bool_var(f"z[{b.key},{site}]")
                    m.add(at_site(b, site) >= 1).only_enforce_if(z)
                    m.add(at_site(b, site) == 0).only_enforce_if(~z)
                    present[(b.key, site)] = z
                w = m.new_int_var(0, a.count, f"w[{a.key},{b.key},{site}]")
                m.add(w >= at_site(a, site) - a.count * present[(b.key, site)])
                wan_terms.append(w)
    # 2. moves (instances kept where they are now)
    kept_terms = []
    total_current = 0
    for c in comps:
        here: dict[str, int] = defaultdict(int)
        for i in range(c.count):
            node = current.get(f"{c.spec.name}-{i}")
            if node in c.vars:
                here[node] += 1
        for n, k in here.items():
            total_current += k
            x = c.vars[n]
            if isinstance(x, int):
                kept_terms.append(min(x, k))
            else:
                s = m.new_int_var(0, k, f"stay[{c.key},{n}]")
                m.add(s <= x)
                kept_terms.append(s)
    # 3. balance: max CPU utilisation in per-mille
    peak = m.new_int_var(0, 1000, "peak")
    for n, dims in load.items():
        cap = _req(nodes[n].resources)[0]
        base = cap - free[n][0]  # other applications' load
        if cap > 0 and (dims[0] or base):
            m.add(1000 * (base + sum(w * x for w, x in dims[0])) <= peak * cap)
    n_inst = sum(c.count for c in comps)
    moves = total_current - sum(kept_terms)
    m.minimize(sum(wan_terms) * 1001 * (n_inst + 1) + moves * 1001 + peak)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = time_limit_s
    solver.parameters.num_workers = 2
    status = solver.solve(m)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return status, None
    return status, {c.key: {n: int(solver.value(x)) if not isinstance(x, int) else x
                            for n, x in c.vars.items()} for c in comps}


def _name_instances(c: _Comp, counts: dict[str, int], nodes: dict[str, NodeInfo],
                    current: dict[str, str]) -> list[Instance]:
    """Give instance names, keeping each current name on its node where it stays."""
    slots = {n: k for n, k in counts.items() if k}
    names = [f"{c.spec.name}-{i}" for i in range(c.count)]
    if c.fixed:  # perNode: a name follows its node; new nodes take free indices
        taken = {current[n]: n for n in names if current.get(n) in slots} if current else {}
        by_node = {node: name for name, node in taken.items()}
        free_names = (f"{c.spec.name}-{i}" for i in range(10 * c.count + 10)
                      if f"{c.spec.name}-{i}" not in taken)
        out = []
        for node in sorted(slots):
            out.append(Instance(name=by_node.get(node) or next(free_names),
                                component=c.spec.name, site=nodes[node].site, node=node))
        return sorted(out, key=lambda i: int(i.name.rsplit("-", 1)[1]))
    out, unplaced = [], []
    for name in names:
        node = current.get(name)
        if node in slots and slots[node] > 0:
            slots[node] -= 1
            out.append(Instance(name=name, component=c.spec.name, site=nodes[node].site,
                                node=node))
        else:
            unplaced.append(name)
    free_slots = [n for n in sorted(slots) for _ in range(slots[n])]
    for name, node in zip(unplaced, free_slots, strict=True):
        out.append(Instance(name=name, component=c.spec.name, site=nodes[node].site,
                            node=node))
    return sorted(out, key=lambda i: int(i.name.rsplit("-", 1)[1]))


def _explain(comps: list[_Comp], nodes: dict[str, NodeInfo], free: dict[str, list[int]],
             status: int) -> PlacementError:
    """Say which component cannot be placed and which constraint blocks it."""
    dims = ("cpu", "memory", "gpu")
    for c in comps:
        what = f"component {c.spec.name!r} of {c.app!r}"
        sites = sorted({n.site for n in nodes.values()} & _sites(
            c.spec.site, {n.site: n.site_kind for n in nodes.values()}))
        if c.count and not sites:
            return PlacementError(f"{what} cannot be placed: no Ready node at site "
                                  f"{c.spec.site!r}")
        if c.count and not c.eligible:
            selector = {**c.spec.labels, **(c.spec.per_node.labels if c.spec.per_node else {})}
            return PlacementError(f"{what} cannot be placed: no Ready node at {', '.join(sites)} "
                                  f"has labels {selector}")
        for k, dim in enumerate(dims):
            if c.count and c.req[k] and not any(free[n][k] >= c.req[k] for n in c.eligible):
                best = max(c.eligible, key=lambda n, k=k: free[n][k])
                return PlacementError(
                    f"{what} needs {dim} {_fmt(dim, c.req[k])} per instance at "
                    f"{', '.join(sites)}: no eligible Ready node has that much free "
                    f"({best} has {_fmt(dim, max(free[best][k], 0))})")
    for i in range(1, len(comps) + 1):  # the first component that makes it infeasible
        status_i, sol = _solve(comps[:i], nodes, free, {}, 5.0)
        if sol is None:
            c = comps[i - 1]
            need = [sum(x.count * x.req[k] for x in comps[:i] if set(x.eligible)
                        & set(c.eligible)) for k in range(3)]
            have = [sum(max(free[n][k], 0) for n in c.eligible) for k in range(3)]
            short = [f"{d} {_fmt(d, need[k])} needed, {_fmt(d, have[k])} free"
                     for k, d in enumerate(dims) if need[k] > have[k]]
            detail = "; ".join(short) or "capacity is too fragmented across nodes"
            return PlacementError(f"component {c.spec.name!r} of {c.app!r} cannot be placed "
                                  f"with the components before it: {detail} on its "
                                  f"eligible nodes ({', '.join(sorted(c.eligible))})")
    return PlacementError(f"no placement found (solver status {status})")


def _fmt(dim: str, value: int) -> str:
    if dim == "cpu":
        return f"{value / 1000:g}"
    if dim == "memory":
        return f"{value}Mi"
    return str(value)
