"""Components that misbehave on purpose (tests/test_apps.py)."""

from __future__ import annotations

from edgecloud import Component, Message
from edgecloud.errors import UserError


class Crasher(Component):
    def setup(self) -> None:
        raise RuntimeError(f"cannot open camera {self.params['device']}")


class Misconfigured(Component):
    def setup(self) -> None:
        raise UserError(f"unknown model {self.params['model']!r}")


class Tolerant(Component):
    def on_message(self, msg: Message) -> None:
        if not isinstance(msg.payload, dict):
            raise TypeError(f"expected a dict, got {type(msg.payload).__name__}")
        self.metrics.counter("good_total").inc()
