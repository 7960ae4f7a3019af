"""The in-app controller on a real embedded run: reports up, decisions down, per site."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgecloud.application.policy import BasicPolicy
from edgecloud.resource.state import RunState
from tests.support import cli, delete_apps, metric, wait_for

ROOT = Path(__file__).resolve().parents[1]


def test_basic_policy_thresholds() -> None:
    p = BasicPolicy({}, "component", "ec-1")
    assert (p.alpha, p.beta) == (0.8, pytest.approx(0.1))
    assert p.decide("confidence", 0.85, {}) == "positive"
    assert p.decide("confidence", 0.5, {}) == "escalate"
    assert p.decide("confidence", 0.05, {}) == "drop"
    assert p.decide("confidence", 0.75, {"alpha": 0.7}) == "positive"  # a decision wins


@pytest.fixture(scope="module")
def run(embedded: RunState) -> Iterator[RunState]:
    """The shared embedded run (tests/conftest.py), left without this module's app."""
    delete_apps(embedded.home, "ctrl-demo")
    yield embedded
    delete_apps(embedded.home, "ctrl-demo")


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

    def reporting_workers() -> list[dict[str, Any]] | None:
        workers = [i for i in status()["instances"] if i["component"] == "worker"]
        done = all(metric(w, "sites_reporting") == 2 and metric(w, "local_reports") > 0
                   for w in workers)
        return workers if done else None

    workers = wait_for(reporting_workers, 40, "both workers see both sites' reports", 0.5)
    assert len(workers) == 2
    for w in workers:
        assert metric(w, "alpha") == pytest.approx(0.7)  # from the controller's params
        assert metric(w, "local_reports") > 0  # decisions of its site's local controller
        assert metric(w, "sites_reporting") == 2  # the global view, aggregated per site
        assert metric(w, "positive") == 1.0  # decide() applies alpha 0.7 to 0.75
