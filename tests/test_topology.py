"""Topology files: the relay example validates; broken files give clean, located errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgecloud.application.topology import load_application
from edgecloud.cli.main import app as cli
from edgecloud.errors import FileValidationError, UserError
from edgecloud.resource.infra import Infrastructure, load_infrastructure

ROOT = Path(__file__).resolve().parent.parent
RELAY = ROOT / "examples/relay/relay.yaml"
INFRA = ROOT / "examples/infra/ace-testbed.yaml"
HEAD = "apiVersion: edgecloud/v1\nkind: Application\nmetadata: {name: t}\nspec:\n  components:\n"


@pytest.fixture(scope="module")
def infra() -> Infrastructure:
    return load_infrastructure(INFRA)


def write(dir: Path, components: str, head: str = HEAD) -> Path:
    """A topology file next to `mod.py` (classes A and B) with the given components."""
    (dir / "mod.py").write_text("class A:\n    pass\n\n\nclass B:\n    pass\n")
    path = dir / "app.yaml"
    path.write_text(head + textwrap.indent(textwrap.dedent(components), "    "))
    return path


def problems(path: Path, infra: Infrastructure | None = None) -> list[tuple[str, str]]:
    with pytest.raises(FileValidationError) as info:
        load_application(path, infra)
    assert info.value.file == str(path)
    return info.value.problems


def test_relay_validates(infra: Infrastructure) -> None:
    app = load_application(RELAY)
    assert [c.name for c in app.spec.components] == ["sensor", "relay", "sink"]
    assert load_application(RELAY, infra).name == "relay-demo"


BROKEN = {
    "duplicate name": ("""
        - {name: a, entry: "mod:A"}
        - {name: a, entry: "mod:B"}
        """, "spec.components[1].name", "already used by spec.components[0]"),
    "unknown connection target": ("""
        - {name: a, entry: "mod:A", connections: [nowhere]}
        """, "spec.components[0].connections[0]", "unknown component 'nowhere'"),
    "self connection": ("""
        - {name: a, entry: "mod:A", connections: [a]}
        """, "spec.components[0].connections[0]", "cannot connect to itself"),
    "entry and command": ("""
        - {name: a, entry: "mod:A", command: [python, x.py]}
        """, "spec.components[0]", "exactly one of `entry`"),
    "neither entry nor command": ("""
        - {name: a}
        """, "spec.components[0]", "exactly one of `entry`"),
    "bad entry format": ("""
        - {name: a, entry: mod.A}
        """, "spec.components[0].entry", "expected 'module:Class'"),
    "entry module missing": ("""
        - {name: a, entry: "nosuchmodule:A"}
        """, "spec.components[0].entry", "cannot find module 'nosuchmodule'"),
    "entry class missing": ("""
        - {name: a, entry: "mod:Missing"}
        """, "spec.components[0].entry", "has no class 'Missing'"),
    "replicas with perNode": ("""
        - {name: a, entry: "mod:A", replicas: 2, perNode: {}}
        """, "spec.components[0]", "exclude each other"),
    "unknown field": ("""
        - {name: a, entry: "mod:A", colour: red}
        """, "spec.components[0].colour", "unknown field"),
    "bad site spelling": ("""
        - {name: a, entry: "mod:A", site: Edge_1}
        """, "spec.components[0].site", "expected edge, cloud, any or a site name"),
    "reserved name controller": ("""
        - {name: controller, entry: "mod:A"}
        """, "spec.components[0].name", "'controller' is reserved for the in-app controller"),
    "bad resources": ("""
        - {name: a, entry: "mod:A", resources: {cpu: lots}}
        """, "spec.components[0].resources.cpu", ""),
}
WITH_INFRA = {
    "unknown site": ("""
        - {name: a, entry: "mod:A", site: ec-9}
        """, "spec.components[0].site", "unknown site 'ec-9'"),
    "labels matching no node": ("""
        - {name: a, entry: "mod:A", labels: {lidar: "true"}}
        """, "spec.components[0].labels", "no node at site(s)"),
    "perNode labels matching no node": ("""
        - {name: a, entry: "mod:A", site: cloud, perNode: {labels: {camera: "true"}}}
        """, "spec.components[0].perNode.labels", "no node at site(s) cloud"),
    "resources no node can hold": ("""
        - {name: a, entry: "mod:A", site: edge, resources: {cpu: 8}}
        """, "spec.components[0].resources.cpu",
        "no node at site(s) ec-1, ec-2, ec-3 has cpu >= 8 (largest: ec-1-pc has 4)"),
    "memory no camera node can hold": ("""
        - {name: a, entry: "mod:A", perNode: {labels: {camera: "true"}}, resources: {memory: 6Gi}}
        """, "spec.components[0].resources.memory",
        "with labels {'camera': 'true'} has memory >= 6.0 GiB (largest: ec-1-rpi1 has 4.0 GiB)"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_file(case: str, tmp_path: Path) -> None:
    components, where, message = BROKEN[case]
    found = problems(write(tmp_path, components))
    assert any(p == where and message in m for p, m in found), found


@pytest.mark.parametrize("case", sorted(WITH_INFRA))
def test_broken_against_infra(case: str, tmp_path: Path, infra: Infrastructure) -> None:
    components, where, message = WITH_INFRA[case]
    path = write(tmp_path, components)
    load_application(path)  # fine without an infrastructure
    found = problems(path, infra)
    assert any(p == where and message in m for p, m in found), found


def test_wrong_kind(tmp_path: Path) -> None:
    head = HEAD.replace("kind: Application", "kind: Infrastructure")
    assert problems(write(tmp_path, '- {name: a, entry: "mod:A"}\n', head)) == [
        ("kind", "expected 'Application', got 'Infrastructure'")]


def test_yaml_syntax_error(tmp_path: Path) -> None:
    path = write(tmp_path, '- {name: a, entry: "mod:A"\n')
    with pytest.raises(UserError, match=r"app.yaml: not valid YAML at line \d+, column \d+"):
        load_application(path)


def test_several_errors_together(tmp_path: Path, infra: Infrastructure) -> None:
    path = write(tmp_path, """
        - {name: a, entry: "mod:A", connections: [ghost], site: mars}
        - {name: a, command: [run]}
        - {name: c, entry: "mod:Nope", replicas: 1, perNode: {}}
        """)
    with pytest.raises(FileValidationError) as info:
        load_application(path, infra)
    where = {p for p, _ in info.value.problems}
    assert {"spec.components[0].connections[0]", "spec.components[1].name",
            "spec.components[2]", "spec.components[2].entry", "spec.components[0].site"} <= where
    assert str(info.value).startswith(f"{path}: {len(info.value.problems)} problem(s)")


def test_cli_validate_exits_2_without_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, '- {name: a, entry: "mod:A", connections: [ghost]}\n')
    r = CliRunner().invoke(cli, ["app", "validate", str(path)], env={"COLUMNS": "200"})
    assert r.exit_code == 2
    assert "Traceback" not in r.output
    assert "spec.components[0].connections[0]" in r.output
    assert isinstance(r.exception, SystemExit)
    ok = CliRunner().invoke(cli, ["app", "validate", str(RELAY), "--infra", str(INFRA)])
    assert ok.exit_code == 0 and "ok: relay-demo" in ok.output


def test_cli_plan_prints_instances() -> None:
    r = CliRunner().invoke(cli, ["app", "plan", str(RELAY), "--infra", str(INFRA)],
                           env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    for name in ["sink-0", "relay-0"] + [f"sensor-{i}" for i in range(9)]:
        assert name in r.output
    assert "cc-gpu" in r.output and "ec-1-rpi1" in r.output


def test_schema_and_semantic_errors_are_listed_together(tmp_path: Path) -> None:
    path = write(tmp_path, """
        - {name: a, entry: "mod:A", colour: red}
        - {name: b, entry: "mod:B", connections: [ghost, a]}
        - {name: b, entry: "mod:Missing"}
        """)
    found = problems(path)
    assert [p for p, _ in found] == ["spec.components[0].colour",
                                     "spec.components[1].connections[0]",
                                     "spec.components[2].entry", "spec.components[2].name"]
    assert "(components: a, b, b)" in found[1][1]


def test_entries_resolve_through_python_path_without_running_the_module(tmp_path: Path
                                                                        ) -> None:
    pkg = tmp_path / "src" / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    (pkg / "comps.py").write_text("import torch  # not installed here\n\n\n"
                                  "class Detector:\n    pass\n")
    (tmp_path / "made.py").write_text("def make():\n    return type('Made', (), {})\n\n\n"
                                      "Made = make()\nNotAClass = 3\n")
    head = HEAD.replace("spec:\n", "spec:\n  pythonPath: [src, lib]\n  controller: "
                                    "{entry: 'made:Gone'}\n")
    path = write(tmp_path, """
        - {name: a, entry: "pkg.comps:Detector"}
        - {name: b, entry: "made:Made"}
        - {name: c, entry: "made:NotAClass"}
        - {name: d, entry: "pkg.comps:Classifier"}
        """, head)
    found = dict(problems(path))
    assert set(found) == {"spec.pythonPath[1]", "spec.components[2].entry",
                          "spec.components[3].entry", "spec.controller.entry"}
    assert found["spec.pythonPath[1]"] == f"directory {tmp_path / 'lib'} not found"
    assert found["spec.components[2].entry"].endswith("has no class 'NotAClass'")
    assert "has no class 'Classifier' (classes: Detector)" in found["spec.components[3].entry"]
    assert "has no class 'Gone'" in found["spec.controller.entry"]


def test_missing_module_names_the_search_path(tmp_path: Path) -> None:
    path = write(tmp_path, '- {name: a, entry: "nosuchmodule:A"}\n')
    [(where, message)] = problems(path)
    assert where == "spec.components[0].entry"
    assert f"cannot find module 'nosuchmodule' in {tmp_path}" in message


def test_source_dir_is_kept() -> None:
    assert load_application(RELAY).source_dir == RELAY.parent
