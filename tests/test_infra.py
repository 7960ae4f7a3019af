"""Infrastructure files: the shipped examples load; broken files give clean, located errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgecloud.errors import FileValidationError, UserError
from edgecloud.resource.infra import load_infrastructure
from edgecloud.units import parse_cpu, parse_duration, parse_memory, parse_rate

ROOT = Path(__file__).resolve().parents[1]


def test_ace_testbed_matches_the_paper() -> None:
    infra = load_infrastructure(ROOT / "examples/infra/ace-testbed.yaml")
    assert infra.cloud.name == "cloud" and infra.cloud.nodes[0].resources.gpu == 1
    assert [s.name for s in infra.edges] == ["ec-1", "ec-2", "ec-3"]
    for site in infra.edges:
        assert len(site.nodes) == 4
        cams = [n for n in site.nodes if n.labels.get("camera") == "true"]
        assert len(cams) == 3
        assert site.wan is not None
        assert (site.wan.up, site.wan.down, site.wan.delay) == (20e6, 40e6, 0.05)
    assert infra.node_id("ec-1", "ec-1-pc") == "ace-testbed/ec-1/ec-1-pc"


def test_local_example_loads() -> None:
    infra = load_infrastructure(ROOT / "examples/infra/local.yaml")
    assert len(infra.edges) == 2 and all(1 <= len(s.nodes) <= 2 for s in infra.spec.sites)


@pytest.mark.parametrize(("value", "expected"), [
    ("20mbit", 20e6), ("1.5Gbit", 1.5e9), ("500kbit", 5e5), ("2MB/s", 16e6), (1000, 1000.0)])
def test_parse_rate(value: str | int, expected: float) -> None:
    assert parse_rate(value) == pytest.approx(expected)


def test_parse_other_quantities() -> None:
    assert parse_duration("50ms") == pytest.approx(0.05)
    assert parse_duration("2m") == 120
    assert parse_memory("4Gi") == 4 << 30 and parse_memory("512Mi") == 512 << 20
    assert parse_memory("1G") == 10**9
    assert parse_cpu("500m") == 0.5 and parse_cpu(2) == 2
    for bad in ("fast", "-1ms", "3parsecs"):
        with pytest.raises(ValueError):
            parse_duration(bad)


BROKEN: list[tuple[str, str, str]] = [
    # (file body, expected path in the error, expected words)
    ("""apiVersion: edgecloud/v1
kind: Infrastructure
metadata: {name: x}
spec:
  sites:
    - {name: cloud, kind: cloud, nodes: [{name: a}]}
    - name: ec-1
      kind: edge
      wan: {up: 20mbit, delay: fast}
      nodes: [{name: b}]
""", "spec.sites[1].wan.delay", "duration"),
    ("""apiVersion: edgecloud/v1
kind: Infrastructure
metadata: {name: x}
spec:
  sites:
    - {name: ec-1, kind: edge, nodes: [{name: b}]}
""", "spec.sites", "exactly one site of kind cloud"),
    ("""apiVersion: edgecloud/v1
kind: Infrastructure
metadata: {name: x}
spec:
  sites:
    - {name: cloud, kind: cloud, nodes: [{name: a}]}
    - {name: ec-1, kind: edge, nodes: [{name: a}]}
""", "spec.sites[1].nodes[0].name", "already used"),
    ("""apiVersion: edgecloud/v1
kind: Infrastructure
metadata: {name: x}
spec:
  sites:
    - {name: cloud, kind: cloud, nodes: [{name: a, resources: {memory: lots}}]}
""", "spec.sites[0].nodes[0].resources.memory", "memory size"),
    ("""apiVersion: edgecloud/v1
kind: Infrastructure
metadata: {name: x}
spec:
  sites:
    - {name: cloud, kind: cloud, nodez: [{name: a}]}
""", "spec.sites[0].nodez", "unknown field"),
    ("""apiVersion: edgecloud/v1
kind: Infrastructure
metadata: {name: x}
spec:
  sites:
    - {name: cloud, kind: cloud, wan: {delay: 5ms}, nodes: [{name: a}]}
""", "spec.sites[0].wan", "cloud site has no WAN"),
    ("""apiVersion: edgecloud/v1
kind: Infrastructure
metadata: {name: x}
spec:
  sites:
    - {name: cloud, kind: cloud, nodes: [{name: a}]}
    - {name: ec-1, kind: edge, wan: {loss: 2}, nodes: [{name: b}]}
""", "spec.sites[1].wan.loss", "loss probability"),
]


@pytest.mark.parametrize(("body", "path", "words"), BROKEN)
def test_broken_files_name_the_path(tmp_path: Path, body: str, path: str, words: str) -> None:
    f = tmp_path / "infra.yaml"
    f.write_text(body)
    with pytest.raises(FileValidationError) as info:
        load_infrastructure(f)
    text = str(info.value)
    assert str(f) in text
    assert any(p == path and words in m for p, m in info.value.problems), text


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    f = tmp_path / "x.yaml"
    f.write_text("a: [\n")
    with pytest.raises(UserError, match="not valid YAML at line"):
        load_infrastructure(f)
    with pytest.raises(UserError, match="file not found"):
        load_infrastructure(tmp_path / "nope.yaml")


def test_cli_bad_file_exits_2_without_traceback(tmp_path: Path) -> None:
    f = tmp_path / "infra.yaml"
    f.write_text(BROKEN[0][0])
    r = subprocess.run([sys.executable, "-m", "edgecloud.cli.main", "up", str(f), "--home",
                        str(tmp_path / "h")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "spec.sites[1].wan.delay" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_cli_status_without_run_is_clear(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "edgecloud.cli.main", "status", "--home",
                        str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no edgecloud infrastructure is running" in r.stderr
