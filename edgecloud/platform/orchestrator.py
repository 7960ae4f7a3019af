"""The orchestrator: places every instance of every application on the infrastructure.

OR-Tools CP-SAT over integer counts (how many instances of component c on node n), so
the model grows with components x eligible nodes, not with instances. Identical nodes
(same site, labels, capacity and free capacity) are merged into classes when the exact
model would be large, and the class counts are spread over the class's nodes afterwards
(instances that stay first, onto the nodes they run on; then largest instances first,
onto the least loaded node that holds them); a class whose spread fails is split back
into single nodes and the model re-solved, so hard constraints always hold.

Hard constraints: site (edge | cloud | a site | any), node labels, perNode (one instance
on every eligible Ready node), replicas, capacity (cpu, memory, gpu) summed over all
applications. NotReady nodes are not eligible.

Objective, lexicographic (each term dominates the next):
  1. WAN traffic: for every connection A -> B and every instance a of A, cost 1 when no
     instance of B runs at a's site (the SDK sends to same-site peers first);
  2. moves: instances not kept on the node they run on now (`current`);
  3. balance: the highest CPU utilisation of any node, in per-mille of its capacity.

Terms 1 and 2 are exact with classes too (term 1 depends on site counts only; term 2
counts, per class, min(current instances on its nodes, instances planned there), which
the spread realises); term 3 is modelled by a class's average utilisation and reached by
the spread up to rounding (exact when no class has several nodes: small problems).
`plan_cost` computes the three terms of finished plans, e.g. for a brute-force check.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from ortools.sat.python import cp_model
from pydantic import BaseModel

from edgecloud.application.plan import DeploymentPlan, Instance
from edgecloud.application.topology import Application, ComponentSpec, matches
from edgecloud.errors import UserError
from edgecloud.resource.infra import Resources

EXACT_MAX_VARS = 3000
"""Above this many (component, node) variables, identical nodes are merged into classes."""
PEAK_TIME_S = 2.0
"""With classes, the balance stage stops after this long (the WAN/moves stage is exact)."""

Vec = tuple[int, int, int]  # millicores, MiB, gpus


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
    req: Vec
    vars: dict[str, cp_model.IntVar | int] = field(default_factory=dict)  # group -> count
    ubs: dict[str, int] = field(default_factory=dict)  # group -> upper bound of its count

    @property
    def key(self) -> str:
        return f"{self.app}/{self.spec.name}"


@dataclass
class _Group:
    """A class of identical nodes (or one node): same site, labels, capacity, free."""

    nodes: list[str]
    site: str
    cap: Vec
    free: Vec  # per node, after other applications' instances

    @property
    def name(self) -> str:
        return self.nodes[0]

    @property
    def size(self) -> int:
        return len(self.nodes)


def _req(r: Resources | object) -> Vec:
    return (int(round(r.cpu * 1000)), int(math.ceil(r.memory / (1 << 20))),  # type: ignore[attr-defined]
            int(r.gpu))  # type: ignore[attr-defined]


def place(apps: list[Application], nodes: list[NodeInfo], *,
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


def _component(app: Application, spec: ComponentSpec, ready: list[NodeInfo]) -> _Comp:
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


# -- node classes -----------------------------------------------------------------------------
def _groups(ready: list[NodeInfo], free: dict[str, list[int]], merge: bool
            ) -> dict[str, _Group]:
    """One group per class of identical nodes (merge) or per node (exact model)."""
    classes: dict[tuple[object, ...], list[NodeInfo]] = defaultdict(list)
    for n in ready:
        key: tuple[object, ...] = (n.site, n.site_kind, tuple(sorted(n.labels.items())),
                                   _req(n.resources), tuple(free[n.name]))
        if not merge:
            key = (n.name,)
        classes[key].append(n)
    out = {}
    for members in classes.values():
        g = _Group([n.name for n in members], members[0].site, _req(members[0].resources),
                   _vec(free[members[0].name]))
        out[g.name] = g
    return out


def _split(groups: dict[str, _Group], names: Iterable[str]) -> dict[str, _Group]:
    """Replace the named groups by one group per node (the exact model for them)."""
    out = dict(groups)
    for name in names:
        g = out.pop(name)
        for n in g.nodes:
            out[n] = _Group([n], g.site, g.cap, g.free)
    return out


def _vec(v: Iterable[int]) -> Vec:
    a, b, c = v
    return (a, b, c)


def _group_of(groups: dict[str, _Group]) -> dict[str, str]:
    return {n: g.name for g in groups.values() for n in g.nodes}


# -- the model --------------------------------------------------------------------------------
def _solve(comps: list[_Comp], groups: dict[str, _Group], cur: dict[str, dict[str, int]],
           time_limit_s: float, peak_time_s: float | None = None, optimize: bool = True
           ) -> tuple[int, dict[str, dict[str, int]] | None]:
    """Counts per (component, group); None when infeasible (or no solution in time).

    Two stages on one model: WAN and moves (started from a greedy hint, usually proven
    optimal by the LP bound at once), then the balance term with those two fixed at their
    optimum; `peak_time_s` caps the second stage (None: what is left of the time limit).
    """
    deadline = time.monotonic() + time_limit_s
    m = cp_model.CpModel()
    group_of = _group_of(groups)
    for c in comps:
        gs = list(dict.fromkeys(group_of[n] for n in c.eligible))
        if c.fixed:
            c.vars = {g: groups[g].size for g in gs}
            c.ubs = {g: groups[g].size for g in gs}
            continue
        if c.count and not gs:
            return cp_model.INFEASIBLE, None
        c.vars, c.ubs = {}, {}
        for g in gs:
            ub = min(c.count, groups[g].size * _fits(c.req, groups[g].free))
            c.vars[g] = m.new_int_var(0, ub, f"x[{c.key},{g}]") if ub else 0
            c.ubs[g] = ub
        m.add(sum(c.vars.values()) == c.count)
    load = _capacity(m, comps, groups)
    if not optimize:
        r = _run(m, comps, max(deadline - time.monotonic(), 0.1))
        return r.status, r.counts
    hint = _greedy(comps, groups, {c.key: _by_group(cur[c.key], group_of) for c in comps})
    hints: dict[cp_model.IntVar, int] = {}
    for c in comps:
        for g, x in c.vars.items():
            if not isinstance(x, int):
                hints[x] = hint[c.key].get(g, 0)
    wan = _wan_terms(m, comps, groups, hint, hints)
    moves, n_current = _moves(m, comps, group_of, cur, hint, hints)
    peak = _peak(m, groups, load, hints)
    n_inst = sum(c.count for c in comps)
    primary = wan * (max(n_inst, n_current) + 1) + moves
    for v, h in hints.items():
        m.add_hint(v, h)
    m.minimize(primary)
    first = _run(m, comps, max(deadline - time.monotonic(), 0.1), hints)
    if first.counts is None:
        return first.status, None
    m.add(primary <= first.objective)
    m.clear_hints()
    first.values[peak] = _peak_value(groups, load, first.values)
    for v, h in first.values.items():
        m.add_hint(v, h)
    m.minimize(peak)
    left = max(deadline - time.monotonic(), 0.1)
    second = _run(m, comps, left if peak_time_s is None else min(left, peak_time_s))
    best = second if second.counts is not None else first
    return best.status, best.counts


@dataclass
class _Result:
    status: int
    counts: dict[str, dict[str, int]] | None  # component -> group -> count; None: no solution
    values: dict[cp_model.IntVar, int] = field(default_factory=dict)
    objective: int = 0


def _run(m: cp_model.CpModel, comps: list[_Comp], time_limit_s: float,
         keep: Iterable[cp_model.IntVar] = ()) -> _Result:
    """Solve `m` as it is now; counts per (component, group) and the values of `keep`."""
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = time_limit_s
    solver.parameters.num_workers = 2
    status = solver.solve(m)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return _Result(status, None)
    counts = {c.key: {g: int(solver.value(x)) if not isinstance(x, int) else x
                      for g, x in c.vars.items()} for c in comps}
    return _Result(status, counts, {v: int(solver.value(v)) for v in keep},
                   int(solver.objective_value))


def _fits(req: Vec, free: Vec) -> int:
    """How many instances of `req` one node with `free` holds (a large number if any)."""
    return min((max(f, 0) // r for r, f in zip(req, free, strict=True) if r), default=1 << 30)


Load = dict[str, list[list[tuple[int, "cp_model.IntVar | int"]]]]


def _capacity(m: cp_model.CpModel, comps: list[_Comp], groups: dict[str, _Group]) -> Load:
    """Capacity, summed over every instance on the group's nodes; returns the load terms."""
    load: Load = {g: [[], [], []] for g in groups}
    for c in comps:
        for g, x in c.vars.items():
            for k in range(3):
                if c.req[k] and not (isinstance(x, int) and x == 0):
                    load[g][k].append((c.req[k], x))
    for g, dims in load.items():
        for k in range(3):
            if dims[k]:
                m.add(sum(w * x for w, x in dims[k]) <= max(groups[g].free[k], 0)
                      * groups[g].size)
    return load


