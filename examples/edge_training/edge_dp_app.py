"""Edge data-parallel training as an edgecloud application: one worker per edge node.

`Worker` runs :func:`edgecloud.ml.training.edge_dp.run_worker` against the coordinator
named in ``params.coordinator`` (HOST:PORT), under the instance's name, at its node's
declared ``speed`` (a slower device is emulated by sleeping; the coordinator only sees
the throughput it measures). The channel to the coordinator is the job's own TCP
connection, not the site broker: a step exchanges the whole model every fraction of a
second (see the coordinator's docstring). When the coordinator stops the job the
instance idles until the application is deleted; if the coordinator restarts, the
worker reconnects on its own.
"""

from __future__ import annotations

from edgecloud import Component


class Worker(Component):
    """A data-parallel worker bound to this instance's node."""

    def run(self) -> None:
        from edgecloud.ml.training.edge_dp import run_worker

        host, _, port = str(self.params["coordinator"]).rpartition(":")
        code = run_worker((host, int(port)), self.name, speed=self.context.node_speed,
                          sample_ms=float(self.params.get("sample_ms", 20.0)),
                          patience=float(self.params.get("patience", 120.0)),
                          stop=self.stopped)
        self.log.info("data-parallel worker finished", code=code)
