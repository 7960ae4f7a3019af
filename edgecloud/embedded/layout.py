"""Where every service of an embedded run listens, and how the WAN routes connect them.

Pure planning, no processes: `plan_layout` allocates loopback ports for the platform, each
site's broker and file server, and each edge site's shaping proxy with its routes (see
docs/internals.md, "WAN emulation"). The supervisor turns the layout into service
configs; `state.json` records it.

Ports are stable per home: `<home>/layout.json` keeps the ports of the last run, and the
next run reuses each one that is still free. Node credentials and instance contexts hold
these URLs, so a `down` then `up` keeps deployed applications working.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgecloud.config import write_private
from edgecloud.procutil import claim_port, free_port
from edgecloud.resource.infra import Infrastructure
from edgecloud.service import Endpoint

PortMoved = Callable[[str, int, int], None]
"""Called with (what, previous port, new port) when a port of the last run is taken."""


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


    def ports(self) -> dict[str, int]:
        """Every allocated port by what it is for (`platform`, `ec-1.broker`, ...)."""
        out = {"platform": self.platform.port}
        for s in self.sites.values():
            out[f"{s.name}.broker"] = s.broker.port
            out[f"{s.name}.files"] = s.files.port
            if s.wan_control is not None:
                out[f"{s.name}.wan_control"] = s.wan_control.port
            out.update({f"{s.name}.route.{r}": ep.port for r, ep in s.routes.items()})
        return out


def load_ports(path: Path) -> dict[str, int]:
    """The ports saved by `save_ports`; empty if there are none or the file is unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    ports = data.get("ports") if isinstance(data, dict) else None
    if not isinstance(ports, dict):
        return {}
    return {k: v for k, v in ports.items() if isinstance(v, int)}


def save_ports(path: Path, layout: Layout) -> None:
    write_private(path, json.dumps({"ports": layout.ports()}, indent=2))


def plan_layout(infra: Infrastructure, host: str = "127.0.0.1",
                platform_port: int | None = None, previous: dict[str, int] | None = None,
                on_moved: PortMoved | None = None) -> Layout:
    """Allocate every endpoint of an embedded run.

    `previous` (from `load_ports`): reuse each of those ports that is free now; one that
    is taken gets a new port, reported through `on_moved`.
    """
    previous = previous or {}
    # Claim the old ports first, so that no new allocation takes one a later key needs.
    kept = {what: port for what, port in previous.items()
            if not (what == "platform" and platform_port) and claim_port(host, port)}

    def ep(what: str, port: int | None = None) -> Endpoint:
        if port is None and what in kept:
            port = kept[what]
        elif port is None and what in previous:
            port = free_port(host)
            if on_moved is not None:
                on_moved(what, previous[what], port)
        return Endpoint(host=host, port=port or free_port(host))

    sites = {s.name: SiteLayout(s.name, s.kind, broker=ep(f"{s.name}.broker"),
                                files=ep(f"{s.name}.files"))
             for s in infra.spec.sites}
    layout = Layout(platform=ep("platform", platform_port), sites=sites)
    cloud = sites[infra.cloud.name]
    edges = [sites[s.name] for s in infra.edges]
    for edge in edges:
        edge.wan_control = ep(f"{edge.name}.wan_control")
        for route in ["mqtt", "platform", "files-cloud", "files-in",
                      *[f"files-{o.name}" for o in edges if o is not edge]]:
            edge.routes[route] = ep(f"{edge.name}.route.{route}")
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
