"""The topology file of an application (`kind: Application`): schema and validation.

    apiVersion: edgecloud/v1
    kind: Application
    metadata: {name: relay-demo}
    spec:
      components:
        - name: sensor
          entry: relay_app:Sensor         # or command: [python, x.py]
          site: edge                      # edge | cloud | a site name | any
          perNode: {labels: {camera: "true"}}   # or replicas: N
          resources: {cpu: 0.5, memory: 256Mi}
          connections: [relay]
          params: {count: 100}

`load_application(path, infra)` reads and validates a file; every problem is reported
with its path in the file (`spec.components[1].site`), all of them together.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path
from typing import Any

from pydantic import Field, PrivateAttr, field_validator

from edgecloud.errors import FileValidationError
from edgecloud.resource.infra import Cpu, Infrastructure, Memory, Metadata, Name, NodeSpec
from edgecloud.schema import StrictModel, load_model, read_yaml


class ComponentResources(StrictModel):
    """What one instance needs (defaults are small: most components are light)."""

    cpu: Cpu = 0.1
    memory: Memory = 64 << 20
    gpu: int = Field(0, ge=0)


class PerNodeSpec(StrictModel):
    """One instance on every Ready node of the component's site(s) matching `labels`."""

    labels: dict[str, str] = {}

    @field_validator("labels", mode="before")
    @classmethod
    def _strings(cls, v: Any) -> Any:
        return NodeSpec._labels_as_strings(v)  # type: ignore[operator]


class ComponentSpec(StrictModel):
    name: Name
    entry: str | None = Field(None, description="module:Class of an edgecloud.Component")
    command: list[str] | None = Field(None, description="a program to run instead")
    site: str = Field("any", description="edge | cloud | a site name | any")
    replicas: int | None = Field(None, ge=0)
    per_node: PerNodeSpec | None = Field(None, alias="perNode")
    resources: ComponentResources = ComponentResources()
    labels: dict[str, str] = Field({}, description="node selector: all must match")
    connections: list[str] = []
    params: dict[str, Any] = {}
    env: dict[str, str] = {}

    @field_validator("command", mode="before")
    @classmethod
    def _split_command(cls, v: Any) -> Any:
        return v.split() if isinstance(v, str) else v

    @field_validator("labels", mode="before")
    @classmethod
    def _label_strings(cls, v: Any) -> Any:
        return NodeSpec._labels_as_strings(v)  # type: ignore[operator]

    @property
    def count(self) -> int:
        return 1 if self.replicas is None else self.replicas


class ControllerSpec(StrictModel):
    """The in-app controller: local per edge site, global in the cloud."""

    entry: str | None = Field(None, description="module:Class of an InAppController "
                                                "(default: edgecloud.InAppController)")
    policy: str | None = Field(None, description="module:Class of a Policy "
                                                 "(default: edgecloud.BasicPolicy)")
    params: dict[str, Any] = {}
    report_interval: float = Field(1.0, gt=0, alias="reportInterval")


class ApplicationSpec(StrictModel):
    python_path: list[str] = Field([], alias="pythonPath")
    controller: ControllerSpec | None = None
    components: list[ComponentSpec] = Field(min_length=1)


class Application(StrictModel):
    api_version: str = Field("edgecloud/v1", alias="apiVersion", pattern=r"^edgecloud/v1$")
    kind: str = Field("Application", pattern=r"^Application$")
    metadata: Metadata
    spec: ApplicationSpec
    _source_dir: Path | None = PrivateAttr(None)

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def source_dir(self) -> Path | None:
        """The directory of the topology file (entries are imported from there)."""
        return self._source_dir

    def component(self, name: str) -> ComponentSpec:
        for c in self.spec.components:
            if c.name == name:
                return c
        raise KeyError(name)


# -- semantics --------------------------------------------------------------------------------
def eligible_sites(selector: str, infra: Infrastructure) -> list[str]:
    if selector == "any":
        return [s.name for s in infra.spec.sites]
    if selector in ("edge", "cloud"):
        return [s.name for s in infra.spec.sites if s.kind == selector]
    return [s.name for s in infra.spec.sites if s.name == selector]


