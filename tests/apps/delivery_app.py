"""Components used by tests/test_delivery.py (run by real runner processes)."""

from __future__ import annotations

import os
import time

from edgecloud import Component, Message


class Recorder(Component):
    """Appends what it handles to params["out"], one write() per message (survives kill -9).

    Lines: the `i` of each inbox message, `slow` after each `slow` topic message,
    `teardown` at teardown.
    """

    def setup(self) -> None:
        self.fd = os.open(self.params["out"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.delay = float(self.params.get("delay", 0))
        self.subscribe("slow", self.on_slow)

    def on_message(self, msg: Message) -> None:
        delay = float(msg.payload.get("delay", self.delay))
        if delay:
            time.sleep(delay)
        for k in range(int(msg.payload.get("fanout", 0))):  # output before the record
            self.publish("fan", k)
        os.write(self.fd, f"{msg.payload['i']}\n".encode())

    def on_slow(self, msg: Message) -> None:
        time.sleep(float(msg.payload["sleep"]))
        os.write(self.fd, b"slow\n")

    def teardown(self) -> None:
        os.write(self.fd, b"teardown\n")
