"""The CP-SAT model: counts per (component, node class), its constraints and objective."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from ortools.sat.python import cp_model

from edgecloud.platform.orchestrator.classes import _by_group, _group_of
from edgecloud.platform.orchestrator.model import Vec, _Comp, _Group


def _solve(comps: list[_Comp], groups: dict[str, _Group], cur: dict[str, dict[str, int]],
           time_limit_s: float, peak_time_s: float | None = None, optimize: bool = True
           ) -> tuple[cp_model.CpSolverStatus, dict[str, dict[str, int]] | None]:
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
    status: cp_model.CpSolverStatus
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
Expr = cp_model.LinearExpr | int
"""A linear expression over the model's variables, or a constant (`sum` of none is 0)."""


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
               ) -> Expr:
    """1. WAN traffic: instances of A at a site where no instance of a target B runs."""
    by_key = {(c.app, c.spec.name): c for c in comps}
    site_count: dict[tuple[str, str], tuple[Expr, int]] = {}

    def at_site(c: _Comp, site: str) -> tuple[Expr, int]:
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
           hints: dict[cp_model.IntVar, int]) -> tuple[Expr, int]:
    """2. moves: current instances (on eligible Ready nodes) not kept on their node.

    Counted per class: of the `k` current instances of c on a class's nodes, min(k, x)
    can stay, and `_spread` puts the class's instances on those nodes first (a class
    where that fails is split into single nodes and the model re-solved).
    """
    kept_terms: list[Expr] = []
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
            out[c.key] = _fixed_counts(c)
            for g, x in out[c.key].items():
                for k in range(3):
                    left[g][k] -= c.req[k] * x
    todo = sorted((c for c in comps if not c.fixed),
                  key=lambda c: (-c.req[0] * c.count, c.key))
    for c in todo:
        by_site: dict[str, list[str]] = defaultdict(list)
        for g, var in c.vars.items():
            if not isinstance(var, int):
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


def _fixed_counts(c: _Comp) -> dict[str, int]:
    """A perNode component's counts per group: constants (its group sizes), not variables."""
    return {g: x for g, x in c.vars.items() if isinstance(x, int)}
