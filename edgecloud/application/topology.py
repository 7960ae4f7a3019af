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
import re
import subprocess
import sys
from operator import attrgetter
from pathlib import Path
from typing import Any

from pydantic import Field, PrivateAttr, ValidationError, field_validator

from edgecloud.errors import FileValidationError
from edgecloud.resource.infra import (
    NAME_RE,
    Cpu,
    Infrastructure,
    Memory,
    Metadata,
    Name,
    NodeSpec,
)
from edgecloud.schema import StrictModel, load_model, read_yaml, validation_problems
from edgecloud.units import format_bytes


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
        return NodeSpec._labels_as_strings(v)


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
        return NodeSpec._labels_as_strings(v)

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
Problems = list[tuple[str, str]]
SITE_KEYWORDS = ("edge", "cloud", "any")
RESERVED_COMPONENT = "controller"
"""The in-app controller's component name: its instances are `controller-<site>`."""


def eligible_sites(selector: str, infra: Infrastructure) -> list[str]:
    """Names of the sites a component's `site` selector allows."""
    if selector == "any":
        return [s.name for s in infra.spec.sites]
    if selector in ("edge", "cloud"):
        return [s.name for s in infra.spec.sites if s.kind == selector]
    return [s.name for s in infra.spec.sites if s.name == selector]


def matches(labels: dict[str, str], selector: dict[str, str]) -> bool:
    """A node selector matches when every key has the same value on the node."""
    return all(labels.get(k) == v for k, v in selector.items())


def validate_application(app: Application, infra: Infrastructure | None = None,
                         source_dir: Path | None = None,
                         check_entries: bool = True) -> Problems:
    """Every semantic problem as (path in the file, message); empty when valid.

    Without `infra`, only what needs no infrastructure (names, connections, entry/command,
    replicas/perNode, site spelling, entries importable from `source_dir`).
    """
    comps = list(enumerate(app.spec.components))
    return _semantic_problems(comps, [c.name for c in app.spec.components],
                              app.spec.python_path, app.spec.controller, infra, source_dir,
                              check_entries)


def _semantic_problems(comps: list[tuple[int, ComponentSpec]], names: list[str],
                       python_path: list[str], controller: ControllerSpec | None,
                       infra: Infrastructure | None, source_dir: Path | None,
                       check_entries: bool) -> Problems:
    """The checks of `validate_application` on the components that passed the schema
    (`names`: every component name in the file, so connections to a broken one resolve)."""
    problems = _structure_problems(comps, names)
    if infra is not None:
        problems += _infra_problems(comps, infra)
    if check_entries:
        problems += _entry_problems(comps, python_path, controller, source_dir)
    return problems


def _structure_problems(comps: list[tuple[int, ComponentSpec]], names: list[str]) -> Problems:
    problems: Problems = []
    first: dict[str, int] = {}
    for i, c in comps:
        where = f"spec.components[{i}]"
        if c.name in first:
            problems.append((f"{where}.name", f"component name {c.name!r} already used by "
                                              f"spec.components[{first[c.name]}]"))
        first.setdefault(c.name, i)
        if c.name == RESERVED_COMPONENT:
            problems.append((f"{where}.name", f"{RESERVED_COMPONENT!r} is reserved for the "
                                              "in-app controller (configure it under "
                                              "spec.controller); rename this component"))
        if (c.entry is None) == (c.command is None):
            problems.append((where, "give exactly one of `entry` (module:Class) or `command`"))
        if c.entry is not None and not _ENTRY_RE.match(c.entry):
            problems.append((f"{where}.entry", f"expected 'module:Class' such as "
                                               f"'relay_app:Relay', got {c.entry!r}"))
        if c.command is not None and not c.command:
            problems.append((f"{where}.command", "expected a program and its arguments, "
                                                 "e.g. [python, worker.py]"))
        if c.replicas is not None and c.per_node is not None:
            problems.append((where, "`replicas` and `perNode` exclude each other: perNode "
                                    "runs one instance on every matching node"))
        if c.site not in SITE_KEYWORDS and not NAME_RE.match(c.site):
            problems.append((f"{where}.site", f"expected edge, cloud, any or a site name, got "
                                              f"{c.site!r}"))
        for j, target in enumerate(c.connections):
            if target not in names:
                problems.append((f"{where}.connections[{j}]",
                                 f"unknown component {target!r} (components: "
                                 f"{', '.join(names)})"))
            elif target == c.name:
                problems.append((f"{where}.connections[{j}]", "a component cannot connect to "
                                                              "itself"))
    return problems


