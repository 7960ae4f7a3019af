"""A component that prints every controller command it receives (tests/test_client.py)."""

from __future__ import annotations

import json
from typing import Any

from edgecloud import Component


class Recorder(Component):
    def setup(self) -> None:
        print(f"ready {self.name} at {self.site}", flush=True)

    def on_command(self, op: str, args: dict[str, Any]) -> None:
        # One line per command, with where it arrived: the test greps the app's logs.
        print(f"command {op} at {self.site}: {json.dumps(args, sort_keys=True)}", flush=True)
