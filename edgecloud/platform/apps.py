"""The application controller: deploy, update, delete and re-plan applications.

It turns a topology into a deployment plan (the orchestrator), each planned instance into
an `InstanceSpec` with its `InstanceContext` (specs.py), and the specs of every
application into one desired instance list per node (`Platform.set_assignment`), which
agents long-poll. Node transitions re-plan: instances on a node that went NotReady move
to eligible live nodes (the others stay where they are, with unchanged specs, so they do
not restart); a node that joins or returns gets perNode instances and takes part in
later placements.

Concurrency: every change of the application set is serialised by one lock, but the
solver (and its explanation of an impossible placement) runs outside it on a snapshot of
its inputs; a change that happened meanwhile makes the placement run again. Node
transitions and heartbeats only mark work for one re-plan worker thread, which
coalesces bursts (`ReplanWorker`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from edgecloud.application.plan import DeploymentPlan, Instance
from edgecloud.application.topology import Application
from edgecloud.application.wire import DeployRequest
from edgecloud.errors import UserError
from edgecloud.log import get_logger
from edgecloud.platform.core import Platform
from edgecloud.platform.hooks import NodeTransition
from edgecloud.platform.monitor import is_live
from edgecloud.platform.orchestrator import PlacedInstance, PlacementNode, place
from edgecloud.platform.replan import ReplanWorker
from edgecloud.platform.specs import CONTROLLER_COMPONENT, SpecBuilder
from edgecloud.platform.store import AppRow, InstanceRow
from edgecloud.platform.withheld import withheld_instances
from edgecloud.resource.runtime import InstanceSpec

log = get_logger("platform.apps")

PLACEMENT_ATTEMPTS = 3
"""Placements re-run when the application set changed while the solver ran."""


class AppConflict(UserError):
    """The application exists already (HTTP 409)."""

    exit_code = 1


class AppNotFound(UserError):
    """No such application (HTTP 404)."""

    exit_code = 1


class NoInfrastructure(UserError):
    """Nothing can be deployed before an infrastructure is registered (HTTP 409)."""

    exit_code = 1


@dataclass
class _App:
    """What the manager keeps of a deployed app: parsed once, when deployed or loaded."""

    row: AppRow
    instances: list[InstanceRow]

    @property
    def application(self) -> Application:
        return self.row.topology


class AppManager:
    """Owns every application's plan; see the module docstring."""

    def __init__(self, platform: Platform, debounce_s: float = 0.2) -> None:
        self.p = platform
        self._lock = threading.RLock()
        self._generation = 0  # bumped by every change of the application set
        by_app: dict[str, list[InstanceRow]] = {}
        for r in platform.store.apps.instances():
            by_app.setdefault(r.app, []).append(r)
        self._apps = {row.name: _App(row, by_app.get(row.name, []))
                      for row in platform.store.apps.all()}
        self._ever_started: set[tuple[str, str]] = set()
        self.withheld: dict[tuple[str, str], str] = {}
        """(app, instance) -> why it is held back (it waits for its receivers)."""
        self.worker = ReplanWorker(self.replan_all, self.sync_assignments, debounce_s)
        self._unsubscribe = platform.hooks.subscribe(self._on_transition)
        platform.heartbeat_listeners.append(self._on_heartbeat)

    def close(self) -> None:
        self._unsubscribe()
        self.worker.stop()

    # -- queries ---------------------------------------------------------------------------
    def _get(self, name: str) -> _App:
        a = self._apps.get(name)
        if a is None:
            raise AppNotFound(f"no application {name!r}; see `edgecloud app list`")
        return a

    def plan(self, name: str) -> DeploymentPlan:
        with self._lock:
            a = self._get(name)
            insts = [Instance(name=r.name, component=r.component, site=r.site, node=r.node)
                     for r in a.instances]
            return DeploymentPlan(app=name, application=a.application, instances=insts)

    def app(self, name: str) -> AppRow:
        """The deployed app as kept since its deploy (no store read, no parse)."""
        with self._lock:
            return self._get(name).row

    def apps(self) -> list[AppRow]:
        with self._lock:
            return [self._apps[n].row for n in sorted(self._apps)]

    def instances(self, name: str) -> list[InstanceRow]:
        with self._lock:
            return list(self._get(name).instances)

    def dry_run(self, app: Application) -> DeploymentPlan:
        """Where `app` would go now, given live nodes and the other apps (no change made)."""
        with self._lock:
            nodes, placed = self._nodes(), self._placed_elsewhere(app.metadata.name)
        return place([app], nodes, placed=placed)[app.metadata.name]

    # -- changes ---------------------------------------------------------------------------
    def deploy(self, req: DeployRequest) -> DeploymentPlan:
        name = req.topology.metadata.name

        def check() -> None:
            if name in self._apps:
                raise AppConflict(f"application {name!r} is already deployed; use `edgecloud "
                                  "app update` or delete it first")

        plan = self._place_and_commit(req.topology, check, lambda: None,
                                      lambda plan: self._save(req, plan, generation=1))
        log.info("deployed", app=name, instances=len(plan.instances))
        return plan

    def update(self, req: DeployRequest, thorough: bool = False) -> DeploymentPlan:
        """Incremental: instances keep their nodes where possible and only instances whose
        spec changed restart (agents compare digests). Thorough: placed afresh and every
        instance restarts. Either way the new plan is made before anything changes, and
        the app is replaced in one transaction: an impossible placement keeps the old app.
        """
        name = req.topology.metadata.name

        def check() -> None:
            self._get(name)

        def current() -> dict[str, str] | None:
            return None if thorough else {r.name: r.node for r in self._apps[name].instances}

        def commit(plan: DeploymentPlan) -> None:
            old = self._generation_of(name)
            self._save(req, plan, generation=old + 1 if thorough else old)

        plan = self._place_and_commit(req.topology, check, current, commit)
        log.info("updated", app=name, instances=len(plan.instances), thorough=thorough)
        return plan

    def delete(self, name: str) -> None:
        with self._lock:
            self._get(name)
            self.p.store.apps.delete(name)
            del self._apps[name]
            self._generation += 1
            self.sync_assignments()
        log.info("deleted", app=name)

    def replan_all(self, reason: str) -> list[str]:
        """Re-place every app sticking to current nodes; returns problems (unplaceable).

        Only moved instances get new specs: the others keep theirs byte for byte, so
        their digests are unchanged and their nodes do not restart them.
        """
        problems: list[str] = []
        with self._lock:
            names = sorted(self._apps)
            before = self._generation
        for name in names:
            try:
                self._replan(name, reason)
            except AppNotFound:
                continue  # deleted meanwhile
            except UserError as exc:
                problems.append(f"{name}: {exc}")
                log.warning("re-plan impossible; instances stay where they are",
                            app=name, reason=reason, error=str(exc))
        with self._lock:
            if self._generation != before:
                self.sync_assignments()
        return problems

    def _replan(self, name: str, reason: str) -> None:
        def check() -> None:
            self._get(name)

        def current() -> dict[str, str]:
            return {r.name: r.node for r in self._apps[name].instances}

        def commit(plan: DeploymentPlan) -> None:
            a = self._apps[name]
            was = {r.name: r.node for r in a.instances}
            rows = self._rows(a.row, plan, self._generation_of(name))
            if [r.model_dump() for r in rows] == [r.model_dump() for r in a.instances]:
                return
            moved = sorted(r.name for r in rows if was.get(r.name) not in (None, r.node))
            log.info("re-planned", app=name, reason=reason, moved=",".join(moved) or "-")
            self.p.store.apps.set_instances(name, rows)
            a.instances = rows
            self._generation += 1

        with self._lock:
            application = self._get(name).application
        self._place_and_commit(application, check, current, commit, sync=False)

    def _on_transition(self, t: NodeTransition) -> None:
        # Hooks run in request threads: the worker re-plans (bursts coalesce).
        self.worker.replan(f"{t.node_id} {t.state}")

    def _on_heartbeat(self, node_id: str) -> None:
        # Withheld senders start as soon as a heartbeat reports their receivers running.
        if self.withheld:
            self.worker.sync()

    # -- planning ----------------------------------------------------------------------------
    def _place_and_commit(self, app: Application, check: Callable[[], None],
                          current: Callable[[], dict[str, str] | None],
                          commit: Callable[[DeploymentPlan], None],
                          sync: bool = True) -> DeploymentPlan:
        """Place `app` outside the lock on a snapshot of the inputs, then `commit` under
        it if nothing changed meanwhile (else place again; the last attempt holds the
        lock throughout). `check` raises if the change is no longer valid."""
        name = app.metadata.name
        for attempt in range(PLACEMENT_ATTEMPTS):
            last = attempt == PLACEMENT_ATTEMPTS - 1
            with self._lock:
                check()
                generation = self._generation
                nodes, placed, cur = self._nodes(), self._placed_elsewhere(name), current()
                if last:
                    plan = place([app], nodes, placed=placed, current=cur)[name]
            if not last:
                plan = place([app], nodes, placed=placed, current=cur)[name]
            with self._lock:
                if not last and generation != self._generation:
                    continue
                check()
                commit(plan)
                if sync:
                    self.sync_assignments()
                return plan
        raise AssertionError("unreachable")

    def _nodes(self) -> list[PlacementNode]:
        kinds = {s.name: s.kind for s in self.p.store.infra.sites()}
        return [PlacementNode(name=n.name, site=n.site, site_kind=kinds[n.site],
                              labels=n.labels, resources=n.resources, ready=is_live(self.p, n))
                for n in self.p.store.nodes.all()]

    def _placed_elsewhere(self, exclude: str) -> list[PlacedInstance]:
        return [PlacedInstance(node=r.node, resources=r.spec.context.resources)
                for name, a in self._apps.items() if name != exclude for r in a.instances
                if r.spec.context is not None and r.spec.context.resources is not None]

    # -- specs and assignments -------------------------------------------------------------
    def _generation_of(self, name: str) -> int:
        a = self._apps.get(name)
        return max((r.spec.generation for r in a.instances), default=1) if a else 1

    def _save(self, req: DeployRequest, plan: DeploymentPlan, generation: int) -> None:
        name = req.topology.metadata.name
        draft = AppRow(name=name, topology=req.topology, bundle=req.bundle,
                       source_dir=req.source_dir, bundle_python_path=req.bundle_python_path,
                       revision=0, created_at=0.0, updated_at=0.0)
        rows = self._rows(draft, plan, generation)
        self.p.store.apps.save(req.topology, req.bundle, req.source_dir,
                               req.bundle_python_path, rows)
        row = self.p.store.apps.get(name)
        assert row is not None
        self._apps[name] = _App(row, rows)
        self._generation += 1

    def _rows(self, row: AppRow, plan: DeploymentPlan, generation: int) -> list[InstanceRow]:
        builder = SpecBuilder(self.p.store, row, generation)
        instances = builder.with_controllers(plan.instances, self._nodes())
        specs = builder.specs(instances)
        return [InstanceRow(app=row.name, name=i.name, component=i.component, site=i.site,
                            node=i.node, spec=specs[i.name]) for i in instances]

    def sync_assignments(self) -> None:
        """Push each node's desired instances; only nodes whose list changed get a new
        revision (so their agents alone wake up). Senders wait for their receivers
        (see `withheld_instances`)."""
        with self._lock:
            rows = [r for a in self._apps.values() for r in a.instances]
            nodes = self.p.store.nodes.all()
            self._ever_started |= {(s.app, s.name) for n in nodes for s in n.instance_status
                                   if s.state == "Running" or s.restarts > 0}
            live = {(r.app, r.name) for r in rows}
            self._ever_started &= live
            topologies = {name: a.application for name, a in self._apps.items()}
            withheld = withheld_instances(rows, topologies, self._ever_started)
            wanted: dict[str, list[InstanceSpec]] = {}
            for r in rows:
                if (r.app, r.name) not in withheld:
                    wanted.setdefault(r.node, []).append(r.spec)
            current = self.p.store.nodes.assignments()
            for n in nodes:
                desired = sorted(wanted.get(n.name, []), key=lambda s: (s.app, s.name))
                have = current.get(n.id)
                if have is None or [s.digest() for s in have.instances] != \
                        [s.digest() for s in desired]:
                    self.p.set_assignment(n.id, desired)
            # Published after the assignments, so a status read in between never shows an
            # instance as neither withheld nor assigned.
            self.withheld = withheld


__all__ = ["CONTROLLER_COMPONENT", "AppConflict", "AppManager", "AppNotFound",
           "NoInfrastructure"]
