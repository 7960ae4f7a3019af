"""Starting, waiting for and stopping service processes (supervisor and tests share it)."""

from __future__ import annotations

import ctypes
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
from pydantic import BaseModel

from edgecloud.errors import UserError

_handed_out: set[int] = set()
_PR_SET_PDEATHSIG = 1
try:  # loaded here, before any fork: a dlopen between fork and exec can deadlock
    _libc: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - not Linux
    _libc = None


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A `preexec_fn` that makes the child receive `sig` when its parent dies.

    Linux's PR_SET_PDEATHSIG fires when the *thread* that spawned the child exits, not
    the process: spawn from a thread that lives as long as the parent (the main thread,
    or a dedicated one). A parent that died between fork and the prctl is caught by
    comparing the parent pid, and the child exits at once.
    """
    parent = os.getpid()

    def preexec() -> None:  # runs in the child between fork and exec
        if _libc is not None:
            _libc.prctl(_PR_SET_PDEATHSIG, int(sig))
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on `host`, for a service that binds it a moment later.

    Chosen below the kernel's ephemeral range: a port the OS hands out for bind(0) or for
    outgoing connections could be taken by any connection on the machine before the
    service binds it; ports below that range are only ever taken by explicit binds.
    """
    high = min(_ephemeral_low(), 65536)
    for _ in range(200):
        port = random.randrange(max(1024, high - 12000), high)
        # Several ports are often chosen before any is bound (a whole layout): never
        # hand the same one out twice from this process.
        if port not in _handed_out and not port_in_use(host, port):
            _handed_out.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # crowded: let the OS pick
        s.bind((host, 0))
        return int(s.getsockname()[1])


def claim_port(host: str, port: int) -> bool:
    """Take `port` for a service about to bind it, if it is free and not handed out yet."""
    if port in _handed_out or port_in_use(host, port):
        return False
    _handed_out.add(port)
    return True


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(host: str, port: int, timeout: float = 20.0,
              proc: subprocess.Popen[bytes] | None = None, name: str = "service",
              log: Path | None = None) -> None:
    """Wait until host:port accepts connections; fail early and clearly if `proc` dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        if proc is not None and proc.poll() is not None:
            raise UserError(f"{name} exited with code {proc.returncode} before listening on "
                            f"{host}:{port}{_tail(log)}", exit_code=1)
        time.sleep(0.05)
    raise UserError(f"{name} did not listen on {host}:{port} within {timeout:.0f}s{_tail(log)}",
                    exit_code=1)


def _tail(log: Path | None, lines: int = 15) -> str:
    if log is None or not log.exists():
        return ""
    text = log.read_text(errors="replace").splitlines()[-lines:]
    return f"; last lines of {log}:\n  " + "\n  ".join(text)


def spawn_service(name: str, module: str, config: BaseModel, run_dir: Path,
                  log: Path, env: dict[str, str] | None = None,
                  parent_death_signal: int | None = None) -> subprocess.Popen[bytes]:
    """Write `config` to run_dir/<name>.json and start `python -m module config.json`.

    stdout and stderr go to `log` (appended). The child gets its own process group so a
    Ctrl-C in the terminal reaches only the supervisor, which stops children in order.
    With `parent_death_signal` the child gets that signal when the spawning thread dies
    (see `die_with_parent`).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    cfg_file = run_dir / f"{name}.json"
    cfg_file.write_text(config.model_dump_json(indent=2))
    return spawn_command(name, [sys.executable, "-m", module, str(cfg_file)], log, env,
                         parent_death_signal)


def spawn_command(name: str, argv: list[str], log: Path,
                  env: dict[str, str] | None = None,
                  parent_death_signal: int | None = None) -> subprocess.Popen[bytes]:
    """Start `argv` in its own session, output appended to `log` (see `spawn_service`)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    preexec = die_with_parent(parent_death_signal) if parent_death_signal else None
    with open(log, "ab") as fh:
        return subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=full_env,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=preexec)  # noqa: PLW1509 - see die_with_parent


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int | None:
    """SIGTERM, wait up to `timeout`, then SIGKILL the whole process group."""
    if proc.poll() is not None:
        return proc.returncode
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return proc.poll()
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return proc.wait(5)


def stop_processes(procs: list[subprocess.Popen[bytes]], timeout: float = 10.0) -> None:
    """SIGTERM every process group at once, wait up to `timeout` in all, then SIGKILL."""
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(5)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_started(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), or None if there is none.

    Recorded next to a pid, it tells a process from a later one that reuses the pid.
    """
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def is_same_process(pid: int, started: float) -> bool:
    """True if `pid` is still the process that started at `started` (and not a zombie)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return abs(proc.create_time() - started) < 0.5
    except psutil.Error:
        return False
