"""The process runtime runs real processes: start, crash-restart with backoff, update, stop."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from edgecloud.resource.runtime import InstanceSpec, InstanceStatus, ProcessRuntime


def cmd(code: str, name: str = "a-0", **kw: object) -> InstanceSpec:
    return InstanceSpec(app="demo", name=name, component=name.rsplit("-", 1)[0],
                        kind="command", command=[sys.executable, "-c", code], **kw)  # type: ignore[arg-type]


def wait_for(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[ProcessRuntime]:
    rt = ProcessRuntime(tmp_path)
    yield rt
    rt.close()


def status(rt: ProcessRuntime, name: str = "a-0") -> InstanceStatus:
    return next(s for s in rt.statuses() if s.name == name)


def test_runs_and_stops(runtime: ProcessRuntime) -> None:
    runtime.apply([cmd("import time, os; print('hello', os.environ['EDGECLOUD_CONTEXT']);"
                       "time.sleep(60)")])
    wait_for(lambda: status(runtime).state == "Running" and status(runtime).pid is not None)
    pid = status(runtime).pid
    assert pid is not None and psutil.pid_exists(pid)
    wait_for(lambda: "hello" in runtime.log_path("demo", "a-0").read_text())
    runtime.apply([])
    assert runtime.statuses() == []
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie")


def test_crash_is_restarted_with_reason(runtime: ProcessRuntime) -> None:
    runtime.apply([cmd("raise SystemExit('boom: bad config')")])
    wait_for(lambda: status(runtime).restarts >= 1, timeout=10)
    s = status(runtime)
    assert s.exit_code == 1 and "boom: bad config" in s.reason
    assert s.state in ("Restarting", "Running")


def test_never_policy_fails(runtime: ProcessRuntime) -> None:
    runtime.apply([cmd("import sys; sys.exit(3)", restart="never")])
    wait_for(lambda: status(runtime).state == "Failed")
    assert status(runtime).exit_code == 3 and status(runtime).restarts == 0


def test_update_restarts_only_changed(runtime: ProcessRuntime) -> None:
    keep = cmd("import time; time.sleep(60)", name="keep-0")
    change = cmd("import time; time.sleep(60)", name="chg-0")
    runtime.apply([keep, change])
    wait_for(lambda: all(s.pid for s in runtime.statuses()))
    before = {s.name: s.pid for s in runtime.statuses()}
    changed = change.model_copy(update={"env": {"X": "1"}})
    runtime.apply([keep, changed])
    wait_for(lambda: all(s.pid for s in runtime.statuses()))
    after = {s.name: s.pid for s in runtime.statuses()}
    assert after["keep-0"] == before["keep-0"]
    assert after["chg-0"] != before["chg-0"]


def test_missing_binary_fails_clearly(runtime: ProcessRuntime) -> None:
    spec = InstanceSpec(app="demo", name="x-0", component="x", kind="command",
                        command=["/nonexistent/binary"])
    runtime.apply([spec])
    wait_for(lambda: status(runtime, "x-0").state == "Failed")
    assert "cannot start" in status(runtime, "x-0").reason


def test_restart_count_survives_the_runtime(tmp_path: Path) -> None:
    """An agent killed with its instances, then restarted: starting them again is a restart."""
    spec = cmd("import time; time.sleep(60)")
    # the first agent, then every later agent counts on (each goes with its instances)
    assert [restarts_in_new_runtime(tmp_path, spec) for _ in range(3)] == [0, 1, 2]
    # A changed instance is a new one, and a removed one is forgotten.
    changed = spec.model_copy(update={"env": {"X": "1"}})
    assert restarts_in_new_runtime(tmp_path, changed, then_remove=True) == 0
    assert restarts_in_new_runtime(tmp_path, changed) == 0


def restarts_in_new_runtime(root: Path, spec: InstanceSpec, then_remove: bool = False) -> int:
    """Start `spec` in a new ProcessRuntime on `root` (an agent starting), return its
    restart count once it runs, then close the runtime (the agent goes, its instances too);
    `then_remove`: the instance is removed from the assignment first."""
    rt = ProcessRuntime(root)
    try:
        rt.apply([spec])
        wait_for(lambda: status(rt).pid is not None)
        restarts = status(rt).restarts
        if then_remove:
            rt.apply([])
        return restarts
    finally:
        rt.close()
