"""The application controller: deploy, update, delete and re-plan applications.

It turns a topology into a deployment plan (the orchestrator), each planned instance into
an `InstanceSpec` with its `InstanceContext`, and the specs of every application into
one desired instance list per node (`Platform.set_assignment`), which agents long-poll.
Node transitions re-plan: instances on a node that went NotReady move to eligible Ready
nodes (the others stay where they are); a node that joins or returns gets perNode
instances and takes part in later placements.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

from pydantic import BaseModel

from edgecloud.application.context import ControllerInfo, InstanceContext, Peer
from edgecloud.application.plan import DeploymentPlan, Instance
from edgecloud.application.topology import Application
from edgecloud.errors import UserError
from edgecloud.log import get_logger
from edgecloud.platform.core import Platform
from edgecloud.platform.monitor import NodeTransition
from edgecloud.platform.orchestrator import PlacementNode
from edgecloud.platform.orchestrator import PlacedInstance, PlacementError, place
from edgecloud.resource.infra import Resources
from edgecloud.resource.runtime import InstanceSpec

log = get_logger("platform.apps")

DEFAULT_CONTROLLER = "edgecloud.application.control:InAppController"
CONTROLLER_COMPONENT = "controller"


class DeployRequest(BaseModel):
    """Body of `POST /apps` and `PUT /apps/{name}`."""

    topology: dict[str, Any]
    bundle: dict[str, Any] | None = None
    """FileRef (cloud site) of a tar.gz of the application directory."""
    source_dir: str | None = None
    """The application directory on the machine that deployed it (embedded runs)."""
    bundle_python_path: list[str] = []
    """spec.pythonPath entries relative to the bundle root."""


class AppConflict(UserError):
    exit_code = 1


class AppNotFound(UserError):
    exit_code = 1


class AppManager:
    """Owns every application's plan; all changes are serialised by one lock."""

    def __init__(self, platform: Platform) -> None:
        self.p = platform
        self._lock = threading.RLock()
        self._withheld = False
        self._ever_started: set[tuple[str, str]] = set()
        platform.hooks.subscribe(self._on_transition)
        platform.heartbeat_listeners.append(self._on_heartbeat)

    # -- queries ---------------------------------------------------------------------------
    def plan(self, name: str) -> DeploymentPlan:
        row = self.p.store.app(name)
        if row is None:
            raise AppNotFound(f"no application {name!r}; see `edgecloud app list`")
        app = Application.model_validate(row["spec"])
        insts = [Instance(name=r["name"], component=r["component"], site=r["site"],
                          node=r["node"]) for r in self.p.store.instances(name)]
        return DeploymentPlan(app=name, application=app, instances=insts)

    def dry_run(self, app: Application) -> DeploymentPlan:
        """Where `app` would go now, given live nodes and the other apps (no change made)."""
        with self._lock:
            return self._place(app, exclude=app.metadata.name, current=None)

    # -- changes ---------------------------------------------------------------------------
    def deploy(self, req: DeployRequest) -> DeploymentPlan:
        app = Application.model_validate(req.topology)
        name = app.metadata.name
        with self._lock:
            if self.p.store.app(name) is not None:
                raise AppConflict(f"application {name!r} is already deployed; use `edgecloud "
                                  "app update` or delete it first")
            plan = self._place(app, exclude=name, current=None)
            self._save(req, app, plan)
        log.info("deployed", app=name, instances=len(plan.instances))
        return plan

    def update(self, req: DeployRequest, thorough: bool = False) -> DeploymentPlan:
        """Incremental: instances keep their nodes where possible and only instances whose
        spec changed restart (agents compare digests). Thorough: delete, then deploy."""
        app = Application.model_validate(req.topology)
        name = app.metadata.name
        with self._lock:
            if self.p.store.app(name) is None:
                raise AppNotFound(f"no application {name!r} to update; deploy it first")
            if thorough:
                self.delete(name)
                return self.deploy(req)
            current = {r["name"]: r["node"] for r in self.p.store.instances(name)}
            plan = self._place(app, exclude=name, current=current)
            self._save(req, app, plan)
        log.info("updated", app=name, instances=len(plan.instances))
        return plan

    def delete(self, name: str) -> None:
        with self._lock:
            if not self.p.store.delete_app(name):
                raise AppNotFound(f"no application {name!r}")
            self.sync_assignments()
        log.info("deleted", app=name)

    def replan_all(self, reason: str) -> list[str]:
        """Re-place every app sticking to current nodes; returns problems (unplaceable)."""
        problems: list[str] = []
        with self._lock:
            for row in self.p.store.apps():
                app = Application.model_validate(row["spec"])
                current = {r["name"]: r["node"] for r in self.p.store.instances(row["name"])}
                try:
                    plan = self._place(app, exclude=row["name"], current=current)
                except PlacementError as exc:
                    problems.append(f"{row['name']}: {exc}")
                    log.warning("re-plan impossible; instances stay where they are",
                                app=row["name"], reason=reason, error=str(exc))
                    continue
                moved = sorted(i.name for i in plan.instances
                               if current.get(i.name) not in (None, i.node))
                if moved or len(plan.instances) != len(current):
                    log.info("re-planned", app=row["name"], reason=reason,
                             moved=",".join(moved) or "-")
                req = DeployRequest(topology=row["spec"], bundle=row["bundle"],
                                    source_dir=row["source_dir"])
                self._save(req, app, plan, keep_revision=True)
        return problems

    def _on_transition(self, t: NodeTransition) -> None:
        # Hooks run in request threads: re-plan in the background.
        threading.Thread(target=self.replan_all, args=(f"{t.node_id} {t.state}",),
                         daemon=True).start()

    # -- planning ----------------------------------------------------------------------------
    def _nodes(self) -> list[PlacementNode]:
        kinds = {s["name"]: s["kind"] for s in self.p.store.sites()}
        return [PlacementNode(name=n["name"], site=n["site"], site_kind=kinds[n["site"]],
                              labels=n["labels"], resources=Resources(**n["resources"]),
                              ready=n["state"] == "Ready")
                for n in self.p.store.nodes()]

    def _placed_elsewhere(self, exclude: str) -> list[PlacedInstance]:
        out = []
        for r in self.p.store.instances():
            if r["app"] == exclude:
                continue
            res = r["spec"].get("context", {}).get("resources") or {}
            out.append(PlacedInstance(node=r["node"], resources=Resources(**res)))
        return out

    def _place(self, app: Application, exclude: str,
               current: dict[str, str] | None) -> DeploymentPlan:
        plans = place([app], self._nodes(), placed=self._placed_elsewhere(exclude),
                      current=current)
        return plans[app.metadata.name]

    # -- specs and assignments -------------------------------------------------------------
    def _save(self, req: DeployRequest, app: Application, plan: DeploymentPlan,
              keep_revision: bool = False) -> None:
        instances = self._with_controllers(app, plan)
        specs = self._specs(req, app, instances)
        rows = [{"name": i.name, "component": i.component, "site": i.site, "node": i.node,
                 "spec": specs[i.name].model_dump(mode="json")} for i in instances]
        if keep_revision:
            self.p.store.set_instances(app.metadata.name, rows)
        else:
            self.p.store.save_app(app.metadata.name, app.model_dump(mode="json", by_alias=True),
                                  req.bundle, req.source_dir, rows)
        self.sync_assignments()

    def _with_controllers(self, app: Application, plan: DeploymentPlan) -> list[Instance]:
        """Add the in-app controllers: one per edge site hosting the app, one in the cloud."""
        if app.spec.controller is None:
            return list(plan.instances)
        nodes = [n for n in self._nodes() if n.ready]
        cloud = next((s["name"] for s in self.p.store.sites() if s["kind"] == "cloud"), None)
        sites = sorted({i.site for i in plan.instances} | ({cloud} if cloud else set()))
        extra = []
        for site in sites:
            here = [i.node for i in plan.instances if i.site == site]
            candidates = [n.name for n in nodes if n.site == site]
            node = max(set(here), key=here.count) if here else (candidates or [None])[0]
            if node is None:
                continue
            extra.append(Instance(name=f"{CONTROLLER_COMPONENT}-{site}",
                                  component=CONTROLLER_COMPONENT, site=site, node=node))
        return list(plan.instances) + extra

    def _specs(self, req: DeployRequest, app: Application,
               instances: list[Instance]) -> dict[str, InstanceSpec]:
        sites = {s["name"]: s for s in self.p.store.sites()}
        nodes = {n["name"]: n for n in self.p.store.nodes()}
        cloud = next(s for s in sites.values() if s["kind"] == "cloud")["name"]
        comps = {c.name: c for c in app.spec.components}
        members = [Peer(instance=i.name, component=i.component, site=i.site, node=i.node)
                   for i in instances]
        by_comp: dict[str, list[Peer]] = defaultdict(list)
        for m in members:
            by_comp[m.component].append(m)
        ctrl = app.spec.controller
        ctrl_info = None
        if ctrl is not None:
            ctrl_info = ControllerInfo(
                policy=getattr(ctrl, "policy", None) or ControllerInfo().policy,
                params=dict(ctrl.params),
                report_interval_s=float(getattr(ctrl, "report_interval", 1.0) or 1.0),
                sites=sorted({i.site for i in instances
                              if i.component == CONTROLLER_COMPONENT and i.site != cloud}))
        specs: dict[str, InstanceSpec] = {}
        for inst in instances:
            is_ctrl = inst.component == CONTROLLER_COMPONENT and inst.component not in comps
            comp = comps.get(inst.component)
            site = sites[inst.site]
            ctx = InstanceContext(
                app=app.metadata.name, instance=inst.name, component=inst.component,
                role="controller" if is_ctrl else "component", site=inst.site,
                site_kind=site["kind"], cloud_site=cloud, node=inst.node,
                node_speed=float(nodes[inst.node]["speed"]) if inst.node in nodes else 1.0,
                broker_url=site["broker"], files_url=site["files"],
                entry=(getattr(ctrl, "entry", None) or DEFAULT_CONTROLLER) if is_ctrl
                else (comp.entry or "" if comp else ""),
                source_dir=req.source_dir or "",
                python_path=[],
                params=dict(ctrl.params) if is_ctrl and ctrl else dict(comp.params if comp
                                                                          else {}),
                peers={} if comp is None else {c: by_comp.get(c, []) for c in comp.connections},
                members=members, controller=ctrl_info)
            context = ctx.model_dump(mode="json")
            if comp is not None:
                context["resources"] = comp.resources.model_dump(mode="json")
            if req.bundle:
                context["bundle"] = req.bundle
                context["bundle_python_path"] = list(req.bundle_python_path)
            env = {**(comp.env if comp else {}), "EDGECLOUD_APP": app.metadata.name,
                   "EDGECLOUD_INSTANCE": inst.name}
            command = list(comp.command or []) if comp else []
            specs[inst.name] = InstanceSpec(
                app=app.metadata.name, name=inst.name, component=inst.component,
                kind="command" if command else "entry", command=command, env=env,
                context=context)
        return specs

    def _on_heartbeat(self, node_id: str) -> None:
        # Withheld senders start as soon as a heartbeat reports their receivers running.
        if self._withheld:
            with self._lock:
                self.sync_assignments()

    def sync_assignments(self) -> None:
        """Push each node's desired instances; only nodes whose list changed get a new
        revision (so their agents alone wake up).

        An instance is withheld (Pending) until every instance of the components it sends
        to has run: MQTT drops messages for an inbox nobody subscribed to yet, and once
        a receiver has run, its persistent session keeps its messages across restarts.
        Components in a cycle of connections do not wait for each other.
        """
        rows = self.p.store.instances()
        started = self._started_instances(rows)
        withheld = self._withheld_instances(rows, started)
        self._withheld = bool(withheld)
        wanted: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in rows:
            if (r["app"], r["name"]) not in withheld:
                wanted[r["node"]].append(r["spec"])
        for n in self.p.store.nodes():
            desired = sorted(wanted.get(n["name"], []), key=lambda s: (s["app"], s["name"]))
            if desired != n["assignment"]:
                self.p.set_assignment(n["id"], desired)

    def _started_instances(self, rows: list[Any]) -> set[tuple[str, str]]:
        """Instances that have run at least once (their inbox session exists)."""
        seen = {(s.get("app"), s.get("name")) for n in self.p.store.nodes()
                for s in n["instance_status"] or []
                if s.get("state") == "Running" or s.get("restarts", 0) > 0}
        return {k for k in seen if k[0] is not None} | self._ever_started & {
            (r["app"], r["name"]) for r in rows}

    def _withheld_instances(self, rows: list[Any],
                            started: set[tuple[str, str]]) -> set[tuple[str, str]]:
        self._ever_started |= started
        by_app: dict[str, list[Any]] = defaultdict(list)
        for r in rows:
            by_app[r["app"]].append(r)
        withheld: set[tuple[str, str]] = set()
        for app_name, app_rows in by_app.items():
            row = self.p.store.app(app_name)
            if row is None:
                continue
            conns = {c["name"]: set(c.get("connections", []))
                     for c in row["spec"]["spec"]["components"]}
            instances_of: dict[str, list[str]] = defaultdict(list)
            for r in app_rows:
                instances_of[r["component"]].append(r["name"])
            for r in app_rows:
                for target in conns.get(r["component"], set()):
                    if _reaches(conns, target, r["component"]):
                        continue  # a cycle: nobody could ever go first
                    if any((app_name, t) not in self._ever_started
                           for t in instances_of.get(target, [])):
                        withheld.add((app_name, r["name"]))
                        break
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
