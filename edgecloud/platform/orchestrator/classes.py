"""Node classes: identical nodes merged into one group, split back, and spread onto nodes.

A class's count from the model is spread over its nodes afterwards (instances that stay
first, onto the nodes they run on; then largest instances first, onto the least loaded
node that holds them); a class whose spread fails is split into single nodes.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterable

from edgecloud.platform.orchestrator.model import PlacementNode, _Comp, _Group, _req, _vec


def _groups(ready: list[PlacementNode], free: dict[str, list[int]], merge: bool
            ) -> dict[str, _Group]:
    """One group per class of identical nodes (merge) or per node (exact model)."""
    classes: dict[tuple[object, ...], list[PlacementNode]] = defaultdict(list)
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


def _group_of(groups: dict[str, _Group]) -> dict[str, str]:
    return {n: g.name for g in groups.values() for n in g.nodes}





def _by_group(on_nodes: dict[str, int], group_of: dict[str, str]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for n, k in on_nodes.items():
        out[group_of[n]] += k
    return dict(out)


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
