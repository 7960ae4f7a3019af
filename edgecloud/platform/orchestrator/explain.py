"""Why no plan exists: the first component that cannot be placed and the constraint."""

from __future__ import annotations

from edgecloud.platform.orchestrator.model import (
    PlacementError,
    PlacementNode,
    _Comp,
    _Group,
    _sites,
)
from edgecloud.platform.orchestrator.solve import _solve


def _explain(comps: list[_Comp], all_nodes: list[PlacementNode], free: dict[str, list[int]],
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
                amounts = {n: free[n][k] for n in c.eligible}
                best = max(amounts, key=amounts.__getitem__)  # the first of the largest
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
    needed = [sum(x.count * x.req[k] for x in comps[:hi]
                  if set(x.eligible) & set(c.eligible)) for k in range(3)]
    have = [sum(max(free[n][k], 0) for n in c.eligible) for k in range(3)]
    lacking = [f"{d} {_fmt(d, needed[k])} needed, {_fmt(d, have[k])} free"
               for k, d in enumerate(dims) if needed[k] > have[k]]
    detail = "; ".join(lacking) or "capacity is too fragmented across nodes"
    others = ", ".join(x.spec.name for x in comps[:hi - 1]) or "none"
    return PlacementError(f"component {c.spec.name!r} of {c.app!r} cannot be placed: jointly "
                          f"infeasible with the components before it ({others}): {detail} on "
                          f"its eligible nodes ({_names(c.eligible)})")


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