def _infra_problems(comps: list[tuple[int, ComponentSpec]], infra: Infrastructure) -> Problems:
    """Sites that exist, selectors that match a node, resources some node could hold."""
    problems: Problems = []
    site_names = [s.name for s in infra.spec.sites]
    for i, c in comps:
        where = f"spec.components[{i}]"
        sites = eligible_sites(c.site, infra)
        if not sites:
            problems.append((f"{where}.site", f"unknown site {c.site!r}: expected edge, cloud, "
                                              f"any or one of {', '.join(site_names)}"))
            continue
        selector = {**c.labels, **(c.per_node.labels if c.per_node else {})}
        nodes = [n for s in sites for n in infra.site(s).nodes if matches(n.labels, selector)]
        at = f"at site(s) {', '.join(sites)}"
        if not nodes:
            field = "perNode.labels" if c.per_node and c.per_node.labels else "labels"
            problems.append((f"{where}.{field}", f"no node {at} has labels {selector}"))
            continue
        if selector:
            at += f" with labels {selector}"
        for attr in ("cpu", "memory", "gpu"):
            need = getattr(c.resources, attr)
            largest = max(nodes, key=attrgetter(f"resources.{attr}"))
            have = getattr(largest.resources, attr)
            if need > have:
                problems.append((f"{where}.resources.{attr}",
                                 f"no node {at} has {attr} >= {_qty(attr, need)} (largest: "
                                 f"{largest.name} has {_qty(attr, have)})"))
    return problems


def _qty(attr: str, value: float) -> str:
    return format_bytes(value) if attr == "memory" else f"{value:g}"


_ENTRY_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


def search_path(python_path: list[str], source_dir: Path | None) -> list[Path]:
    """Where entries are imported from: the topology file's directory, then
    spec.pythonPath (relative to that directory) — as the runner does."""
    base = source_dir or Path.cwd()
    return [base, *(base / p for p in python_path)]


def _entry_problems(comps: list[tuple[int, ComponentSpec]], python_path: list[str],
                    controller: ControllerSpec | None, source_dir: Path | None) -> Problems:
    problems: Problems = []
    paths = search_path(python_path, source_dir)
    for j, p in enumerate(paths[1:]):
        if not p.is_dir():
            problems.append((f"spec.pythonPath[{j}]", f"directory {p} not found"))
    targets = [(f"spec.components[{i}].entry", c.entry) for i, c in comps
               if c.entry and _ENTRY_RE.match(c.entry)]
    if controller is not None:
        targets += [(f"spec.controller.{k}", v) for k, v in (("entry", controller.entry),
                                                              ("policy", controller.policy))
                    if v]
    for where, entry in targets:
        if not _ENTRY_RE.match(entry):
            problems.append((where, f"expected 'module:Class', got {entry!r}"))
        elif problem := entry_problem(entry, paths):
            problems.append((where, problem))
    return problems


def entry_problem(entry: str, paths: list[Path]) -> str | None:
    """Why `module:Class` cannot be loaded from `paths` (then sys.path), or None.

    The module is found and parsed, not executed: validating a topology must not run a
    component's imports (a DNN framework, a camera driver) nor need them installed on the
    machine that validates. Only when the source cannot tell (the name is assigned, or
    star-imported, at module level) is the module imported, in a child process.
    """
    module, _, cls = entry.partition(":")
    searched = ", ".join(str(p) for p in paths)
    origin = _module_file(module, paths)
    if origin is None:
        return (f"cannot find module {module!r} in {searched} (the topology file's directory "
                "and spec.pythonPath) nor in the installed packages")
    if origin.suffix != ".py":
        return None  # an extension module or a namespace package: nothing to parse
    try:
        tree = ast.parse(origin.read_text(), str(origin))
    except (OSError, SyntaxError, ValueError) as exc:
        return f"module {module!r} ({origin}) cannot be parsed: {exc}"
    classes, imported, assigned, star = _top_level_names(tree)
    if cls in classes or cls in imported:
        return None
    if cls in assigned or star:
        return _import_check(module, cls, paths, origin)
    listed = f" (classes: {', '.join(sorted(classes))})" if classes else ""
    return f"module {module!r} ({origin}) has no class {cls!r}{listed}"


def _module_file(module: str, paths: list[Path]) -> Path | None:
    """The source of `module` under `paths`, else as installed; parents of a dotted
    module found under `paths` are not imported (no code runs)."""
    parts = module.split(".")
    for base in paths:
        stem = base.joinpath(*parts)
        for candidate in (stem.with_suffix(".py"), stem / "__init__.py"):
            if candidate.is_file():
                return candidate
    try:
        spec = importlib.util.find_spec(module)  # installed packages (e.g. edgecloud)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    return Path(spec.origin) if spec.origin and spec.origin != "built-in" else Path(module)


