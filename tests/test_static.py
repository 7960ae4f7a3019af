"""Static checks run inside the test suite, because CI runs exactly `python3 -m pytest -q`:
ruff on every Python tree of the repository, mypy on the package (configured in
pyproject.toml: strict on edgecloud.resource and edgecloud.application).

mypy keeps its incremental cache in the repository's `.mypy_cache` (git-ignored): the
first run on a fresh clone checks edgecloud and the libraries it uses, later runs only
what changed.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUFF_PATHS = ["edgecloud", "tests", "bench", "examples", "tools"]
# Below the suite's per-test timeout (pyproject: 300 s), so a stuck tool is reported here.
TOOL_TIMEOUT_S = 280


def run_tool(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`python3 -m MODULE ARGS` from the repository root (where pyproject.toml configures
    it); fails the test, saying how to install it, when the tool is missing."""
    if importlib.util.find_spec(module) is None:
        pytest.fail(f"{module} is not installed: pip install -e '.[test]'", pytrace=False)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)


def fail_unless_clean(r: subprocess.CompletedProcess[str], command: str) -> None:
    """Fail with the tool's own output, which names every file and line to fix."""
    if r.returncode != 0:
        pytest.fail(f"`{command}` (from the repository root) exited with {r.returncode}:\n"
                    f"{r.stdout}{r.stderr}", pytrace=False)


def test_ruff_is_clean() -> None:
    r = run_tool("ruff", "check", *RUFF_PATHS)
    fail_unless_clean(r, f"ruff check {' '.join(RUFF_PATHS)}")


def test_mypy_is_clean() -> None:
    r = run_tool("mypy", "edgecloud")
    fail_unless_clean(r, "python3 -m mypy edgecloud")
