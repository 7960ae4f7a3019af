"""Policies of an edge/cloud model cascade (ACE's video query, Sedna's joint inference).

A small edge model answers what it is sure of and escalates the rest to a big cloud
model. `CascadePolicy` is ACE's Basic Policy with the four modes of its experiment;
`AdaptiveCascadePolicy` is ACE's Advanced Policy: it learns each classifier's end-to-end
inference latency (EIL) from reports, sends new work to whichever is faster now, and
shrinks the escalation band when latencies deteriorate.

Questions components ask (`self.policy.decide(question, value)`):
- "route" -> "edge" or "cloud": where the detector sends a new crop;
- "confidence" -> "positive" | "drop" | "escalate" for an edge confidence.
- "hard" -> bool for any edge output (class scores or detection boxes), answered by the
  configured hard-example filter (params `hem`, see edgecloud.ml.inference.hem).
Reports the policy learns from: `values["eil_s"]` (mean EIL over the interval) and
`values["n"]`, sent by components named in params `edge_component` / `cloud_component`.

With params `hem: {name: cross_entropy, threshold: 0.5}` (any registered filter), the
filter takes over the forward decision of "confidence": hard -> "escalate" (or "drop" in
EI), otherwise the edge answers, "positive" when the confidence >= `hem_positive` (0.5)
and "drop" below. Without `hem` the alpha/beta band decides, as in ACE.
"""

from __future__ import annotations

from typing import Any, Literal

from edgecloud.application.policy import BasicPolicy, Report, Role
from edgecloud.ml.inference.hem import HardExampleFilter, HemConfigError, make_filter

Mode = Literal["CI", "EI", "ECCI", "ECCI+"]
MODES: tuple[Mode, ...] = ("CI", "EI", "ECCI", "ECCI+")


