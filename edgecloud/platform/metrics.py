"""Prometheus collectors of the platform: nodes, instances and the SDK metrics of every
instance, read from the store at scrape time (so values are right across restarts)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edgecloud.platform.store import Store


class NodeCollector(Collector):
    """Per-node gauges and counters."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        labels = ["site", "node"]
        ready = GaugeMetricFamily("edgecloud_node_ready", "1 if the node is Ready", labels=labels)
        cpu = GaugeMetricFamily("edgecloud_node_cpu_percent", "node CPU use (percent)",
                                labels=labels)
        mem_used = GaugeMetricFamily("edgecloud_node_memory_used_bytes", "node memory in use",
                                     labels=labels)
        mem_total = GaugeMetricFamily("edgecloud_node_memory_total_bytes", "node memory",
                                      labels=labels)
        last = GaugeMetricFamily("edgecloud_node_last_heartbeat_seconds",
                                 "unix time of the last heartbeat", labels=labels)
        beats = CounterMetricFamily("edgecloud_node_heartbeats", "heartbeats received",
                                    labels=labels)
        for row in self.store.nodes.all():
            key = [row.site, row.name]
            ready.add_metric(key, 1.0 if row.state == "Ready" else 0.0)
            beats.add_metric(key, float(row.heartbeats))
            m = row.metrics
            if "cpu_percent" in m:
                cpu.add_metric(key, float(m["cpu_percent"]))
                mem_used.add_metric(key, float(m["memory_used"]))
                mem_total.add_metric(key, float(m["memory_total"]))
            if row.last_heartbeat is not None:
                last.add_metric(key, float(row.last_heartbeat))
        yield from (ready, cpu, mem_used, mem_total, last, beats)


class InstanceCollector(Collector):
    """Per-instance state, restarts, CPU, memory, and every SDK metric of every instance,
    from the latest heartbeat of every node."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        labels = ["app", "instance", "component", "node"]
        up = GaugeMetricFamily("edgecloud_instance_running", "1 if Running", labels=labels)
        restarts = GaugeMetricFamily("edgecloud_instance_restarts", "restarts", labels=labels)
        cpu = GaugeMetricFamily("edgecloud_instance_cpu_percent", "CPU use", labels=labels)
        mem = GaugeMetricFamily("edgecloud_instance_memory_rss_bytes", "resident memory",
                                labels=labels)
        sdk: dict[str, GaugeMetricFamily] = {}
        for node in self.store.nodes.all():
            for s in node.instance_status:
                key = [s.app, s.name, s.component, node.name]
                up.add_metric(key, 1.0 if s.state == "Running" else 0.0)
                restarts.add_metric(key, float(s.restarts))
                cpu.add_metric(key, float(s.cpu_percent))
                mem.add_metric(key, float(s.memory_rss))
                for family in s.metrics.get("metrics", []):
                    for sample_name, sample_labels, value in family.get("samples", []):
                        name = f"edgecloud_app_{sample_name}"
                        extra = sorted(sample_labels)
                        fam = sdk.get(name + "|" + ",".join(extra))
                        if fam is None:
                            fam = GaugeMetricFamily(name, family.get("help", name),
                                                    labels=labels + extra)
                            sdk[name + "|" + ",".join(extra)] = fam
                        fam.add_metric(key + [str(sample_labels[k]) for k in extra],
                                       float(value))
        yield from (up, restarts, cpu, mem, *sdk.values())


def make_registry(store: Store) -> CollectorRegistry:
    """A registry per platform (not the global one), so tests can run several in-process."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(store))
    registry.register(InstanceCollector(store))
    return registry
