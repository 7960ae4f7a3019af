"""Instance names: which current instances keep their name and node, and new names."""

from __future__ import annotations

from collections import defaultdict

from edgecloud.application.plan import Instance
from edgecloud.platform.orchestrator.model import PlacementNode, _Comp


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


def _name_instances(c: _Comp, counts: dict[str, int], nodes: dict[str, PlacementNode],
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
        was = mine.get(name)
        if was is not None and slots.get(was, 0) > 0:
            slots[was] -= 1
            out.append(Instance(name=name, component=c.spec.name, site=nodes[was].site,
                                node=was))
        else:
            unplaced.append(name)
    free_slots = [n for n in sorted(slots) for _ in range(slots[n])]
    for name, node in zip(unplaced, free_slots, strict=True):
        out.append(Instance(name=name, component=c.spec.name, site=nodes[node].site,
                            node=node))
    return sorted(out, key=lambda i: _index_of((i.name, "")))


def _index_of(item: tuple[str, str]) -> int:
    return int(item[0].rsplit("-", 1)[1])
