"""Lifecycle edge cases of the embedded supervisor and `edgecloud up/down`, on real
processes but without a whole infrastructure: stale pids, a home in use, a watch loop
facing services that cannot start, a dead platform, children outliving their parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from edgecloud.config import Home
from edgecloud.embedded.layout import plan_layout
from edgecloud.embedded.supervisor import MAX_RESTART_ATTEMPTS, Service, Supervisor
from edgecloud.errors import UserError
from edgecloud.procutil import process_started, spawn_command, stop_process
from edgecloud.resource.infra import load_infrastructure
from edgecloud.resource.state import RunState, ServiceRuntime, load_run_state
from edgecloud.service import Endpoint
from tests.support import LOCAL_INFRA, cli, foreground_up, wait_for

TINY_INFRA = """apiVersion: edgecloud/v1
kind: Infrastructure
metadata: {name: tiny}
spec:
  sites:
    - name: cloud
      kind: cloud
      nodes: [{name: cc-1, resources: {cpu: 2, memory: 2Gi}}]
"""


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def sleeper(**kw: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "120"], **kw)  # type: ignore[call-overload,no-any-return]


def fake_state(home: Path, supervisor_pid: int, services: list[ServiceRuntime]) -> RunState:
    state = RunState(infra="local", infra_file=LOCAL_INFRA, home=home,
                     supervisor_pid=supervisor_pid, broker_kind="mosquitto",
                     platform=Endpoint(port=1), sites=[], services=services)
    home.mkdir(parents=True, exist_ok=True)
    state.save(Home(home))
    return state


def test_down_never_signals_a_stale_pid(tmp_path: Path) -> None:
    """The supervisor died; its pid and a service's pid now belong to unrelated processes.
    `down` leaves those alone (nobody holds the lock; the start times differ), ends the
    service that really is left over, and removes the stale state."""
    home = tmp_path / "h"
    bystander = sleeper()
    leftover = sleeper(start_new_session=True)  # a service that outlived its supervisor
    try:
        started = process_started(leftover.pid)
        assert started is not None
        fake_state(home, bystander.pid, [
            ServiceRuntime(name="platform", pid=bystander.pid, log=home / "p.log",
                           started=time.time() - 3600),  # pid reused since
            ServiceRuntime(name="broker-cloud", pid=leftover.pid, log=home / "b.log",
                           started=started)])
        (home / "supervisor.lock").write_text(str(bystander.pid))
        r = cli("down", "--home", str(home))
        assert bystander.poll() is None, "down signalled an unrelated process"
        wait_for(lambda: leftover.poll() is not None, 5, "the leftover service ended")
        assert not (home / "state.json").exists() and "Traceback" not in r.stderr
        # No state at all, only a lock file naming a live unrelated pid: nothing to stop.
        r = cli("down", "--home", str(home))
        assert bystander.poll() is None and "nothing is running" in r.stdout
    finally:
        for p in (bystander, leftover):
            p.kill()
            p.wait()


@pytest.fixture
def home_in_use(tmp_path: Path) -> tuple[Path, subprocess.Popen[str]]:
    """A home whose lock another (live) supervisor holds, with its state.json."""
    home = tmp_path / "busy"
    fake_state(home, os.getpid(), [])
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         "f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX)\n"
         "f.seek(0); f.truncate(); f.write(str(os.getpid())); f.flush()\n"
         "print('locked', flush=True); time.sleep(120)", str(home / "supervisor.lock")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    yield home, holder  # type: ignore[misc]
    holder.kill()
    holder.wait()


def test_refused_up_changes_nothing(home_in_use: tuple[Path, subprocess.Popen[str]]) -> None:
    home, holder = home_in_use
    before = (home / "state.json").read_bytes()
    for detach in (["--detach"], []):
        r = cli("up", str(LOCAL_INFRA), "--home", str(home), *detach, check=False)
        assert r.returncode == 2, r.stdout + r.stderr
        assert "already running" in r.stderr and f"pid {holder.pid}" in r.stderr
        assert "Traceback" not in r.stderr
        assert (home / "state.json").read_bytes() == before, "a refused up touched state.json"
    assert not (home / "layout.json").exists() and not (home / "admin.token").exists()
    assert holder.poll() is None


def test_watch_survives_services_that_cannot_start(tmp_path: Path) -> None:
    """A service whose restart raises OSError (its binary is gone) is retried with backoff,
    then recorded as failed; the watch loop goes on restarting the others."""
    infra = load_infrastructure(LOCAL_INFRA)
    sup = Supervisor(infra, LOCAL_INFRA, Home(tmp_path))
    sup.restart_backoff_s = 0.01
    sup.layout = plan_layout(infra)
    log = tmp_path / "svc.log"
    attempts: list[float] = []

    def start_broken() -> subprocess.Popen[bytes]:
        attempts.append(time.monotonic())
        return subprocess.Popen(["/nonexistent/edgecloud-binary"])

    first = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    first.wait()
    broken = Service("broken", start_broken, None, log, proc=first)
    fine = Service("fine", lambda: spawn_command("fine", ["sleep", "120"], log), None, log)
    fine.launch()
    sup.services = [broken, fine]
    watcher = threading.Thread(target=sup.watch, kwargs={"poll_s": 0.02})
    watcher.start()
    try:
        wait_for(lambda: broken.health == "failed", 20, "the broken service given up")
        assert len(attempts) == MAX_RESTART_ATTEMPTS
        assert "gave up after" in broken.detail
        assert fine.proc is not None
        old = fine.proc.pid
        fine.proc.kill()
        wait_for(lambda: fine.proc is not None and fine.proc.pid != old
                 and fine.health == "running", 10, "the other service restarted")
        assert fine.restarts == 1 and watcher.is_alive()
        recorded = {s.name: s for s in load_run_state(Home(tmp_path)).services}
        assert recorded["broken"].state == "failed"
        assert recorded["broken"].restarts == MAX_RESTART_ATTEMPTS
        assert recorded["fine"].state == "running" and recorded["fine"].restarts == 1
        assert len(attempts) == MAX_RESTART_ATTEMPTS  # given up means left alone
    finally:
        sup.stopping.set()
        watcher.join(5)
        if fine.proc is not None:
            stop_process(fine.proc, timeout=5)


def test_dead_platform_is_a_clear_error(tmp_path: Path) -> None:
    infra = load_infrastructure(LOCAL_INFRA)
    sup = Supervisor(infra, LOCAL_INFRA, Home(tmp_path))
    sup.layout = plan_layout(infra)  # nothing listens on its ports
    with pytest.raises(UserError, match="not reachable"):
        sup.node_states()


def test_children_die_with_their_parent(tmp_path: Path) -> None:
    code = ("import signal, sys, time\n"
            "from pathlib import Path\n"
            "from edgecloud.procutil import spawn_command\n"
            "p = spawn_command('c', ['sleep', '120'], Path(sys.argv[1]),"
            " parent_death_signal=signal.SIGTERM)\n"
            "print(p.pid, flush=True)\n"
            "time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "c.log")],
                              stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert not gone(child)
    parent.kill()
    parent.wait()
    wait_for(lambda: gone(child), 10, "the child of a killed parent to die")


def test_foreground_up_stops_everything_on_sighup(tmp_path: Path) -> None:
    """Any end of a foreground `up` but Ctrl-C (here a closed terminal) used to leave its
    services running: they are stopped too."""
    infra = tmp_path / "tiny.yaml"
    infra.write_text(TINY_INFRA)
    home = tmp_path / "fg"
    proc = foreground_up(infra, home)
    try:
        pids = [s.pid for s in load_run_state(Home(home)).services]
        assert len(pids) == 4  # platform, broker, file server, agent
        proc.send_signal(signal.SIGHUP)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "Traceback" not in out and not (home / "state.json").exists()
    for pid in pids:
        assert gone(pid), f"service pid {pid} left behind"
