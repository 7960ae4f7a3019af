"""An application with an in-app controller and a custom policy (tests/test_control.py)."""

from __future__ import annotations

from typing import Any

from edgecloud import BasicPolicy, Component, Report


class CountingPolicy(BasicPolicy):
    """Local controllers count their site's reports; the global one counts reporting sites."""

    def __init__(self, params: dict[str, Any], role: Any, site: str, node: str = "") -> None:
        super().__init__(params, role, site, node)
        self.reports = 0
        self.sites: set[str] = set()

    def on_report(self, report: Report) -> None:
        self.reports += 1
        self.sites.add(report.site)

    def decisions(self) -> dict[str, Any]:
        d = super().decisions()
        if self.role == "global":
            d["sites_reporting"] = len(self.sites)
        else:
            d["local_reports"] = self.reports
        return d


class Worker(Component):
    def run(self) -> None:
        g = self.metrics.gauge
        while self.sleep(0.3):
            self.report(custom=1)
            g("alpha").set(float(self.policy.get("alpha", -1)))
            g("local_reports").set(float(self.policy.get("local_reports", -1)))
            g("sites_reporting").set(float(self.policy.get("sites_reporting", -1)))
            g("positive").set(1.0 if self.policy.decide("confidence", 0.75) == "positive"
                              else 0.0)
