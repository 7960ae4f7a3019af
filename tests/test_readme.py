"""README's code runs: every snippet a user would copy is executed here.

- Python snippets compile and their imports resolve (the names they promise exist); the
  ML walkthroughs that need data and minutes run in full under `-m slow`.
- The relay application in README (its Python and YAML, not the example directory's) is
  deployed on an embedded infrastructure by running README's shell commands one after
  another, as a user pasting them would, and the sink really receives every reading.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.support import LOCAL_INFRA, ROOT, cli, wait_for

README = ROOT / "README.md"


@dataclass
class Snippet:
    lang: str
    text: str
    line: int  # where the block starts in README.md, for failure messages
    heading: str


def snippets(lang: str | None = None) -> list[Snippet]:
    """Fenced code blocks of README.md, with the heading they appear under."""
    out: list[Snippet] = []
    heading, block, start, fence_lang = "", None, 0, ""
    for no, line in enumerate(README.read_text().splitlines(), 1):
        if block is None and line.startswith("#"):
            heading = line.lstrip("# ").strip()
        m = re.match(r"^```(\w*)\s*$", line)
        if m and block is None:
            block, start, fence_lang = [], no, m.group(1)
        elif line.startswith("```") and block is not None:
            out.append(Snippet(fence_lang, "\n".join(block) + "\n", start, heading))
            block = None
        elif block is not None:
            block.append(line)
    return [s for s in out if lang is None or s.lang == lang]


def _imports_of(tree: ast.Module) -> str:
    """The import statements of a snippet, as source."""
    nodes = [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
    return "\n".join(ast.unparse(n) for n in nodes)


def test_readme_has_the_snippets_this_test_relies_on() -> None:
    langs = [s.lang for s in snippets()]
    assert langs.count("python") >= 4 and langs.count("bash") >= 2 and "yaml" in langs


@pytest.mark.parametrize("snippet", snippets("python"),
                         ids=lambda s: f"L{s.line}-{s.heading[:30].replace(' ', '_')}")
def test_python_snippet_compiles_and_its_imports_resolve(snippet: Snippet) -> None:
    try:
        tree = ast.parse(snippet.text, filename=f"README.md:{snippet.line}")
    except SyntaxError as exc:
        pytest.fail(f"README.md line {snippet.line + (exc.lineno or 0)}: {exc.msg}")
    exec(compile(_imports_of(tree), f"README.md:{snippet.line}", "exec"), {})


def _relay_snippets() -> tuple[Snippet, Snippet]:
    py = next(s for s in snippets("python") if "class Sensor(Component)" in s.text)
    yml = next(s for s in snippets("yaml") if "relay_app:Sensor" in s.text)
    return py, yml


def test_readme_relay_matches_the_shipped_example() -> None:
    """README's relay is a faithful short form of examples/relay (same names, same wiring)."""
    py, yml = _relay_snippets()
    doc = yaml.safe_load(yml.text)
    shipped = yaml.safe_load((ROOT / "examples/relay/relay.yaml").read_text())
    assert doc["metadata"] == shipped["metadata"]
    wiring = [(c["name"], c["entry"], c["site"], c.get("connections", []))
              for c in doc["spec"]["components"]]
    assert wiring == [(c["name"], c["entry"], c["site"], c.get("connections", []))
                      for c in shipped["spec"]["components"]]
    example = (ROOT / "examples/relay/relay_app.py").read_text()
    for cls in re.findall(r"^class (\w+)\(Component\)", py.text, re.M):
        assert f"class {cls}(Component)" in example


TOUR_SECTIONS = ("Quick tour", "Write and deploy an application")


def _tour_commands() -> list[list[str]]:
    """README's `edgecloud ...` shell lines of the tour sections, in order, comments
    stripped (other sections' commands run demos and benchmarks: minutes each)."""
    cmds = []
    for s in snippets("bash"):
        if s.heading not in TOUR_SECTIONS:
            continue
        for line in s.text.splitlines():
            line = line.split("  #", 1)[0].strip()
            if line.startswith("edgecloud "):
                cmds.append(shlex.split(line)[1:])
    return cmds