def _peak(m: cp_model.CpModel, groups: dict[str, _Group], load: Load,
          hints: dict[cp_model.IntVar, int]) -> cp_model.IntVar:
    """3. balance: max CPU utilisation in per-mille (of a class: its average)."""
    top = max([1000] + [-(-1000 * (g.cap[0] - g.free[0]) // g.cap[0])
                        for g in groups.values() if g.cap[0] > 0])
    peak = m.new_int_var(0, top, "peak")
    hints[peak] = min(_peak_value(groups, load, hints), top)
    for name, dims in load.items():
        g = groups[name]
        base = g.cap[0] - g.free[0]  # other applications' load
        if g.cap[0] > 0 and (dims[0] or base):
            m.add(1000 * (base * g.size + sum(w * x for w, x in dims[0]))
                  <= peak * g.cap[0] * g.size)
    return peak


def _peak_value(groups: dict[str, _Group], load: Load,
                values: dict[cp_model.IntVar, int]) -> int:
    """The balance term for given counts (`values` of the count variables)."""
    out = 0
    for name, dims in load.items():
        g = groups[name]
        if g.cap[0] > 0:
            used = (g.cap[0] - g.free[0]) * g.size + sum(
                w * (x if isinstance(x, int) else values.get(x, 0)) for w, x in dims[0])
            out = max(out, -(-1000 * used // (g.cap[0] * g.size)))
    return out


def _wan_terms(m: cp_model.CpModel, comps: list[_Comp], groups: dict[str, _Group],
               hint: dict[str, dict[str, int]], hints: dict[cp_model.IntVar, int]
               ) -> cp_model.LinearExprT:
    """1. WAN traffic: instances of A at a site where no instance of a target B runs."""
    by_key = {(c.app, c.spec.name): c for c in comps}
    site_count: dict[tuple[str, str], tuple[cp_model.LinearExprT, int]] = {}

    def at_site(c: _Comp, site: str) -> tuple[cp_model.LinearExprT, int]:
        key = (c.key, site)
        if key not in site_count:
            gs = [g for g in c.vars if groups[g].site == site]
            site_count[key] = (sum(c.vars[g] for g in gs),
                               sum(c.ubs[g] if c.fixed else hint[c.key].get(g, 0) for g in gs))
        return site_count[key]

    present: dict[tuple[str, str], cp_model.IntVar] = {}
    terms = []
    for a in comps:
        for target in a.spec.connections:
            b = by_key.get((a.app, target))
            if b is None or not a.count:
                continue
            for site in sorted({groups[g].site for g in a.vars}):
                if (b.key, site) not in present:
                    z = m.new_bool_var(f"z[{b.key},{site}]")
                    expr, h = at_site(b, site)
                    m.add(expr >= 1).only_enforce_if(z)
                    m.add(expr == 0).only_enforce_if(~z)
                    present[(b.key, site)] = z
                    hints[z] = int(h > 0)
                ub = min(a.count, sum(u for g, u in a.ubs.items() if groups[g].site == site))
                w = m.new_int_var(0, ub, f"w[{a.key},{b.key},{site}]")
                expr, h = at_site(a, site)
                m.add(w >= expr - ub * present[(b.key, site)])
                hints[w] = 0 if hints[present[(b.key, site)]] else h
                terms.append(w)
    return sum(terms)


def _moves(m: cp_model.CpModel, comps: list[_Comp], group_of: dict[str, str],
           cur: dict[str, dict[str, int]], hint: dict[str, dict[str, int]],
           hints: dict[cp_model.IntVar, int]) -> tuple[cp_model.LinearExprT, int]:
    """2. moves: current instances (on eligible Ready nodes) not kept on their node.

    Counted per class: of the `k` current instances of c on a class's nodes, min(k, x)
    can stay, and `_spread` puts the class's instances on those nodes first (a class
    where that fails is split into single nodes and the model re-solved).
    """
    kept_terms: list[cp_model.LinearExprT] = []
    total_current = 0
    for c in comps:
        here: dict[str, int] = defaultdict(int)
        for n, k in cur[c.key].items():
            here[group_of[n]] += k
        for g, k in here.items():
            total_current += k
            x = c.vars.get(g, 0)
            if isinstance(x, int):
                kept_terms.append(min(x, k))
            else:
                stay = m.new_int_var(0, k, f"stay[{c.key},{g}]")
                m.add(stay <= x)
                hints[stay] = min(k, hint[c.key].get(g, 0))
                kept_terms.append(stay)
    return total_current - sum(kept_terms), total_current


def _current_nodes(c: _Comp, current: dict[str, str]) -> dict[str, int]:
    """How many current instances of `c` run on each of its eligible (Ready) nodes."""
    eligible = set(c.eligible)
    out: dict[str, int] = defaultdict(int)
    for node in _current_of(c, current).values():
        if node in eligible:
            out[node] += 1
    return dict(out)


def _current_of(c: _Comp, current: dict[str, str]) -> dict[str, str]:
    """The current instances of `c` that can keep their name: name -> node.

    Keys of `current` are instance names (`relay-3`) or `<app>/<instance>` when several
    applications are placed together. Replicas keep names `<c>-0 .. <c>-(count-1)`; a
    perNode instance keeps its name whatever its index, so that losing one node renames
    no instance on the others.
    """
    out: dict[str, str] = {}
    for key, node in current.items():
        app, _, name = key.rpartition("/")
        if app and app != c.app:
            continue
        base, _, index = name.rpartition("-")
        if base != c.spec.name or not index.isdigit() or str(int(index)) != index:
            continue
        if c.fixed or int(index) < c.count:
            out[name] = node
    return out


def _by_group(on_nodes: dict[str, int], group_of: dict[str, str]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for n, k in on_nodes.items():
        out[group_of[n]] += k
    return dict(out)


def _greedy(comps: list[_Comp], groups: dict[str, _Group], cur: dict[str, dict[str, int]]
            ) -> dict[str, dict[str, int]]:
    """A start for the solver: each component's current instances stay where they are
    (`cur`: per group) as far as they fit; the others go round-robin over its eligible
    sites, sites without an instance yet first (so every connected component is present
    wherever its senders are), each onto the group of the site with the most free CPU
    that holds it. A good start lets the LP bound prove the first stage optimal at once."""
    left = {g.name: [max(g.free[k], 0) * g.size for k in range(3)] for g in groups.values()}
    out: dict[str, dict[str, int]] = {}
    for c in comps:
        if c.fixed:
            out[c.key] = {g: int(x) for g, x in c.vars.items()}
            for g, x in c.vars.items():
                for k in range(3):
                    left[g][k] -= c.req[k] * int(x)
    todo = sorted((c for c in comps if not c.fixed),
                  key=lambda c: (-c.req[0] * c.count, c.key))
    for c in todo:
        by_site: dict[str, list[str]] = defaultdict(list)
        for g, x in c.vars.items():
            if not isinstance(x, int):
                by_site[groups[g].site].append(g)
        counts: dict[str, int] = defaultdict(int)
        for g, k in sorted(cur[c.key].items()):
            for _ in range(min(k, c.ubs.get(g, 0))):
                if sum(counts.values()) == c.count or not all(left[g][d] >= c.req[d]
                                                              for d in range(3)):
                    break
                counts[g] += 1
                for d in range(3):
                    left[g][d] -= c.req[d]
        present = {groups[g].site for g, k in counts.items() if k}
        sites = sorted(by_site, key=lambda s: (s in present, s))
        for i in range(c.count - sum(counts.values())):
            for j in range(len(sites)):
                fits = [g for g in by_site[sites[(i + j) % len(sites)]]
                        if counts[g] < c.ubs[g] and all(left[g][k] >= c.req[k]
                                                        for k in range(3))]
                if fits:
                    g = max(fits, key=lambda g: left[g][0]
                            / max(groups[g].cap[0] * groups[g].size, 1))
                    counts[g] += 1
                    for k in range(3):
                        left[g][k] -= c.req[k]
                    break
        out[c.key] = dict(counts)
    return out


# -- from class counts to node counts ---------------------------------------------------------
def _spread(comps: list[_Comp], solution: dict[str, dict[str, int]],
            groups: dict[str, _Group], cur: dict[str, dict[str, int]]
            ) -> tuple[dict[str, dict[str, int]], list[str]]:
    """Node counts per component; also the classes whose counts could not be spread."""
    per_node: dict[str, dict[str, int]] = {c.key: {} for c in comps}
    failed = []
    for g in groups.values():
        fixed = [c for c in comps if c.fixed and g.name in c.vars]
        free = [[g.free[k] - sum(c.req[k] for c in fixed) for k in range(3)] for _ in g.nodes]
        for c in fixed:
            per_node[c.key].update({n: 1 for n in g.nodes})
        todo = [(c, solution[c.key].get(g.name, 0)) for c in comps if not c.fixed]
        todo = [(c, k) for c, k in todo if k]
        if g.size == 1:
            for c, k in todo:
                per_node[c.key][g.name] = k
            continue
        counts = _pack(g, free, todo, cur)
        if counts is None:
            failed.append(g.name)
            continue
        for key, node_counts in counts.items():
            per_node[key].update(node_counts)
    return per_node, failed


def _pack(g: _Group, free: list[list[int]], todo: list[tuple[_Comp, int]],
          cur: dict[str, dict[str, int]]) -> dict[str, dict[str, int]] | None:
    """Spread a class's counts over its nodes: first the instances that stay (onto the
    nodes they run on, as many as the model kept), then largest instances first, each
    onto the least CPU-loaded node that holds it. None if something does not fit."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    index = {n: i for i, n in enumerate(g.nodes)}
    left = {}
    for c, k in todo:
        stay = min(k, sum(v for n, v in cur[c.key].items() if n in index))
        for n, v in sorted(cur[c.key].items()):
            if stay == 0 or n not in index:
                continue
            take = min(v, stay)
            i = index[n]
            if any(take * c.req[d] > free[i][d] for d in range(3)):
                return None  # the class's nodes cannot keep them: solve them one by one
            for d in range(3):
                free[i][d] -= take * c.req[d]
            out[c.key][n] += take
            stay -= take
            k -= take
        left[c.key] = k
    heap = [(g.free[0] - f[0], i) for i, f in enumerate(free)]  # (cpu used, node index)
    heapq.heapify(heap)
    items = sorted(todo, key=lambda ck: (ck[0].req, ck[0].key), reverse=True)
    for c, _ in items:
        for _ in range(left[c.key]):
            skipped = []
            while heap:
                used, i = heapq.heappop(heap)
                if all(c.req[d] <= free[i][d] for d in range(3)):
                    break
                skipped.append((used, i))
            else:
                return None
            for d in range(3):
                free[i][d] -= c.req[d]
            out[c.key][g.nodes[i]] += 1
            heapq.heappush(heap, (used + c.req[0], i))
            for sk in skipped:
                heapq.heappush(heap, sk)
    return {key: dict(v) for key, v in out.items()}


def _name_instances(c: _Comp, counts: dict[str, int], nodes: dict[str, NodeInfo],
                    current: dict[str, str]) -> list[Instance]:
    """Give instance names, keeping each current name on its node where it stays."""
    slots = {n: k for n, k in counts.items() if k}
    mine = _current_of(c, current)
    out: list[Instance] = []
    if c.fixed:  # perNode: a name follows its node; new nodes take the lowest free indices
        # lowest index wins if two current names share a node; names of instances on lost
        # nodes are not reused, so a name never jumps to another node
        by_node = {node: name for name, node in sorted(mine.items(), key=_index_of,
                                                       reverse=True) if node in slots}
        free_names = (n for n in (f"{c.spec.name}-{i}" for i in range(len(mine) + c.count + 1))
                      if n not in mine)
        for node in sorted(slots):
            out.append(Instance(name=by_node.get(node) or next(free_names),
                                component=c.spec.name, site=nodes[node].site, node=node))
        return sorted(out, key=lambda i: _index_of((i.name, "")))
    unplaced = []
    for name in (f"{c.spec.name}-{i}" for i in range(c.count)):
        node = mine.get(name)
        if node is not None and slots.get(node, 0) > 0:
            slots[node] -= 1
            out.append(Instance(name=name, component=c.spec.name, site=nodes[node].site,
                                node=node))
        else:
            unplaced.append(name)
    free_slots = [n for n in sorted(slots) for _ in range(slots[n])]
    for name, node in zip(unplaced, free_slots, strict=True):
        out.append(Instance(name=name, component=c.spec.name, site=nodes[node].site,
                            node=node))
    return sorted(out, key=lambda i: _index_of((i.name, "")))


def _index_of(item: tuple[str, str]) -> int:
    return int(item[0].rsplit("-", 1)[1])


def _explain(comps: list[_Comp], all_nodes: list[NodeInfo], free: dict[str, list[int]],
             groups: dict[str, _Group]) -> PlacementError:
    """Say which component cannot be placed and which constraint blocks it."""
    dims = ("cpu", "memory", "gpu")
    kinds = {n.site: n.site_kind for n in all_nodes}
    for c in comps:
        what = f"component {c.spec.name!r} of {c.app!r}"
        sites = sorted(_sites(c.spec.site, kinds))
        if c.count and not sites:
            return PlacementError(f"{what} cannot be placed: site {c.spec.site!r}: no such "
                                  f"site (sites: {', '.join(sorted(kinds))})")
        if c.count and not c.eligible:
            selector = {**c.spec.labels, **(c.spec.per_node.labels if c.spec.per_node else {})}
            at = [n for n in all_nodes if n.site in sites]
            if not any(n.ready for n in at):
                return PlacementError(f"{what} cannot be placed: site {c.spec.site!r}: no "
                                      f"Ready node at site(s) {', '.join(sites)} (NotReady: "
                                      f"{_names([n.name for n in at])})")
            return PlacementError(f"{what} cannot be placed: labels {selector}: no Ready node "
                                  f"at site(s) {', '.join(sites)} has these labels")
        for k, dim in enumerate(dims):
            if not c.count or not c.req[k]:
                continue
            need = f"{dim} {_fmt(dim, c.req[k])}"
            if c.fixed:  # perNode: every eligible node must hold its instance
                short = [n for n in c.eligible if free[n][k] < c.req[k]]
                if short:
                    return PlacementError(
                        f"{what} cannot be placed: perNode needs {need} free on every "
                        f"eligible node: {short[0]} has {_fmt(dim, max(free[short[0]][k], 0))}"
                        + (f" ({len(short)} such nodes)" if len(short) > 1 else ""))
            elif not any(free[n][k] >= c.req[k] for n in c.eligible):
                best = max(c.eligible, key=lambda n, k=k: free[n][k])
                return PlacementError(
                    f"{what} needs {need} at site(s) {', '.join(sites)}: no eligible Ready "
                    f"node has {dim} >= {_fmt(dim, c.req[k])} free ({best} has "
                    f"{_fmt(dim, max(free[best][k], 0))})")
    # the shortest infeasible prefix (feasibility only shrinks as components are added)
    lo, hi = 0, len(comps)  # comps[:lo] feasible (or empty), comps[:hi] assumed infeasible
    while hi - lo > 1:
        mid = (lo + hi) // 2
        _, sol = _solve(comps[:mid], groups, {}, 5.0, optimize=False)
        if sol is None:
            hi = mid
        else:
            lo = mid
    c = comps[hi - 1]
    need = [sum(x.count * x.req[k] for x in comps[:hi] if set(x.eligible) & set(c.eligible))
            for k in range(3)]
    have = [sum(max(free[n][k], 0) for n in c.eligible) for k in range(3)]
    short = [f"{d} {_fmt(d, need[k])} needed, {_fmt(d, have[k])} free"
             for k, d in enumerate(dims) if need[k] > have[k]]
    detail = "; ".join(short) or "capacity is too fragmented across nodes"
    others = ", ".join(x.spec.name for x in comps[:hi - 1]) or "none"
    return PlacementError(f"component {c.spec.name!r} of {c.app!r} cannot be placed: jointly "
                          f"infeasible with the components before it ({others}): {detail} on "
                          f"its eligible nodes ({_names(c.eligible)})")


def plan_cost(plans: list[DeploymentPlan], nodes: list[NodeInfo], *,
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


def _names(nodes: list[str], most: int = 8) -> str:
    names = sorted(nodes)
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


def _fmt(dim: str, value: int) -> str:
    if dim == "cpu":
        return f"{value / 1000:g}"
    if dim == "memory":
        return f"{value}Mi"
    return str(value)
