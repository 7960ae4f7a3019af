"""Check the shape of the `edgecloud` package: module size, layering, two-module cycles.

    python tools/check_structure.py [ROOT]     (ROOT: the folder holding edgecloud/; default:
                                                this repository)

Exits 1 with one line per finding, 0 when the tree is clean. The rules (DESIGN.md,
"Dependencies point downwards only"):

- no module under edgecloud/ has more than MAX_LINES lines;
- resource/ imports nothing of platform/, application/ or cli/;
- application/ imports nothing of platform/ or cli/;
- ml/ imports only ml/, the application SDK (application.sdk, application.policy) and the
  shared top-level modules (edgecloud/errors.py, log.py, ...): nothing of platform/, cli/,
  resource/ or the rest of application/;
- nothing outside cli/ imports edgecloud.cli;
- no two modules import each other at module level.

Layering counts every import of a module: at module level, under `if TYPE_CHECKING:`
(a type dependency is a dependency) and inside functions (a lazy import is one too). The
cycle rule counts only what runs when the module is imported: module-level imports outside
`if TYPE_CHECKING:`; `from pkg import name` counts as importing `pkg.name` when that is a
module, else `pkg`. Only the standard library is used (`ast`).
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

MAX_LINES = 500
PACKAGE = "edgecloud"


@dataclass(frozen=True)
class Import:
    """One import statement's target module, as found in a module's source."""

    target: str
    line: int
    module_level: bool  # not inside a function or class body
    type_only: bool  # under `if TYPE_CHECKING:`

    @property
    def at_import_time(self) -> bool:
        """Whether it runs when the importing module is imported (what makes cycles)."""
        return self.module_level and not self.type_only


@dataclass(frozen=True)
class Module:
    name: str  # dotted, e.g. edgecloud.resource.wan
    path: Path
    is_package: bool  # an __init__.py


def find_modules(root: Path) -> dict[str, Module]:
    """Every module of the package under `root` by dotted name."""
    out: dict[str, Module] = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        out[".".join(parts)] = Module(".".join(parts), path, is_package)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _statements(body: list[ast.stmt], type_only: bool = False, top: bool = True
                ) -> list[tuple[ast.Import | ast.ImportFrom, bool, bool]]:
    """Every import statement in `body`, with whether it runs at module level (not in a
    function or class body) and whether it is under `if TYPE_CHECKING:`."""
    out: list[tuple[ast.Import | ast.ImportFrom, bool, bool]] = []
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            out.append((node, top, type_only))
        elif isinstance(node, ast.If):
            out += _statements(node.body, type_only or _is_type_checking(node.test), top)
            out += _statements(node.orelse, type_only, top)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            out += _statements(node.body, type_only, top=False)
        else:  # try/with/for/while/match blocks run where they stand
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                for block in getattr(node, field, None) or []:
                    if isinstance(block, ast.ExceptHandler | ast.match_case):
                        out += _statements(block.body, type_only, top)
                    else:
                        out += _statements([block], type_only, top)
    return out


def _resolve(module: Module, node: ast.ImportFrom) -> str:
    """The absolute module name of a `from ... import` (relative ones included)."""
    if not node.level:
        return node.module or ""
    base = module.name.split(".")
    if not module.is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def module_imports(module: Module, modules: dict[str, Module]) -> list[Import]:
    """The modules of the package that `module` imports, anywhere in it."""
    tree = ast.parse(module.path.read_text(encoding="utf-8"), str(module.path))
    out: list[Import] = []
    for node, top, type_only in _statements(tree.body):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = _resolve(module, node)
            # `from pkg import sub` imports the module pkg.sub when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                       for a in node.names]
        for target in dict.fromkeys(targets):
            if target == PACKAGE or target.startswith(PACKAGE + "."):
                out.append(Import(target, node.lineno, top, type_only))
    return out


LAYERS = ("platform", "resource", "application", "ml", "cli", "embedded", "demos")


def _layer(name: str) -> str:
    """`resource`, `application`, ... for a module of a layer; "" for a top-level module."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else ""


ML_SDK = (f"{PACKAGE}.application.sdk", f"{PACKAGE}.application.policy")
"""What ml may use of application: the SDK, i.e. components and their policies (DESIGN:
"SDK (Component, Context, InAppController and policies)")."""


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layering_problem(source: str, target: str) -> str | None:
    """Why `source` must not import `target`, or None if it may."""
    src, dst = _layer(source), _layer(target)
    if dst == "cli" and src != "cli":
        return "only the CLI imports edgecloud.cli"
    if src == "resource" and dst in ("platform", "application", "cli"):
        return f"resource must not import {dst}"
    if src == "application" and dst in ("platform", "cli"):
        return f"application must not import {dst}"
    if src == "ml" and dst and dst != "ml" and not any(_under(target, m) for m in ML_SDK):
        return "ml imports only ml, the application SDK and the top-level modules"
    return None


def check(root: Path) -> list[str]:
    """Every finding in the tree under `root`, one line each, sorted."""
    modules = find_modules(root)
    findings: list[str] = []
    graph: dict[str, dict[str, int]] = {}
    for name, mod in modules.items():
        where = mod.path.relative_to(root)
        lines = len(mod.path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES:
            findings.append(f"{where}: {lines} lines (more than {MAX_LINES}): split it")
        runtime: dict[str, int] = {}
        for imp in module_imports(mod, modules):
            why = layering_problem(name, imp.target)
            if why:
                findings.append(f"{where}:{imp.line}: upward import of {imp.target} ({why})")
            if imp.at_import_time and imp.target in modules and imp.target != name:
                runtime.setdefault(imp.target, imp.line)
        graph[name] = runtime
    for a in sorted(graph):
        for b, line in sorted(graph[a].items()):
            if a < b and a in graph.get(b, {}):
                findings.append(
                    f"{modules[a].path.relative_to(root)}:{line}: import cycle {a} <-> {b} "
                    f"({modules[b].path.relative_to(root)}:{graph[b][a]})")
    return sorted(findings)


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[1]
    if not (root / PACKAGE).is_dir():
        print(f"{root}: no {PACKAGE}/ package here; pass the folder that holds it",
              file=sys.stderr)
        return 2
    findings = check(root)
    for line in findings:
        print(line)
    if findings:
        print(f"{len(findings)} structure problem(s)", file=sys.stderr)
        return 1
    print("structure OK: module sizes, layering, no two-module import cycles")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
