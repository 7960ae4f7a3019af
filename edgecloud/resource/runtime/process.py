"""The process runtime: one OS process per instance, restarted with backoff.

`ProcessRuntime.apply(specs)` makes the node run exactly `specs`: it starts what is new,
stops what is gone, and restarts what changed (by `InstanceSpec.restart_digest`). An
instance whose spec changed only in its live part (the application's membership) keeps
running: its `context.json` is replaced atomically and its runner follows it. A
supervision thread restarts crashed instances with exponential backoff (1 s doubling to
60 s, reset after 60 s of healthy running, like Kubernetes' CrashLoopBackOff), and
`statuses()` reports state, restarts, the reason of the last exit, CPU and memory. Output
goes to `<root>/<app>/<instance>/output.log`. Children die with the agent
(PR_SET_PDEATHSIG), so a dead node's instances do not linger when they are moved
elsewhere.

Restart counts survive the agent: `<instance dir>/starts.json` records how often an
instance (of one restart digest) was started, so an instance started again by a restarted
agent (whose crash took the instance with it) counts as restarted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from edgecloud.config import write_private
from edgecloud.log import get_logger
from edgecloud.procutil import die_with_parent
from edgecloud.resource.runtime.spec import InstanceSpec, InstanceState, InstanceStatus

log = get_logger("runtime")

BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 60.0
HEALTHY_AFTER_S = 60.0
LOG_MAX_BYTES = 20 << 20
READY_FILE = "ready"  # written by the SDK runner once subscribed (entry instances only)
STARTS_FILE = "starts.json"  # {"digest": ..., "starts": n}: restart counts across agents
CONTEXT_FILE = "context.json"


@dataclass
class _Instance:
    spec: InstanceSpec
    restart_digest: str  # of `spec`: a change restarts the instance
    dir: Path
    digest: str = ""  # of the whole `spec`, reported with every status (computed once)
    proc: subprocess.Popen[bytes] | None = None
    ps: psutil.Process | None = None
    state: InstanceState = "Pending"
    restarts: int = 0
    exit_code: int | None = None
    reason: str = ""
    started_at: float | None = None
    next_start: float = 0.0
    failures_in_row: int = 0
    prior_starts: int = 0  # starts by earlier agents (from STARTS_FILE)
    metrics: dict[str, Any] = field(default_factory=dict)


class ProcessRuntime:
    """Runs instances as child processes under `root` (the agent's state directory)."""

    def __init__(self, root: Path, env: dict[str, str] | None = None,
                 python: str = sys.executable) -> None:
        self.root = root
        self.base_env = env or {}
        self.python = python
        self._instances: dict[str, _Instance] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        # Children are spawned from this one long-lived thread: PR_SET_PDEATHSIG fires
        # when the spawning *thread* exits, so spawning from short-lived threads would
        # kill children early.
        self._thread = threading.Thread(target=self._loop, name="process-runtime", daemon=True)
        self._thread.start()

    # -- desired state -----------------------------------------------------------------
    def apply(self, specs: list[InstanceSpec]) -> None:
        """Converge to exactly `specs`: start new, stop removed, restart changed; an
        instance whose spec changed only in its live part gets its new context file and
        keeps running. When this returns, every context file is the one of `specs`."""
        wanted = {s.key: s for s in specs}
        with self._lock:
            for key in list(self._instances):
                inst = self._instances[key]
                new = wanted.get(key)
                if new is None or new.restart_digest() != inst.restart_digest:
                    self._terminate(inst, reason="removed" if new is None else "updated")
                    del self._instances[key]
                elif new != inst.spec:
                    self._follow_live_part(inst, new)
            for key, spec in wanted.items():
                if key not in self._instances:
                    d = self.root / "instances" / spec.app / spec.name
                    prior = _previous_starts(d, spec)
                    self._instances[key] = _Instance(spec, spec.restart_digest(), d,
                                                     digest=spec.digest(),
                                                     restarts=max(0, prior - 1),
                                                     prior_starts=prior)

    def _follow_live_part(self, inst: _Instance, spec: InstanceSpec) -> None:
        """Same restart digest, new membership: new spec and context file, no restart.

        The file is replaced atomically (never read half-written); an instance not
        started yet (backing off, or never) gets it at its start."""
        inst.spec, inst.digest = spec, spec.digest()
        if inst.dir.exists():
            self._write_context(inst)
        log.info("instance membership updated", instance=spec.key)

    def statuses(self) -> list[InstanceStatus]:
        with self._lock:
            return [self._status(i) for i in self._instances.values()]

    def log_path(self, app: str, name: str) -> Path:
        return self.root / "instances" / app / name / "output.log"

    def close(self) -> None:
        """Stop every instance (agent shutdown)."""
        self._stop.set()
        self._thread.join(timeout=5)
        with self._lock:
            for inst in self._instances.values():
                self._terminate(inst, reason="agent stopped")

    # -- supervision -----------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            with self._lock:
                for inst in list(self._instances.values()):
                    try:
                        self._tend(inst)
                    except Exception:  # never let one instance stop supervision of others
                        log.exception("supervision error", instance=inst.spec.key)

    def _tend(self, inst: _Instance) -> None:
        now = time.time()
        if inst.proc is None:
            if inst.state in ("Failed", "Succeeded") or now < inst.next_start:
                return
            self._start(inst)
            return
        code = inst.proc.poll()
        if code is None:
            if inst.started_at and now - inst.started_at > HEALTHY_AFTER_S:
                inst.failures_in_row = 0
            return
        inst.proc, inst.ps, inst.exit_code = None, None, code
        inst.reason = self._exit_reason(inst, code)
        policy = inst.spec.restart
        if code == 0 and policy != "always":
            inst.state = "Succeeded"
        elif policy == "never":
            inst.state = "Failed"
        else:
            delay = min(BACKOFF_MAX_S, BACKOFF_START_S * 2 ** inst.failures_in_row)
            inst.failures_in_row += 1
            inst.next_start = now + delay
            inst.state = "Restarting"
            log.warning("instance exited", instance=inst.spec.key, code=code,
                        restart_in_s=delay, reason=inst.reason)

    def _start(self, inst: _Instance) -> None:
        spec = inst.spec
        inst.dir.mkdir(parents=True, exist_ok=True)
        (inst.dir / READY_FILE).unlink(missing_ok=True)
        ctx = self._write_context(inst)
        env = {**os.environ, **self.base_env, **spec.env, "EDGECLOUD_CONTEXT": str(ctx),
               "PYTHONUNBUFFERED": "1"}
        argv = ([self.python, "-m", "edgecloud.application.runner"] if spec.kind == "entry"
                else spec.command)
        out = inst.dir / "output.log"
        if out.exists() and out.stat().st_size > LOG_MAX_BYTES:
            out.replace(out.with_suffix(".log.1"))
        try:
            with open(out, "ab") as fh:
                inst.proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, env=env, cwd=inst.dir,
                                             start_new_session=True,
                                             preexec_fn=die_with_parent())  # noqa: PLW1509
        except OSError as exc:
            inst.state, inst.reason = "Failed", f"cannot start {argv[0]!r}: {exc.strerror}"
            log.error("instance start failed", instance=spec.key, reason=inst.reason)
            return
        if inst.started_at is not None or inst.prior_starts:
            inst.restarts += 1  # started before: by us, or by an agent before this one
        inst.started_at = time.time()
        _save_starts(inst)
        inst.state = "Running"
        try:
            inst.ps = psutil.Process(inst.proc.pid)
            inst.ps.cpu_percent(None)
        except psutil.Error:
            inst.ps = None
        log.info("instance started", instance=spec.key, pid=inst.proc.pid)

    @staticmethod
    def _write_context(inst: _Instance) -> Path:
        path = inst.dir / CONTEXT_FILE
        write_private(path, inst.spec.context_json(str(inst.dir)))  # atomic replace
        return path

    def _terminate(self, inst: _Instance, reason: str) -> None:
        proc = inst.proc
        inst.proc = None
        inst.state = "Succeeded"
        if reason != "agent stopped":  # removed or replaced: a later one starts from zero
            (inst.dir / STARTS_FILE).unlink(missing_ok=True)
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        except ProcessLookupError:
            pass
        log.info("instance stopped", instance=inst.spec.key, reason=reason)

    @staticmethod
    def _exit_reason(inst: _Instance, code: int) -> str:
        what = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
        last = _last_line(inst.dir / "output.log")
        return f"{what}: {last}" if last and code != 0 else what

    def _status(self, inst: _Instance) -> InstanceStatus:
        cpu, rss = 0.0, 0
        if inst.ps is not None:
            try:
                cpu = inst.ps.cpu_percent(None)
                rss = inst.ps.memory_info().rss
            except psutil.Error:
                pass
        metrics = _read_json(inst.dir / "metrics.json")
        state = inst.state
        if (state == "Running" and inst.spec.kind == "entry"
                and not (inst.dir / READY_FILE).exists()):
            state = "Pending"  # started, not yet subscribed to its inbox
        return InstanceStatus(
            app=inst.spec.app, name=inst.spec.name, component=inst.spec.component,
            state=state, digest=inst.digest, restarts=inst.restarts,
            pid=inst.proc.pid if inst.proc else None, exit_code=inst.exit_code,
            reason=inst.reason, started_at=inst.started_at, cpu_percent=cpu, memory_rss=rss,
            metrics=metrics)


def _previous_starts(d: Path, spec: InstanceSpec) -> int:
    """How often this instance (same restart digest) was started before, per its
    instance dir."""
    data = _read_json(d / STARTS_FILE)
    starts = data.get("starts")
    if data.get("digest") != spec.restart_digest() or not isinstance(starts, int):
        return 0
    return max(0, starts)


def _save_starts(inst: _Instance) -> None:
    try:
        write_private(inst.dir / STARTS_FILE,
                      json.dumps({"digest": inst.restart_digest, "starts": inst.restarts + 1}))
    except OSError as exc:  # counting is best effort; running the instance is not
        log.warning("cannot record instance start", instance=inst.spec.key, error=str(exc))


def _last_line(path: Path, limit: int = 4096) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, path.stat().st_size - limit))
            lines = [ln for ln in fh.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def _read_json(path: Path) -> dict[str, Any]:
    """The SDK writes its metrics snapshot here; a torn or missing file reads as empty."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
