"""Components used by tests/test_membership.py (run by real runner processes).

Lines are appended with one write() each, so a reader never sees half a line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edgecloud import Component, Message


def _open(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)


class Source(Component):
    """Sends `{"i": n}` to each component of params["to"] every params["every"] seconds.

    `<out>/<instance>.sent` gets `sent <n> <component> <target instance>` per send and
    `members <instance,...>` whenever the membership changed (`on_members`).
    """

    def setup(self) -> None:
        self.fd = _open(Path(self.params["out"]) / f"{self.name}.sent")

    def run(self) -> None:
        n = 0
        while self.sleep(float(self.params.get("every", 0.05))):
            for component in self.params["to"]:
                target = self.send(component, {"i": n})
                os.write(self.fd, f"sent {n} {component} {target}\n".encode())
            n += 1

    def on_members(self) -> None:
        names = ",".join(sorted(p.instance for p in self.context.members))
        os.write(self.fd, f"members {names}\n".encode())


class Sink(Component):
    """Appends `<i> <sender> <own site>` to `<out>/<instance>.got` per message."""

    def setup(self) -> None:
        self.fd = _open(Path(self.params["out"]) / f"{self.name}.got")

    def on_message(self, msg: Message) -> None:
        payload: dict[str, Any] = msg.payload
        os.write(self.fd, f"{payload['i']} {msg.sender} {self.site}\n".encode())
