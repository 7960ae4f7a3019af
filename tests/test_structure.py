"""tools/check_structure.py: module size, layering and two-module cycles, on small trees
written here and on this repository."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "check_structure.py"


def run_tool(root: Path) -> tuple[int, list[str]]:
    r = subprocess.run([sys.executable, str(TOOL), str(root)], capture_output=True, text=True,
                       timeout=120)
    return r.returncode, r.stdout.splitlines()


def tree(root: Path, files: dict[str, str]) -> Path:
    """A package `edgecloud` under `root` with the given modules (every folder a package)."""
    for rel, text in {"edgecloud/__init__.py": "", **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        for parent in path.relative_to(root).parents:
            if str(parent) != ".":
                (root / parent / "__init__.py").touch()
        path.write_text(text)
    return root


def test_a_clean_tree_passes(tmp_path: Path) -> None:
    root = tree(tmp_path, {
        "edgecloud/errors.py": "class UserError(Exception): ...\n",
        "edgecloud/resource/infra.py": "from edgecloud.errors import UserError\n",
        "edgecloud/application/sdk.py": "from edgecloud.resource import infra\n",
        "edgecloud/application/policy.py": "X = 1\n",
        "edgecloud/platform/api.py": "from edgecloud.application.sdk import *\n",
        "edgecloud/ml/cascade.py": "from edgecloud.application.policy import X\n"
                                   "from edgecloud.application import sdk\n",
        "edgecloud/cli/main.py": "from edgecloud.cli import main\n"
                                 "from edgecloud.platform import api\n",
        "edgecloud/big.py": "x = 1\n" * 500,
    })
    code, out = run_tool(root)
    assert (code, out) == (0, ["structure OK: module sizes, layering, no two-module import "
                               "cycles"])


def test_a_module_over_500_lines_is_named(tmp_path: Path) -> None:
    root = tree(tmp_path, {"edgecloud/resource/big.py": "x = 1\n" * 501})
    code, out = run_tool(root)
    assert code == 1
    assert out == ["edgecloud/resource/big.py: 501 lines (more than 500): split it"]


def test_upward_imports_are_named_with_file_and_line(tmp_path: Path) -> None:
    root = tree(tmp_path, {
        "edgecloud/platform/core.py": "X = 1\n",
        "edgecloud/application/topology.py": "X = 1\n",
        "edgecloud/cli/util.py": "X = 1\n",
        "edgecloud/resource/node.py": "import os\nfrom edgecloud.platform.core import X\n",
        "edgecloud/resource/agent.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                       "    from edgecloud.application import topology\n",
        "edgecloud/application/sdk.py": "def f():\n    from edgecloud.cli import util\n",
        "edgecloud/ml/train.py": "from edgecloud.application.topology import X\n",
        "edgecloud/ml/files.py": "from ..resource import node\n",
        "edgecloud/demos/run.py": "import edgecloud.cli.util\n",
    })
    code, out = run_tool(root)
    assert code == 1
    assert out == [
        "edgecloud/application/sdk.py:2: upward import of edgecloud.cli.util (only the CLI "
        "imports edgecloud.cli)",
        "edgecloud/demos/run.py:1: upward import of edgecloud.cli.util (only the CLI imports "
        "edgecloud.cli)",
        "edgecloud/ml/files.py:1: upward import of edgecloud.resource.node (ml imports only "
        "ml, the application SDK and the top-level modules)",
        "edgecloud/ml/train.py:1: upward import of edgecloud.application.topology (ml imports "
        "only ml, the application SDK and the top-level modules)",
        "edgecloud/resource/agent.py:3: upward import of edgecloud.application.topology "
        "(resource must not import application)",
        "edgecloud/resource/node.py:2: upward import of edgecloud.platform.core (resource "
        "must not import platform)",
    ]


def test_two_module_cycles_count_only_imports_that_run_at_import_time(tmp_path: Path) -> None:
    root = tree(tmp_path, {
        "edgecloud/resource/wan.py": "from edgecloud.resource.wan_shaper import Link\n",
        "edgecloud/resource/wan_shaper.py": "try:\n    from . import wan\nexcept ImportError:\n"
                                            "    pass\n",
        # a TYPE_CHECKING import or one inside a function is no cycle
        "edgecloud/platform/core.py": "from edgecloud.platform.monitor import hooks\n",
        "edgecloud/platform/monitor.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                         "    from edgecloud.platform.core import P\n"
                                         "def hooks():\n"
                                         "    from edgecloud.platform import core\n",
    })
    code, out = run_tool(root)
    assert code == 1
    assert out == ["edgecloud/resource/wan.py:1: import cycle edgecloud.resource.wan <-> "
                   "edgecloud.resource.wan_shaper (edgecloud/resource/wan_shaper.py:2)"]


def test_a_folder_without_the_package_is_refused(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(TOOL), str(tmp_path)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "no edgecloud/ package here" in r.stderr


def test_this_repository_has_the_shape_design_asks_for() -> None:
    code, out = run_tool(ROOT)
    assert code == 0, "\n".join(out)