def matches(labels: dict[str, str], selector: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def validate_application(app: Application, infra: Infrastructure | None = None,
                         source_dir: Path | None = None,
                         check_entries: bool = True) -> list[tuple[str, str]]:
    """Every semantic problem as (path in the file, message); empty when valid."""
    problems: list[tuple[str, str]] = []
    comps = app.spec.components
    names = [c.name for c in comps]
    seen: dict[str, int] = {}
    for i, c in enumerate(comps):
        where = f"spec.components[{i}]"
        if c.name in seen:
            problems.append((f"{where}.name", f"component name {c.name!r} already used by "
                                              f"spec.components[{seen[c.name]}]"))
        seen.setdefault(c.name, i)
        if (c.entry is None) == (c.command is None):
            problems.append((where, "give exactly one of `entry` (module:Class) or `command`"))
        if c.entry is not None and (":" not in c.entry or c.entry.count(":") != 1):
            problems.append((f"{where}.entry", f"expected 'module:Class', got {c.entry!r}"))
        if c.replicas is not None and c.per_node is not None:
            problems.append((where, "`replicas` and `perNode` exclude each other"))
        for j, target in enumerate(c.connections):
            if target not in names:
                problems.append((f"{where}.connections[{j}]",
                                 f"unknown component {target!r} (components: "
                                 f"{', '.join(names)})"))
            elif target == c.name:
                problems.append((f"{where}.connections[{j}]", "a component cannot connect to "
                                                              "itself"))
    if infra is not None:
        problems += _infra_problems(app, infra)
    if check_entries:
        problems += _entry_problems(app, source_dir)
    return problems


def _infra_problems(app: Application, infra: Infrastructure) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    site_names = [s.name for s in infra.spec.sites]
    for i, c in enumerate(app.spec.components):
        where = f"spec.components[{i}]"
        sites = eligible_sites(c.site, infra)
        if not sites:
            problems.append((f"{where}.site", f"unknown site {c.site!r}: expected edge, cloud, "
                                              f"any or one of {', '.join(site_names)}"))
            continue
        selector = {**c.labels, **(c.per_node.labels if c.per_node else {})}
        nodes = [n for s in sites for n in infra.site(s).nodes if matches(n.labels, selector)]
        if not nodes:
            field = "perNode.labels" if c.per_node and c.per_node.labels else "labels"
            problems.append((f"{where}.{field}", f"no node at site(s) {', '.join(sites)} has "
                                                 f"labels {selector}"))
            continue
        need = c.resources
        for attr, unit in (("cpu", ""), ("memory", " bytes"), ("gpu", "")):
            largest = max(nodes, key=lambda n, a=attr: getattr(n.resources, a))
            have = getattr(largest.resources, attr)
            if getattr(need, attr) > have:
                problems.append((f"{where}.resources.{attr}",
                                 f"no eligible node could ever hold {attr} "
                                 f"{getattr(need, attr):g}{unit} (largest: {largest.name} "
                                 f"with {have:g}{unit})"))
    return problems


def _entry_problems(app: Application, source_dir: Path | None) -> list[tuple[str, str]]:
    """Entries must name an existing class; the module is parsed, not executed."""
    problems: list[tuple[str, str]] = []
    paths = [str(source_dir)] if source_dir else []
    paths += [str((source_dir or Path()) / p) for p in app.spec.python_path]
    targets = [(f"spec.components[{i}].entry", c.entry)
               for i, c in enumerate(app.spec.components) if c.entry and ":" in c.entry]
    ctrl = app.spec.controller
    if ctrl is not None:
        targets += [(f"spec.controller.{k}", v) for k, v in (("entry", ctrl.entry),
                                                              ("policy", ctrl.policy)) if v]
    for where, entry in targets:
        problem = entry_problem(entry, paths)
        if problem:
            problems.append((where, problem))
    return problems


def entry_problem(entry: str, paths: list[str]) -> str | None:
    module, _, cls = entry.partition(":")
    saved = list(sys.path)
    sys.path[:0] = paths
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:
        return f"cannot find module {module!r} ({exc}); searched {', '.join(paths) or 'sys.path'}"
    finally:
        sys.path[:] = saved
    if spec is None:
        return (f"cannot find module {module!r} in {', '.join(paths) or 'sys.path'} (the "
                "topology file's directory and spec.pythonPath)")
    origin = spec.origin
    if origin and origin.endswith(".py"):
        try:
            tree = ast.parse(Path(origin).read_text())
        except (OSError, SyntaxError) as exc:
            return f"module {module!r} ({origin}) cannot be parsed: {exc}"
        defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
        imported = {a.asname or a.name for n in ast.walk(tree)
                    if isinstance(n, ast.ImportFrom | ast.Import) for a in n.names}
        if cls not in defined | imported:
            return f"module {module!r} ({origin}) has no class {cls!r}"
    return None


def load_application(path: str | Path, infra: Infrastructure | None = None,
                     check_entries: bool = True) -> Application:
    """Read and validate a topology file; raises FileValidationError listing every problem."""
    p = Path(path)
    data = read_yaml(p)
    if isinstance(data, dict) and data.get("kind") not in (None, "Application"):
        raise FileValidationError(str(p), [("kind", f"expected 'Application', got "
                                                    f"{data.get('kind')!r}")])
    app = load_model(p, Application, data)
    source = p.resolve().parent
    problems = validate_application(app, infra, source, check_entries)
    if problems:
        raise FileValidationError(str(p), problems)
    app._source_dir = source
    return app
