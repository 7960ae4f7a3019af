"""The orchestrator's inputs and its internal model: nodes, components, node classes."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from ortools.sat.python import cp_model
from pydantic import BaseModel

from edgecloud.application.topology import ComponentResources, ComponentSpec
from edgecloud.errors import UserError
from edgecloud.resource.infra import Resources

Vec = tuple[int, int, int]  # millicores, MiB, gpus


class PlacementNode(BaseModel):
    """A node as the orchestrator sees it: where it is, what it offers, whether it is Ready."""

    name: str
    site: str
    site_kind: str
    labels: dict[str, str] = {}
    resources: Resources
    ready: bool = True


class PlacedInstance(BaseModel):
    """An instance of another application: it consumes capacity on its node."""

    node: str
    resources: Resources


class PlacementError(UserError):
    """No plan exists; the message says which component and which constraint."""


@dataclass
class _Comp:
    app: str
    spec: ComponentSpec
    eligible: list[str]  # node names
    fixed: bool  # perNode: one instance per eligible node
    count: int
    req: Vec
    vars: dict[str, cp_model.IntVar | int] = field(default_factory=dict)  # group -> count
    ubs: dict[str, int] = field(default_factory=dict)  # group -> upper bound of its count

    @property
    def key(self) -> str:
        return f"{self.app}/{self.spec.name}"


@dataclass
class _Group:
    """A class of identical nodes (or one node): same site, labels, capacity, free."""

    nodes: list[str]
    site: str
    cap: Vec
    free: Vec  # per node, after other applications' instances

    @property
    def name(self) -> str:
        return self.nodes[0]

    @property
    def size(self) -> int:
        return len(self.nodes)


def _req(r: Resources | ComponentResources) -> Vec:
    """Resources as integers: millicores, MiB (rounded up), gpus."""
    return (int(round(r.cpu * 1000)), int(math.ceil(r.memory / (1 << 20))), int(r.gpu))


def _vec(v: Iterable[int]) -> Vec:
    """Three integers as a `Vec` (e.g. a free-capacity list)."""
    a, b, c = v
    return (a, b, c)


def _sites(selector: str, kinds: dict[str, str]) -> set[str]:
    """The sites a component's `site` selector names, of those in `kinds` (site -> kind)."""
    if selector == "any":
        return set(kinds)
    if selector in ("edge", "cloud"):
        return {s for s, k in kinds.items() if k == selector}
    return {selector} & set(kinds)
