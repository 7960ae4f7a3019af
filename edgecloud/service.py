"""The contract every long-running edgecloud service process follows.

A service module (broker, bridge, wan, files server, platform) defines a pydantic config
model and a blocking `serve(config)` that returns after SIGTERM/SIGINT once it has shut
down cleanly. `run_service` is its `__main__`: `python -m edgecloud.resource.bridge
CONFIG.json` reads the JSON file, sets up logging and calls `serve`. The supervisor of
`edgecloud up` writes those files and starts the processes.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from edgecloud.log import setup_logging

if TYPE_CHECKING:  # both load with the server, not with every service module
    import uvicorn
    from fastapi import FastAPI

C = TypeVar("C", bound=BaseModel)


class Endpoint(BaseModel):
    """A TCP endpoint; `url(scheme)` renders it."""

    host: str = "127.0.0.1"
    port: int

    def url(self, scheme: str) -> str:
        return f"{scheme}://{self.host}:{self.port}"


def stop_event_on_signals() -> threading.Event:
    """An Event set by SIGTERM or SIGINT, for services whose main loop is a thread."""
    stop = threading.Event()

    def _handler(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    return stop


def run_service(model: type[C], serve: Callable[[C], None], argv: list[str] | None = None) -> None:
    """Entry point of `python -m <service module> CONFIG.json`."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(f"usage: python -m <service> CONFIG.json  (config: {model.__name__})",
              file=sys.stderr)
        raise SystemExit(2)
    setup_logging()
    try:
        config = model.model_validate_json(Path(args[0]).read_text())
    except (OSError, ValidationError) as exc:
        print(f"{args[0]}: invalid {model.__name__}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    serve(config)


def quiet_uvicorn(app: FastAPI, listen: Endpoint, **kw: Any) -> uvicorn.Server:
    """A uvicorn Server that leaves signals to the service (no capture, no re-raise).

    uvicorn re-raises a captured SIGTERM after shutdown, which would make a clean stop
    look like a crash; services set `server.should_exit` from their own handlers instead.
    """
    import contextlib

    import uvicorn

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    config = uvicorn.Config(app, host=listen.host, port=listen.port, log_config=None,
                            access_log=False, **kw)
    return _Server(config)
