"""Helpers shared by the end-to-end tests: the CLI as a user runs it, waiting, a live run."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgecloud.config import Home
from edgecloud.resource.state import RunState, load_run_state

ROOT = Path(__file__).resolve().parents[1]
LOCAL_INFRA = ROOT / "examples/infra/local.yaml"


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `edgecloud ARGS` in a subprocess; with check, fail with its output."""
    r = subprocess.run([sys.executable, "-m", "edgecloud.cli.main", *args],
                       capture_output=True, text=True, timeout=180,
                       env={**os.environ, "COLUMNS": "200"})
    if check and r.returncode != 0:
        raise AssertionError(f"edgecloud {' '.join(args)} failed: {r.stdout}\n{r.stderr}")
    return r


def wait_for(pred: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    """Poll `pred` until it returns something truthy (returned) or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def eventually(cond: Callable[[], bool], timeout: float = 10.0, every: float = 0.01) -> bool:
    """Poll `cond` until true or `timeout`; returns its last value (for `assert`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(every)
    return cond()


def collector() -> tuple[list[Any], Callable[[Any], None]]:
    """A thread-safe list and a message handler appending to it."""
    got: list[Any] = []
    lock = threading.Lock()

    def handler(m: Any) -> None:
        with lock:
            got.append(m)
    return got, handler


@contextmanager
def embedded_run(home: Path, infra: Path = LOCAL_INFRA) -> Iterator[RunState]:
    """`edgecloud up --detach` with 1 s heartbeats for the duration of the block."""
    cli("up", str(infra), "--home", str(home), "--detach", "--heartbeat", "1")
    try:
        yield load_run_state(Home(home))
    finally:
        cli("down", "--home", str(home), check=False)
