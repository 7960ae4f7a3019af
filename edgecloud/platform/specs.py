"""From planned instances to the `InstanceSpec`s nodes run (with their typed contexts).

What a spec contains decides when an instance restarts, so it holds only what the
instance needs: its own node, and its peers by site — not by node, so a peer moving
within its site changes nobody else's spec. The membership (peers, members, controller
sites) is the spec's live part: when only it changes (a peer dropped, added or moved to
another site) the node rewrites the instance's context instead of restarting it
(`InstanceSpec.restart_digest` vs `digest`). The site's broker and file-server URLs are
not in it either: the node fills them from its own endpoints.
"""

from __future__ import annotations

from edgecloud.application.context import ControllerInfo, InstanceContext, Peer
from edgecloud.application.plan import Instance
from edgecloud.application.topology import RESERVED_COMPONENT
from edgecloud.platform.orchestrator import PlacementNode
from edgecloud.platform.store import AppRow, Store
from edgecloud.resource.infra import Resources
from edgecloud.resource.runtime import InstanceSpec

DEFAULT_CONTROLLER = "edgecloud.application.control:InAppController"
CONTROLLER_COMPONENT = RESERVED_COMPONENT
"""The in-app controller's component name (a topology cannot use it)."""


class SpecBuilder:
    """Builds the instances and specs of one application revision."""

    def __init__(self, store: Store, row: AppRow, generation: int) -> None:
        self.row = row
        self.app = row.topology
        self.generation = generation
        self.sites = {s.name: s for s in store.infra.sites()}
        self.speeds = {n.name: n.speed for n in store.nodes.all()}
        self.cloud = next((s.name for s in self.sites.values() if s.kind == "cloud"), None)

    def with_controllers(self, planned: list[Instance],
                         nodes: list[PlacementNode]) -> list[Instance]:
        """Add the in-app controllers: one per edge site hosting the app, one in the cloud,
        each on the node of its site that runs most of the app's instances."""
        if self.app.spec.controller is None:
            return list(planned)
        ready = [n for n in nodes if n.ready]
        sites = sorted({i.site for i in planned} | ({self.cloud} if self.cloud else set()))
        extra = []
        for site in sites:
            here = sorted(i.node for i in planned if i.site == site)
            candidates = [n.name for n in ready if n.site == site]
            if not here and not candidates:
                continue
            node = max(set(here), key=lambda n: (here.count(n), n)) if here else candidates[0]
            extra.append(Instance(name=f"{CONTROLLER_COMPONENT}-{site}",
                                  component=CONTROLLER_COMPONENT, site=site, node=node))
        return list(planned) + extra

    def specs(self, instances: list[Instance]) -> dict[str, InstanceSpec]:
        if self.cloud is None:
            raise ValueError("no cloud site registered")
        members = [Peer(instance=i.name, component=i.component, site=i.site)
                   for i in instances]
        ctrl_info = self._controller_info(instances)
        return {i.name: self._spec(i, members, ctrl_info) for i in instances}

    def _controller_info(self, instances: list[Instance]) -> ControllerInfo | None:
        ctrl = self.app.spec.controller
        if ctrl is None:
            return None
        return ControllerInfo(
            policy=ctrl.policy or ControllerInfo().policy, params=dict(ctrl.params),
            report_interval_s=float(ctrl.report_interval or 1.0),
            sites=sorted({i.site for i in instances
                          if i.component == CONTROLLER_COMPONENT and i.site != self.cloud}))

    def _spec(self, inst: Instance, members: list[Peer],
              ctrl_info: ControllerInfo | None) -> InstanceSpec:
        assert self.cloud is not None
        ctrl = self.app.spec.controller
        comps = {c.name: c for c in self.app.spec.components}
        comp = comps.get(inst.component)
        is_ctrl = comp is None and inst.component == CONTROLLER_COMPONENT
        if is_ctrl:
            entry = (ctrl.entry if ctrl else None) or DEFAULT_CONTROLLER
            params = dict(ctrl.params) if ctrl else {}
        else:
            entry = (comp.entry or "") if comp else ""
            params = dict(comp.params) if comp else {}
        bundle = self.row.bundle
        ctx = InstanceContext(
            app=self.app.metadata.name, instance=inst.name, component=inst.component,
            role="controller" if is_ctrl else "component", site=inst.site,
            site_kind=self.sites[inst.site].kind, cloud_site=self.cloud, node=inst.node,
            node_speed=float(self.speeds.get(inst.node, 1.0)), entry=entry,
            source_dir=self.row.source_dir or "", params=params,
            resources=Resources(**comp.resources.model_dump()) if comp else None,
            bundle=bundle,
            bundle_python_path=list(self.row.bundle_python_path) if bundle else [],
            peers={} if comp is None else {c: [m for m in members if m.component == c]
                                           for c in comp.connections},
            members=members, controller=ctrl_info)
        env = {**(comp.env if comp else {}), "EDGECLOUD_APP": self.app.metadata.name,
               "EDGECLOUD_INSTANCE": inst.name}
        command = list(comp.command or []) if comp else []
        return InstanceSpec(app=self.app.metadata.name, name=inst.name,
                            component=inst.component, kind="command" if command else "entry",
                            command=command, env=env, context=ctx, generation=self.generation)
