"""The application of bench/bench_delivery.py: a sender at an edge site, a receiver in the
cloud that records every message it handles (one write() each: survives kill -9)."""

from __future__ import annotations

import os

from edgecloud import Component, Message


class Sender(Component):
    """Sends `count` numbered messages to the receiver, `rate` per second."""

    def run(self) -> None:
        period = 1.0 / float(self.params["rate"])
        for i in range(int(self.params["count"])):
            self.send("receiver", {"i": i})
            if not self.sleep(period):
                return


class Receiver(Component):
    """Appends the number of each handled message to `params["out"]`."""

    def setup(self) -> None:
        self.fd = os.open(self.params["out"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def on_message(self, msg: Message) -> None:
        os.write(self.fd, f"{msg.payload['i']}\n".encode())
