"""The in-app controller on a real embedded run: reports up, decisions down, per site."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgecloud.application.policy import BasicPolicy
from edgecloud.resource.state import RunState
from tests.support import cli, embedded_run
from tests.test_apps import metric

ROOT = Path(__file__).resolve().parents[1]


def test_basic_policy_thresholds() -> None:
    p = BasicPolicy({}, "component", "ec-1")
    assert (p.alpha, p.beta) == (0.8, pytest.approx(0.1))
    assert p.decide("confidence", 0.85, {}) == "positive"
    assert p.decide("confidence", 0.5, {}) == "escalate"
    assert p.decide("confidence", 0.05, {}) == "drop"
    assert p.decide("confidence", 0.75, {"alpha": 0.7}) == "positive"  # a decision wins


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunState]:
    with embedded_run(tmp_path_factory.mktemp("home")) as state:
        yield state


def test_reports_decisions_and_aggregation(run: RunState) -> None:
    cli("app", "deploy", str(Path(__file__).parent / "apps/ctrl/ctrl.yaml"), "--home",
        str(run.home))

    def status() -> dict[str, Any]:
        return json.loads(cli("app", "status", "ctrl-demo", "--home", str(run.home),
                              "--json").stdout)

    doc = status()
    controllers = sorted((i["name"], i["site"]) for i in doc["instances"]
                         if i["component"] == "controller")
    assert controllers == [("controller-cloud", "cloud"), ("controller-ec-1", "ec-1"),
                           ("controller-ec-2", "ec-2")]
    deadline = time.monotonic() + 40
    workers: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        workers = [i for i in status()["instances"] if i["component"] == "worker"]
        if all(metric(w, "sites_reporting") == 2 and metric(w, "local_reports") > 0
               for w in workers):
            break
        time.sleep(1)
    assert len(workers) == 2
    for w in workers:
        assert metric(w, "alpha") == pytest.approx(0.7)  # from the controller's params
        assert metric(w, "local_reports") > 0  # decisions of its site's local controller
        assert metric(w, "sites_reporting") == 2  # the global view, aggregated per site
        assert metric(w, "positive") == 1.0  # decide() applies alpha 0.7 to 0.75
