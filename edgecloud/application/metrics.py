"""Component metrics: counters, gauges and histograms backed by prometheus_client.

Each instance has its own registry; the runner writes `snapshot()` to
`<instance dir>/metrics.json` every few seconds, the agent sends it with its heartbeat,
and the platform exposes it on `GET /metrics` labelled with app, instance and node.

    self.metrics.counter("frames_total", "frames read").inc()
    self.metrics.histogram("infer_seconds").observe(0.012)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

M = TypeVar("M", Counter, Gauge, Histogram)


class Metrics:
    """A per-instance metric registry; metrics are created on first use and then reused."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._metrics: dict[str, tuple[str, MetricWrapperBase]] = {}

    def _get(self, kind: str, cls: type[M], name: str, doc: str, labels: tuple[str, ...],
             **kw: Any) -> M:
        existing = self._metrics.get(name)
        if existing is not None:
            existing_kind, existing_metric = existing
            if existing_kind != kind or not isinstance(existing_metric, cls):
                raise ValueError(f"metric {name!r} already exists as a {existing_kind}")
            return existing_metric
        metric = cls(name, doc or name, labelnames=labels, registry=self.registry, **kw)
        self._metrics[name] = (kind, metric)
        return metric

    def counter(self, name: str, doc: str = "", labels: tuple[str, ...] = ()) -> Counter:
        return self._get("counter", Counter, name, doc, labels)

    def gauge(self, name: str, doc: str = "", labels: tuple[str, ...] = ()) -> Gauge:
        return self._get("gauge", Gauge, name, doc, labels)

    def histogram(self, name: str, doc: str = "", labels: tuple[str, ...] = (),
                  buckets: tuple[float, ...] = Histogram.DEFAULT_BUCKETS) -> Histogram:
        return self._get("histogram", Histogram, name, doc, labels, buckets=buckets)

    def snapshot(self) -> dict[str, Any]:
        """Every sample as JSON: {"metrics": [{name, type, help, samples: [[n, labels, v]]}]}."""
        out = []
        for family in self.registry.collect():
            out.append({"name": family.name, "type": family.type, "help": family.documentation,
                        "samples": [[s.name, s.labels, s.value] for s in family.samples]})
        return {"metrics": out}

    def write(self, path: Path) -> None:
        """Atomically replace `path` with the snapshot (the agent may read it any time)."""
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.snapshot()))
        tmp.replace(path)
