"""The relay example: sensors at the edge, a relay per edge site, a sink in the cloud."""

from __future__ import annotations

from edgecloud import Component, Message


class Sensor(Component):
    """A source: sends `count` readings, one every `period` seconds."""

    def run(self) -> None:
        period = float(self.params.get("period", 0.01))
        for i in range(int(self.params["count"])):
            self.send("relay", {"i": i, "sensor": self.name})
            if not self.sleep(period):
                return


class Relay(Component):
    """Forwards every reading to the cloud."""

    def on_message(self, msg: Message) -> None:
        self.send("sink", msg.payload)


class Sink(Component):
    """Counts what arrives, per sensor."""

    def setup(self) -> None:
        self.per_sensor: dict[str, int] = {}

    def on_message(self, msg: Message) -> None:
        self.metrics.counter("received_total", "readings received").inc()
        sensor = msg.payload["sensor"]
        self.per_sensor[sensor] = self.per_sensor.get(sensor, 0) + 1
        if self.per_sensor[sensor] % 50 == 0:
            self.log.info("progress", sensor=sensor, received=self.per_sensor[sensor])