class Ewma:
    """Exponentially weighted moving average; None until the first sample."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.value: float | None = None

    def update(self, sample: float) -> float:
        self.value = sample if self.value is None else (
            self.rate * sample + (1 - self.rate) * self.value)
        return self.value


class CascadePolicy(BasicPolicy):
    """ACE's Basic Policy and the modes of its experiment (params `mode`, `alpha`, `beta`).

    CI: every crop to the cloud. EI: the edge model only; what it is unsure of is dropped.
    ECCI: confidence >= alpha -> positive at the edge; <= beta -> dropped; else cloud.
    """

    def __init__(self, params: dict[str, Any], role: Role, site: str, node: str = "") -> None:
        super().__init__(params, role, site, node)
        self.mode: Mode = params.get("mode", "ECCI")
        if self.mode not in MODES:
            raise ValueError(f"unknown cascade mode {self.mode!r}; expected one of {MODES}")
        self.hem: HardExampleFilter | None = None
        self.hem_positive = 0.5
        self._set_hem(params)

    def _set_hem(self, params: dict[str, Any]) -> None:
        """Configure the hard-example filter from params `hem` (None or {} turns it off)."""
        if "hem_positive" in params:
            try:
                self.hem_positive = float(params["hem_positive"])
            except (TypeError, ValueError):
                raise HemConfigError(f"params.hem_positive: expected a number in [0, 1], "
                                     f"got {params['hem_positive']!r}") from None
        if "hem" in params:
            spec = params["hem"]
            self.hem = make_filter(spec, where="params.hem") if spec else None

    def on_params(self, params: dict[str, Any]) -> None:
        super().on_params(params)
        self._set_hem(params)
        if "mode" in params:
            if params["mode"] not in MODES:
                raise ValueError(f"unknown cascade mode {params['mode']!r}")
            self.mode = params["mode"]
        if "alpha" in params:
            self.alpha = float(params["alpha"])
            self.beta = float(params.get("beta", (1 - self.alpha) / 2))

    def decide(self, question: str, value: Any, decisions: dict[str, Any]) -> Any:
        if question == "route":
            if self.mode == "CI":
                return "cloud"
            if self.mode == "ECCI+":
                return str(decisions.get("target", "edge"))
            return "edge"
        if question == "hard":
            return self._hard(value)
        if question == "confidence":
            if self.hem is None:
                verdict = super().decide(question, value, decisions)
            elif self._hard(value):
                verdict = "escalate"
            else:
                verdict = "positive" if float(value) >= self.hem_positive else "drop"
            if verdict == "escalate" and self.mode == "EI":
                return "drop"  # edge-only: never forwards
            return verdict
        return super().decide(question, value, decisions)

    def _hard(self, output: Any) -> bool:
        if self.hem is None:
            raise HemConfigError("params.hem: no hard-example filter configured; set e.g. "
                                 "hem: {name: cross_entropy, threshold: 0.5}")
        if self.hem.input_kind == "boxes" and isinstance(output, int | float):
            raise HemConfigError(
                f"params.hem.name: filter {self.hem.name!r} judges detection boxes "
                f"[[x1, y1, x2, y2, score, class], ...], but got {type(output).__name__} "
                "(a classifier's confidence); use threshold or cross_entropy")
        return self.hem.is_hard(output)


class AdaptiveCascadePolicy(CascadePolicy):
    """ACE's Advanced Policy (in mode ECCI+; other modes behave as CascadePolicy), keeping
    one EIL estimate per classifier.

    EWMA (rate 0.2) of each classifier's EIL from reports: the edge model's at the local
    controller of each site, the cloud model's at the global controller, which publishes
    it to every site. Routing: the edge model if its EIL <= the cloud's, else the cloud.
    alpha <- clamp(alpha - step * (0.5 (t_edge - t0) + 0.5 (t_cloud - t0)), 0.5, 0.8).
    (ACE's own code let one update overwrite the other classifier's estimate; here each
    estimate is kept separately.)
    """

    def __init__(self, params: dict[str, Any], role: Role, site: str, node: str = "") -> None:
        super().__init__(params, role, site, node)
        self.rate = float(params.get("ewma_rate", 0.2))
        self.t0 = float(params.get("target_eil_s", 0.3))
        self.step = float(params.get("alpha_step", 0.01))
        self.alpha_min = float(params.get("alpha_min", 0.5))
        self.alpha_max = float(params.get("alpha_max", self.alpha))
        self.edge_name = str(params.get("edge_component", "eoc"))
        self.cloud_name = str(params.get("cloud_component", "coc"))
        self.t_edge = Ewma(self.rate)
        self.t_cloud = Ewma(self.rate)

    def on_params(self, params: dict[str, Any]) -> None:
        super().on_params(params)
        if params.get("reset"):  # a new experiment run: forget the old estimates
            self.t_edge, self.t_cloud = Ewma(self.rate), Ewma(self.rate)
            self.alpha = float(self.params.get("alpha", self.alpha_max))
            self.beta = (1 - self.alpha) / 2

    def on_report(self, report: Report) -> None:
        eil = report.values.get("eil_s")
        if eil is None or self.mode != "ECCI+":
            return
        if report.component == self.edge_name and self.role != "global":
            self.t_edge.update(float(eil))
        elif report.component == self.cloud_name:
            self.t_cloud.update(float(eil))
        else:
            return
        self._adapt()

    def on_global(self, decisions: dict[str, Any]) -> None:
        if decisions.get("t_cloud") is not None:
            self.t_cloud.value = float(decisions["t_cloud"])
            self._adapt()

    def _adapt(self) -> None:
        te = self.t_edge.value if self.t_edge.value is not None else self.t0
        tc = self.t_cloud.value if self.t_cloud.value is not None else self.t0
        self.alpha = min(self.alpha_max, max(
            self.alpha_min, self.alpha - self.step * (0.5 * (te - self.t0) + 0.5 * (tc - self.t0))))
        self.beta = min(self.beta, (1 - self.alpha) / 2)

    def target(self) -> str:
        te, tc = self.t_edge.value, self.t_cloud.value
        if te is None or tc is None:
            return "edge"
        return "edge" if te <= tc else "cloud"

    def decisions(self) -> dict[str, Any]:
        if self.mode != "ECCI+":
            return {"alpha": self.alpha, "beta": self.beta, "target": "edge"}
        if self.role == "global":
            return {"t_cloud": self.t_cloud.value}
        return {"alpha": self.alpha, "beta": self.beta, "target": self.target(),
                "t_edge": self.t_edge.value, "t_cloud": self.t_cloud.value}
