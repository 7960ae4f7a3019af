"""The infrastructure model: one cloud site, edge sites, their nodes and WAN links.

Parsed from an `Infrastructure` YAML file (see examples/infra/). Quantities are parsed
into numbers (bit/s, seconds, bytes, cores) by `edgecloud.units`; node and site names
become hierarchical IDs `<infra>/<site>/<node>`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator

from edgecloud.errors import FileValidationError
from edgecloud.schema import StrictModel, load_model, read_yaml
from edgecloud.units import parse_cpu, parse_duration, parse_memory, parse_rate

NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def check_name(value: str) -> str:
    """Names are DNS-1123 labels, as in Kubernetes: they end up in topics, IDs and hosts."""
    if not NAME_RE.match(value) or len(value) > 63:
        raise ValueError(
            "expected a name of lowercase letters, digits and '-', starting and ending "
            "with a letter or digit (e.g. 'ec-1')"
        )
    return value


def _loss(value: Any) -> float:
    if isinstance(value, str) and value.strip().endswith("%"):
        value = float(value.strip()[:-1]) / 100
    loss = float(value)
    if not 0 <= loss < 1:
        raise ValueError("expected a loss probability in [0, 1) such as 0.01 or '1%'")
    return loss


Name = Annotated[str, BeforeValidator(check_name)]
Rate = Annotated[float, BeforeValidator(parse_rate)]
Duration = Annotated[float, Field(ge=0), BeforeValidator(parse_duration)]
Memory = Annotated[int, Field(ge=0), BeforeValidator(parse_memory)]
Cpu = Annotated[float, Field(ge=0), BeforeValidator(parse_cpu)]
Loss = Annotated[float, BeforeValidator(_loss)]


class Resources(StrictModel):
    """Capacity of a node (or demand of a component): cores, bytes of memory, GPUs."""

    cpu: Cpu = 1.0
    memory: Memory = 1 << 30
    gpu: int = Field(0, ge=0)


class WanSpec(StrictModel):
    """An edge site's WAN link to the cloud. `up` is edge->cloud, `down` cloud->edge.

    Rates are bit/s (None = unlimited); delay and jitter are one-way seconds; loss is
    the probability that a segment must be retransmitted (felt as extra delay).
    """

    up: Rate | None = None
    down: Rate | None = None
    delay: Duration = 0.0
    jitter: Duration = 0.0
    loss: Loss = 0.0


class NodeSpec(StrictModel):
    name: Name
    resources: Resources = Resources()
    labels: dict[str, str] = {}
    speed: float = Field(1.0, gt=0, description="declared compute speed factor (1 = this host)")

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_as_strings(cls, v: Any) -> Any:
        # YAML reads `camera: true` as a bool; selectors compare strings.
        if isinstance(v, dict):
            return {str(k): str(x).lower() if isinstance(x, bool) else str(x) for k, x in v.items()}
        return v


class SiteServices(StrictModel):
    """Endpoints of a site's services when they run outside `edgecloud up` (production)."""

    broker: str | None = Field(None, description="mqtt://host:port of the site's broker")
    files: str | None = Field(None, description="http(s) URL of the site's file server")


class SiteSpec(StrictModel):
    name: Name
    kind: Literal["cloud", "edge"]
    wan: WanSpec | None = None
    nodes: list[NodeSpec] = Field(min_length=1)
    services: SiteServices = SiteServices()


class InfraSpec(StrictModel):
    sites: list[SiteSpec] = Field(min_length=1)


class Metadata(StrictModel):
    name: Name
    labels: dict[str, str] = {}


class Infrastructure(StrictModel):
    api_version: Literal["edgecloud/v1"] = Field(alias="apiVersion")
    kind: Literal["Infrastructure"]
    metadata: Metadata
    spec: InfraSpec

    # -- lookups -----------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def cloud(self) -> SiteSpec:
        return next(s for s in self.spec.sites if s.kind == "cloud")

    @property
    def edges(self) -> list[SiteSpec]:
        return [s for s in self.spec.sites if s.kind == "edge"]

    def site(self, name: str) -> SiteSpec:
        for s in self.spec.sites:
            if s.name == name:
                return s
        raise KeyError(name)

    def node_id(self, site: str, node: str) -> str:
        return f"{self.name}/{site}/{node}"


def semantic_problems(infra: Infrastructure) -> list[tuple[str, str]]:
    """Rules across fields: one cloud, unique names, WAN only on edge sites."""
    problems: list[tuple[str, str]] = []
    clouds = [i for i, s in enumerate(infra.spec.sites) if s.kind == "cloud"]
    if len(clouds) != 1:
        problems.append(("spec.sites", f"expected exactly one site of kind cloud, found "
                                       f"{len(clouds)}"))
    seen_sites: dict[str, int] = {}
    seen_nodes: dict[str, str] = {}
    for i, site in enumerate(infra.spec.sites):
        if site.name in seen_sites:
            problems.append((f"spec.sites[{i}].name",
                             f"site name {site.name!r} already used by spec.sites"
                             f"[{seen_sites[site.name]}]"))
        seen_sites.setdefault(site.name, i)
        if site.kind == "cloud" and site.wan is not None:
            problems.append((f"spec.sites[{i}].wan",
                             "the cloud site has no WAN link of its own; declare wan on edge "
                             "sites"))
        for j, node in enumerate(site.nodes):
            where = f"spec.sites[{i}].nodes[{j}].name"
            if node.name in seen_nodes:
                problems.append((where, f"node name {node.name!r} already used in site "
                                        f"{seen_nodes[node.name]!r}; node names are unique "
                                        "across the infrastructure"))
            seen_nodes.setdefault(node.name, site.name)
    return problems


def load_infrastructure(path: str | Path, data: Any = None) -> Infrastructure:
    """Read and validate an infrastructure file (schema, then cross-field rules).

    Raises FileValidationError listing every problem with its path in the file.
    """
    if data is None:
        data = read_yaml(path)
    if isinstance(data, dict) and data.get("kind") not in (None, "Infrastructure"):
        raise FileValidationError(str(path), [("kind", f"expected 'Infrastructure', got "
                                                       f"{data.get('kind')!r}")])
    infra = load_model(path, Infrastructure, data)
    problems = semantic_problems(infra)
    if problems:
        raise FileValidationError(str(path), problems)
    return infra
