"""The in-app controller: a control plane per application, separate from its workload.

Declared in the topology file (`spec.controller`), it runs as one local controller per
edge site that hosts the application and one global controller in the cloud. Components
report every interval (queue length, throughput, latency, custom values) to their site's
controller; local controllers aggregate their site for the global one; the policy turns
reports into decisions, which are published to the components and applied there through
`Component.policy`. General operations: start, terminate, set (parameters), filter
(sampling of what a component sends), aggregate (site summaries to the global controller).
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from edgecloud.application import topics
from edgecloud.application.messages import ControllerCommand
from edgecloud.application.policy import Report, parse_decisions
from edgecloud.application.sdk import Component
from edgecloud.resource.mqtt import Delivery


class InAppController(Component):
    """Base in-app controller; subclass to add operations, keep the policy for decisions."""

    def setup(self) -> None:
        ctx = self.context
        self.is_global = ctx.site == ctx.cloud_site
        self.interval = ctx.controller.report_interval_s if ctx.controller else 1.0
        self.latest: dict[str, Report] = {}
        # Reports and the global decisions are data, handled at once on the network thread
        # (acknowledged when the handler returns): a slow worker never delays control.
        self._mqtt.subscribe(topics.reports(self.site, self.app), self._on_report_msg)
        if not self.is_global:
            self._mqtt.subscribe(topics.decisions(self.site, self.app, "global"),
                                 self._on_global_msg)

    def run(self) -> None:
        while self.sleep(self.interval):
            self.publish_decisions()
            if not self.is_global:
                self.aggregate()

    # -- reports ---------------------------------------------------------------------
    def on_report(self, report: Report) -> None:
        """Every report reaches the policy; override to add application logic."""
        self.policy.policy.on_report(report)

    def _on_report_msg(self, m: Delivery) -> None:
        try:
            report = Report.model_validate(m.body)
        except ValueError:
            self.log.warning("malformed report ignored", sender=m.src)
            return
        self.latest[report.instance] = report
        self.on_report(report)

    def _on_global_msg(self, m: Delivery) -> None:
        try:
            decisions = parse_decisions(m.body)
        except ValueError as exc:
            self.log.warning("malformed global decisions ignored", sender=m.src, reason=str(exc))
            return
        self.policy.policy.on_global(decisions)
        self.policy.update("global", decisions)

    # -- operations ------------------------------------------------------------------
    def _sites(self) -> list[str]:
        """Sites to command: the membership is live (a re-plan may move instances to
        other sites while this controller runs), so it is read at every command."""
        if not self.is_global:
            return [self.site]
        return sorted({p.site for p in self.context.members})

    def _command(self, op: str, component: str = "*", **args: Any) -> None:
        command = ControllerCommand(op=op, component=component, args=args)
        for site in self._sites():
            self._mqtt.publish(topics.commands(site, self.app), command.model_dump(mode="json"))

    def start(self, component: str = "*") -> None:
        """Tell components waiting for a start signal (`self.started`) to begin."""
        self._command("start", component)

    def terminate(self, component: str = "*") -> None:
        """Stop instances of a component (they exit cleanly and are not restarted)."""
        self._command("terminate", component)

    def set_params(self, component: str, **params: Any) -> None:
        """Change parameters of running instances (`self.params` is updated)."""
        self._command("set", component, **params)

    def filter(self, component: str, target: str, every: int | None) -> None:
        """Let `component` send only 1 in `every` messages to `target` (None: all)."""
        self._command("filter", component, target=target, every=every)

    def publish_decisions(self) -> None:
        """Publish the policy's decisions (retained, so new instances get them at once)."""
        decisions = self.policy.policy.decisions()
        if not decisions:
            return
        scope = "global" if self.is_global else "local"
        for site in self._sites():
            self._mqtt.publish(topics.decisions(site, self.app, scope), decisions,
                               retain=True)

    def aggregate(self) -> None:
        """Send one summary per component of this site to the global controller."""
        now = time.time()
        groups: dict[str, list[Report]] = defaultdict(list)
        for r in self.latest.values():
            if now - r.ts <= 3 * self.interval:
                groups[r.component].append(r)
        for component, reports in groups.items():
            lat = [r.latency_ms for r in reports if r.latency_ms is not None]
            summary = Report(instance=f"{self.site}/{component}", component=component,
                             site=self.site, ts=now,
                             queue_len=sum(r.queue_len for r in reports),
                             processed=sum(r.processed for r in reports),
                             throughput=sum(r.throughput for r in reports),
                             latency_ms=sum(lat) / len(lat) if lat else None,
                             values={"instances": len(reports)})
            self._mqtt.publish(topics.reports(self.context.cloud_site, self.app),
                               summary.model_dump(mode="json"))
