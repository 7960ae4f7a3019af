"""Cascade policies (ACE basic and advanced) and the evaluation maths, on exact cases."""

from __future__ import annotations

import math
import time

import pytest

from edgecloud.application.policy import Report
from edgecloud.ml.evaluation import latency_stats, percentile, scores
from edgecloud.ml.inference import AdaptiveCascadePolicy, CascadePolicy


def test_basic_policy_thresholds_and_modes() -> None:
    ecci = CascadePolicy({"mode": "ECCI"}, "component", "ec-1")
    assert ecci.decide("confidence", 0.85, {}) == "positive"
    assert ecci.decide("confidence", 0.5, {}) == "escalate"
    assert ecci.decide("confidence", 0.05, {}) == "drop"
    assert ecci.decide("route", None, {}) == "edge"
    ei = CascadePolicy({"mode": "EI"}, "component", "ec-1")
    assert [ei.decide("confidence", c, {}) for c in (0.85, 0.5, 0.05)] == \
        ["positive", "drop", "drop"]  # EI never forwards
    ci = CascadePolicy({"mode": "CI"}, "component", "ec-1")
    assert ci.decide("route", None, {}) == "cloud"
    with pytest.raises(ValueError, match="unknown cascade mode"):
        CascadePolicy({"mode": "XX"}, "component", "ec-1")


def report(component: str, eil: float, site: str = "ec-1") -> Report:
    return Report(instance=f"{component}-0", component=component, site=site, ts=time.time(),
                  values={"eil_s": eil, "n": 5})


def test_advanced_policy_routes_to_the_faster_and_keeps_alpha_in_range() -> None:
    local = AdaptiveCascadePolicy({"mode": "ECCI+"}, "local", "ec-1")
    glob = AdaptiveCascadePolicy({"mode": "ECCI+"}, "global", "cloud")
    assert local.decisions()["target"] == "edge"  # no estimates yet
    for _ in range(20):
        local.on_report(report("eoc", 0.9))  # the edge classifier is backlogged
        glob.on_report(report("coc", 0.2, "cloud"))
        local.on_global(glob.decisions())
    d = local.decisions()
    assert d["target"] == "cloud"
    assert 0.5 <= d["alpha"] <= 0.8
    assert d["t_edge"] == pytest.approx(0.9, rel=0.05) and d["t_cloud"] == pytest.approx(0.2)
    for _ in range(200):  # latencies keep deteriorating: alpha shrinks to its floor
        local.on_report(report("eoc", 5.0))
    assert local.decisions()["alpha"] == pytest.approx(0.5)
    for _ in range(400):  # and recovers, never above 0.8
        local.on_report(report("eoc", 0.0))
        local.on_global({"t_cloud": 0.05})
    d = local.decisions()
    assert d["alpha"] == pytest.approx(0.8) and d["target"] == "edge"


def test_advanced_policy_keeps_each_classifier_estimate_separate() -> None:
    local = AdaptiveCascadePolicy({"mode": "ECCI+"}, "local", "ec-1")
    local.on_report(report("eoc", 0.4))
    local.on_global({"t_cloud": 2.0})
    local.on_report(report("eoc", 0.4))
    assert local.t_cloud.value == 2.0 and local.t_edge.value == pytest.approx(0.4)


def test_mode_switch_and_reset_at_run_time() -> None:
    p = AdaptiveCascadePolicy({"mode": "ECCI"}, "local", "ec-1")
    p.on_report(report("eoc", 3.0))
    assert p.t_edge.value is None  # not adaptive outside ECCI+
    p.on_params({"mode": "ECCI+", "reset": True})
    p.on_report(report("eoc", 3.0))
    assert p.t_edge.value == 3.0 and p.alpha < 0.8
    p.on_params({"reset": True})
    assert p.t_edge.value is None and p.alpha == 0.8


def test_scores_and_latency_on_a_known_table() -> None:
    truth = [True, True, True, False, False, False, True, False]
    pred = [True, True, False, True, False, False, True, False]
    s = scores(pred, truth)
    assert (s.tp, s.fp, s.fn, s.tn) == (3, 1, 1, 3)
    assert s.precision == pytest.approx(0.75) and s.recall == pytest.approx(0.75)
    assert s.f1 == pytest.approx(0.75)
    assert scores(truth, truth).f1 == 1.0  # CI against COC's own labels
    lat = latency_stats([0.1, 0.2, 0.3, 0.4, 1.0])
    assert lat["mean"] == pytest.approx(0.4) and lat["p50"] == pytest.approx(0.3)
    assert lat["p95"] == pytest.approx(0.88)
    assert percentile([2.0], 95) == 2.0 and math.isnan(percentile([], 50))
