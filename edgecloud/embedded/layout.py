"""Where every service of an embedded run listens, and how the WAN routes connect them.

Pure planning, no processes: `plan_layout` allocates loopback ports for the platform, each
site's broker and file server, and each edge site's shaping proxy with its routes (see
docs/internals.md, "WAN emulation"). The supervisor turns the layout into service
configs; `state.json` records it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgecloud.procutil import free_port
from edgecloud.resource.infra import Infrastructure
from edgecloud.service import Endpoint


@dataclass
class SiteLayout:
    name: str
    kind: str
    broker: Endpoint
    files: Endpoint
    wan_control: Endpoint | None = None
    routes: dict[str, Endpoint] = field(default_factory=dict)
    route_targets: dict[str, tuple[Endpoint, str]] = field(default_factory=dict)
    """route name -> (target endpoint, initiator side)."""

    def route_url(self, route: str, scheme: str = "http") -> str:
        return self.routes[route].url(scheme)


@dataclass
class Layout:
    platform: Endpoint
    sites: dict[str, SiteLayout]

    def platform_url_for(self, site: str) -> str:
        """The platform as an agent at `site` reaches it (edge agents cross the WAN)."""
        s = self.sites[site]
        return s.route_url("platform") if s.kind == "edge" else self.platform.url("http")

    def broker_url_for(self, site: str) -> str:
        return self.sites[site].broker.url("mqtt")

    def files_url_for(self, site: str) -> str:
        return self.sites[site].files.url("http")

    def file_peers(self, site: str) -> dict[str, str]:
        """Base URL of every other site's file server as reachable from `site` (via WAN)."""
        me = self.sites[site]
        peers: dict[str, str] = {}
        for other in self.sites.values():
            if other.name == site:
                continue
            if me.kind == "cloud":
                peers[other.name] = other.route_url("files-in")
            elif other.kind == "cloud":
                peers[other.name] = me.route_url("files-cloud")
            else:
                peers[other.name] = me.route_url(f"files-{other.name}")
        return peers


def plan_layout(infra: Infrastructure, host: str = "127.0.0.1",
                platform_port: int | None = None) -> Layout:
    """Allocate every endpoint of an embedded run."""

    def ep(port: int | None = None) -> Endpoint:
        return Endpoint(host=host, port=port or free_port(host))

    sites = {s.name: SiteLayout(s.name, s.kind, broker=ep(), files=ep())
             for s in infra.spec.sites}
    layout = Layout(platform=ep(platform_port), sites=sites)
    cloud = sites[infra.cloud.name]
    edges = [sites[s.name] for s in infra.edges]
    for edge in edges:
        edge.wan_control = ep()
        for route in ["mqtt", "platform", "files-cloud", "files-in",
                      *[f"files-{o.name}" for o in edges if o is not edge]]:
            edge.routes[route] = ep()
    for edge in edges:
        t = edge.route_targets
        t["mqtt"] = (cloud.broker, "edge")
        t["platform"] = (layout.platform, "edge")
        t["files-cloud"] = (cloud.files, "edge")
        t["files-in"] = (edge.files, "cloud")
        for other in edges:
            if other is not edge:
                t[f"files-{other.name}"] = (other.routes["files-in"], "edge")
    return layout
