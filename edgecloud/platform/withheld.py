"""Which instances wait for their receivers before they are assigned (and why).

An instance is withheld (Pending) until every instance of the components it sends to has
run: MQTT drops messages for an inbox nobody subscribed to yet, and once a receiver has
run, its persistent session keeps its messages across restarts. Components in a cycle of
connections do not wait for each other.
"""

from __future__ import annotations

from edgecloud.application.topology import Application
from edgecloud.platform.store import InstanceRow


def withheld_instances(rows: list[InstanceRow], topologies: dict[str, Application],
                       started: set[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """(app, instance) -> why it waits, for every instance that must wait."""
    by_app: dict[str, list[InstanceRow]] = {}
    for r in rows:
        by_app.setdefault(r.app, []).append(r)
    withheld: dict[tuple[str, str], str] = {}
    for app_name, app_rows in by_app.items():
        app = topologies.get(app_name)
        if app is None:
            continue
        conns = {c.name: set(c.connections) for c in app.spec.components}
        instances_of: dict[str, list[str]] = {}
        for r in app_rows:
            instances_of.setdefault(r.component, []).append(r.name)
        for r in app_rows:
            waiting = sorted(t for target in conns.get(r.component, set())
                             if not _reaches(conns, target, r.component)  # a cycle: nobody
                             for t in instances_of.get(target, [])        # could go first
                             if (app_name, t) not in started)
            if waiting:
                withheld[(app_name, r.name)] = (f"waiting for its receivers "
                                                f"{', '.join(waiting)} to start")
    return withheld


def _reaches(conns: dict[str, set[str]], start: str, goal: str) -> bool:
    """Does `start` (transitively) send to `goal`?"""
    stack, seen = [start], set()
    while stack:
        c = stack.pop()
        if c == goal:
            return True
        if c not in seen:
            seen.add(c)
            stack.extend(conns.get(c, ()))
    return False