def test_readme_tour_commands_are_known_to_the_cli() -> None:
    """Every README command line parses (its --help works): no renamed command or flag."""
    seen = set()
    for argv in _tour_commands():
        words = [w for w in argv if not w.startswith("-")][:2]
        key = tuple(words)
        if key in seen:
            continue
        seen.add(key)
        r = cli(*words[:1], "--help", check=False) if words[0] in ("up", "down", "status") \
            else cli(*words, "--help", check=False)
        assert r.returncode == 0, f"`edgecloud {' '.join(words)} --help`: {r.stderr}"
        flags = [w.split("=")[0] for w in argv if w.startswith("--")]
        for flag in flags:
            assert flag in r.stdout, f"README uses `{flag}` with `edgecloud " \
                                     f"{' '.join(words)}`, which its --help does not list"


def test_readme_tour_deploys_readme_relay_end_to_end(tmp_path: Path) -> None:
    """Paste README's commands into a shell: they bring up the local infrastructure,
    change and cut a link, move a file across the WAN, and deploy README's relay (its own
    code, written from README), whose sink receives every sensor reading."""
    py, yml = _relay_snippets()
    app_dir = tmp_path / "examples/relay"
    app_dir.mkdir(parents=True)
    (app_dir / "relay_app.py").write_text(textwrap.dedent(py.text))
    (app_dir / "relay.yaml").write_text(yml.text)
    (tmp_path / "examples/infra").mkdir()
    (tmp_path / "examples/infra/local.yaml").write_text(LOCAL_INFRA.read_text())
    (tmp_path / "model.bin").write_bytes(b"weights" * 1000)
    home = tmp_path / "home"
    key = ""

    def run(argv: list[str]) -> str:
        nonlocal key
        argv = [a.replace("examples/", f"{tmp_path}/examples/") for a in argv]
        argv = [str(tmp_path / a) if a in ("model.bin",) else a for a in argv]
        if argv[:2] == ["files", "get"]:
            argv[2] = f"cloud:{key}"
            argv[argv.index("-o") + 1] = str(tmp_path / "fetched.bin")
        if argv[:2] == ["app", "logs"]:
            argv = [a for a in argv if a not in ("-f", "--follow")]  # it would never end
        if argv[0] == "up":
            argv += ["--heartbeat", "1"]
        out = cli(*argv, "--home", str(home)).stdout
        if argv[:2] == ["files", "put"]:
            key = json.loads(out[out.index("{"):])["key"]
        return out

    commands = _tour_commands()
    assert commands[0][0] == "up" and ["down"] in commands
    try:
        for argv in commands:
            if argv == ["down"]:
                continue  # after the application part below
            out = run(argv)
            if argv[:2] == ["app", "deploy"]:
                wait_for(lambda: _sink_total(home) >= 200, 60, "200 readings at the sink")
            if argv[:2] == ["app", "delete"]:
                assert "relay-demo" not in cli("app", "list", "--home", str(home)).stdout
            del out
        assert (tmp_path / "fetched.bin").read_bytes() == b"weights" * 1000
    finally:
        cli("down", "--home", str(home), check=False)


def _sink_total(home: Path) -> float:
    r = cli("app", "status", "relay-demo", "--home", str(home), "--json", check=False)
    if r.returncode != 0:
        return 0.0
    total = 0.0
    for inst in json.loads(r.stdout)["instances"]:
        for family in (inst.get("metrics") or {}).get("metrics", []):
            for name, _labels, value in family.get("samples", []):
                if name == "received_total":
                    total += value
    return total


@pytest.mark.slow
@pytest.mark.parametrize("snippet", [s for s in snippets("python")
                                     if "run_simulation(" in s.text],
                         ids=lambda s: f"L{s.line}")
def test_python_walkthrough_runs(snippet: Snippet) -> None:
    exec(compile(snippet.text, f"README.md:{snippet.line}", "exec"), {})