def _top_level_names(tree: ast.Module) -> tuple[set[str], set[str], set[str], bool]:
    """Classes defined, names imported, names assigned, any star import — at module level
    (including inside top-level if/try blocks, e.g. optional imports)."""
    classes: set[str] = set()
    imported: set[str] = set()
    assigned: set[str] = set()
    star = False
    todo: list[ast.stmt] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.ClassDef):
            classes.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for a in node.names:
                star |= a.name == "*"
                imported.add(a.asname or a.name.split(".")[0])
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            assigned |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.If | ast.Try):
            todo += node.body + node.orelse
            todo += [s for h in getattr(node, "handlers", []) for s in h.body]
    return classes, imported, assigned, star


def _import_check(module: str, cls: str, paths: list[Path], origin: Path) -> str | None:
    code = ("import importlib, inspect, sys\n"
            "sys.path[:0] = sys.argv[3:]\n"
            "m = importlib.import_module(sys.argv[1])\n"
            "print(inspect.isclass(getattr(m, sys.argv[2], None)))\n")
    try:
        r = subprocess.run([sys.executable, "-c", code, module, cls, *map(str, paths)],
                           capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return f"importing module {module!r} ({origin}) took more than 60 s"
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["failed"])[-1]
        return f"module {module!r} ({origin}) cannot be imported: {last}"
    if r.stdout.strip() != "True":
        return f"module {module!r} ({origin}) has no class {cls!r}"
    return None


def load_application(path: str | Path, infra: Infrastructure | None = None,
                     check_entries: bool = True) -> Application:
    """Read and validate a topology file: schema, then semantics (against `infra` when
    given). Raises FileValidationError listing every problem — schema and semantic ones
    together — with its path in the file. The result remembers its directory
    (`source_dir`), from which the runtime imports entries."""
    p = Path(path)
    data = read_yaml(p)
    if isinstance(data, dict) and data.get("kind") not in (None, "Application"):
        raise FileValidationError(str(p), [("kind", f"expected 'Application', got "
                                                    f"{data.get('kind')!r}")])
    if not isinstance(data, dict):
        load_model(p, Application, data)  # raises the "expected a mapping" problem
    source = p.resolve().parent
    try:
        app: Application | None = Application.model_validate(data)
    except ValidationError as exc:
        app, schema = None, validation_problems(exc)
    if app is not None:
        problems = validate_application(app, infra, source, check_entries)
    else:
        # Keep going on the components that are well-formed, so that one typo does not
        # hide the other problems of the file.
        comps, names, python_path, controller = _salvage(data)
        problems = schema + _semantic_problems(comps, names, python_path, controller, infra,
                                               source, check_entries)
    if problems:
        raise FileValidationError(str(p), sorted(problems, key=_path_order))
    assert app is not None
    app._source_dir = source
    return app


def _salvage(data: dict[str, Any]) -> tuple[list[tuple[int, ComponentSpec]], list[str],
                                             list[str], ControllerSpec | None]:
    """The parts of an invalid file that are valid on their own."""
    spec_value = data.get("spec")
    spec: dict[str, Any] = spec_value if isinstance(spec_value, dict) else {}
    raw_value = spec.get("components")
    raw: list[Any] = raw_value if isinstance(raw_value, list) else []
    comps: list[tuple[int, ComponentSpec]] = []
    names: list[str] = []
    for i, c in enumerate(raw):
        if isinstance(c, dict) and isinstance(c.get("name"), str):
            names.append(c["name"])
        try:
            comps.append((i, ComponentSpec.model_validate(c)))
        except ValidationError as exc:
            # check the rest of it with the bad fields left at their defaults
            bad = {e["loc"][0] for e in exc.errors() if e["loc"]}
            try:
                comps.append((i, ComponentSpec.model_validate(
                    {k: v for k, v in c.items() if k not in bad})))
            except (ValidationError, AttributeError):
                continue
    python_path = spec.get("pythonPath")
    if not (isinstance(python_path, list) and all(isinstance(x, str) for x in python_path)):
        python_path = []
    try:
        controller = (ControllerSpec.model_validate(spec["controller"])
                      if spec.get("controller") is not None else None)
    except ValidationError:
        controller = None
    return comps, names, python_path, controller


def _path_order(problem: tuple[str, str]) -> list[Any]:
    """Problems in file order: spec.components[2] before spec.components[10]."""
    return [int(t) if t.isdigit() else t for t in re.split(r"\[(\d+)\]", problem[0])]
