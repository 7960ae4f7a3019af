"""Helpers shared by the end-to-end tests: the CLI as a user runs it, waiting, a live run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgecloud.client import Client
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


def settles(value_of: Callable[[], Any], expected: Any, quiet_s: float, timeout: float = 30.0,
            what: str = "the value", every: float = 0.05) -> None:
    """Wait until `value_of()` reaches `expected`, then check it stays there for `quiet_s`.

    For an exact count that may only grow (messages received), this replaces "sleep, then
    assert equal": it returns as soon as the count is reached and then watches for one too
    many (a duplicate, a late redelivery) during the quiet period. A number past `expected`
    fails at once. Raises AssertionError naming `what` and the last value seen.
    """
    def reached(v: Any) -> bool:
        numeric = isinstance(v, int | float) and isinstance(expected, int | float)
        return v == expected or bool(numeric and v > expected)

    deadline = time.monotonic() + timeout
    value = value_of()
    while not reached(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: {value!r} after {timeout}s, expected {expected!r}")
        time.sleep(every)
        value = value_of()
    quiet_until = time.monotonic() + quiet_s
    while True:
        if value != expected:
            raise AssertionError(f"{what}: {value!r}, expected it to stay {expected!r}")
        if time.monotonic() >= quiet_until:
            return
        time.sleep(every)
        value = value_of()


def metric(inst: dict[str, Any], name: str) -> float:
    """The first sample of metric family `name` of an instance in `app status --json`
    (0 when the instance has not reported it yet)."""
    for family in inst["metrics"].get("metrics", []):
        if family["name"] == name:
            return float(family["samples"][0][2])
    return 0.0


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


def delete_apps(home: Path, *names: str) -> None:
    """Delete those of `names` that are deployed on the run at `home` (a module's cleanup
    on a shared run), so that the next module finds neither their names nor their
    reserved resources."""
    with Client.from_home(home) as ec:
        for name in sorted(set(names) & {a.name for a in ec.apps()}):
            ec.delete(name)
        left = set(names) & {a.name for a in ec.apps()}
    assert not left, f"apps {sorted(left)} still deployed after delete"


def node_id(name: str) -> str:
    """The id of a node of LOCAL_INFRA from its name (`ec-1-pc` -> `local/ec-1/ec-1-pc`)."""
    site = "cloud" if name.startswith("cc") else name.rsplit("-", 1)[0]
    return f"local/{site}/{name}"


def foreground_up(infra: Path, home: Path) -> subprocess.Popen[str]:
    """`edgecloud up INFRA` in the foreground (as in a terminal), 1 s heartbeats; returns
    once its state.json is written (the run is up)."""
    proc = subprocess.Popen([sys.executable, "-m", "edgecloud.cli.main", "up", str(infra),
                             "--home", str(home), "--heartbeat", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    try:
        wait_for(lambda: (home / "state.json").exists(), 90, "foreground up ready")
    except BaseException:
        proc.send_signal(signal.SIGINT)  # what a person would do; it stops what it started
        proc.wait(60)
        raise
    return proc
