"""The import graph's one hard rule checked on the source: nothing under edgecloud/
except the CLI itself imports `edgecloud.cli` (the CLI sits on top of everything)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "edgecloud"


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every import in `tree`, lazy ones inside functions included."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return out


def cli_imports(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent)
        if rel.parts[:2] == ("edgecloud", "cli"):
            continue
        for line, module in imported_modules(ast.parse(path.read_text(), str(path))):
            if module == "edgecloud.cli" or module.startswith("edgecloud.cli."):
                found.append(f"{rel}:{line} imports {module}")
    return sorted(set(found))


def test_nothing_outside_the_cli_imports_the_cli() -> None:
    assert cli_imports(PACKAGE) == []


def test_the_check_sees_lazy_and_from_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "edgecloud"
    (pkg / "demos").mkdir(parents=True)
    (pkg / "cli").mkdir()
    (pkg / "cli" / "main.py").write_text("from edgecloud.cli import common\n")
    (pkg / "demos" / "infra.py").write_text(
        "def deploy():\n    from edgecloud.cli.app_lifecycle import deploy_request\n")
    (pkg / "demos" / "other.py").write_text("from edgecloud import cli\nimport edgecloud.cli\n")
    assert cli_imports(pkg) == [
        "edgecloud/demos/infra.py:2 imports edgecloud.cli.app_lifecycle",
        "edgecloud/demos/infra.py:2 imports edgecloud.cli.app_lifecycle.deploy_request",
        "edgecloud/demos/other.py:1 imports edgecloud.cli",
        "edgecloud/demos/other.py:2 imports edgecloud.cli",
    ]
