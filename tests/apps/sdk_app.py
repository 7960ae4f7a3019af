"""Components used by tests/test_sdk.py (a real app, run by real runner processes)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from edgecloud import Component, Message


class Source(Component):
    def run(self) -> None:
        for i in range(int(self.params["count"])):
            self.send("relay", {"i": i, "blob": bytes([i % 256]) * 16})
        self.send("relay", b"\xff not msgpack")  # raw bytes are a valid payload too


class Relay(Component):
    def on_message(self, msg: Message) -> None:
        if isinstance(msg.payload, dict) and msg.payload.get("i") == 3:
            raise ValueError("relay chokes on message 3")  # must be logged, not fatal
        self.send("sink", {"from": msg.sender, "payload": msg.payload})


class Sink(Component):
    def setup(self) -> None:
        # A slow setup (loading a model, say): messages arriving meanwhile must wait.
        time.sleep(float(self.params.get("setup_delay", 0)))
        self.seen: list[object] = []
        self.out = Path(self.params["out"])

    def on_message(self, msg: Message) -> None:
        self.metrics.counter("received_total").inc()
        p = msg.payload["payload"]
        self.seen.append(p["i"] if isinstance(p, dict) else "raw")
        self.out.write_text(json.dumps({"seen": self.seen, "sender": msg.sender_component,
                                        "alpha": self.policy.get("alpha"),
                                        "decision": self.policy.decide("confidence", 0.85)}))
