"""The node agent: joins the platform once, heartbeats, and follows the node's assignment.

    run_agent(AgentConfig(platform_url=..., site="ec-1", name="ec-1-pc",
                          join_token=..., state_dir=Path(".edgecloud/nodes/ec-1-pc")))

All traffic is outbound HTTP to the platform (NAT friendly). State kept in `state_dir`:
`node.json` (node id and token, mode 0600; a restarted agent needs no new join token) and
`assignment.json` (the last desired instance set; served from disk while the platform is
unreachable). Reconnects use exponential backoff with jitter, capped at ~10 s.

An assignment the agent fails to apply (the node runtime raises, the disk is full) does
not stop it from following later ones: the failure goes into the next heartbeats'
`problems` and the apply is retried with backoff until it succeeds. When the platform
answers a heartbeat with other site endpoints (broker, file server) than node.json's, the
agent saves them and hands them to the node runtime.
"""

from __future__ import annotations

import json
import os
import random
import socket
import threading
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import psutil
from pydantic import BaseModel, Field, ValidationError

from edgecloud.config import write_private
from edgecloud.errors import UserError
from edgecloud.log import get_logger
from edgecloud.resource.infra import Resources
from edgecloud.resource.node import NodeRuntime
from edgecloud.resource.protocol import (
    Assignment,
    Heartbeat,
    HeartbeatResponse,
    JoinRequest,
    NodeMetrics,
    PlatformClient,
    PlatformError,
    PlatformUnreachable,
)

log = get_logger("agent")

LONG_POLL_S = 30.0
MAX_BACKOFF_S = 10.0
_MAX_DOUBLINGS = 64
MAX_PROBLEMS = 20  # heartbeats carry at most this many (the newest)
AssignmentHook = Callable[[Assignment], None]


class AgentConfig(BaseModel):
    """What `edgecloud agent` is told on its command line."""

    platform_url: str
    site: str
    name: str
    join_token: str | None = None
    labels: dict[str, str] = {}
    resources: Resources | None = Field(None, description="declared capacity; None = detect")
    speed: float = Field(1.0, gt=0)
    state_dir: Path
    heartbeat_interval_s: float | None = Field(None, gt=0, description="None = platform's")


class NodeCredentials(BaseModel):
    """What the agent keeps from its join (state_dir/node.json, mode 0600)."""

    node_id: str
    node_token: str
    site: str
    name: str
    heartbeat_interval_s: float
    broker: str
    files: str


class AgentError(UserError):
    """The agent cannot go on (bad join token, node removed); exits non-zero."""

    exit_code = 1


class Backoff:
    """Exponential backoff with jitter: base, 2 x base, ... capped at `cap` seconds."""

    def __init__(self, base: float = 0.5, cap: float = MAX_BACKOFF_S) -> None:
        self.base, self.cap, self.failures = base, cap, 0

    def next(self) -> float:
        # The exponent stops growing long past any cap: 2.0 ** 1024 overflows a float, which
        # would end the retry loop after some hours of platform outage.
        delay = min(self.cap, self.base * 2.0 ** min(self.failures, _MAX_DOUBLINGS))
        self.failures += 1
        # Jitter spreads the reconnects of many agents after a platform restart.
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.failures = 0


def detect_resources() -> Resources:
    """This host's capacity (cores, memory bytes; GPUs are not detected)."""
    return Resources(cpu=float(psutil.cpu_count() or 1), memory=psutil.virtual_memory().total,
                     gpu=0)


def host_metrics(disk_path: Path) -> NodeMetrics:
    """psutil metrics of this host for a heartbeat."""
    mem = psutil.virtual_memory()
    disk = psutil.disk_usage(str(disk_path))
    load = os.getloadavg() if hasattr(os, "getloadavg") else (None, None, None)
    return NodeMetrics(cpu_percent=psutil.cpu_percent(interval=None), memory_used=mem.used,
                       memory_total=mem.total, disk_used=disk.used, disk_total=disk.total,
                       load1=load[0], load5=load[1], load15=load[2])


def agent_version() -> str:
    try:
        return metadata.version("edgecloud")
    except metadata.PackageNotFoundError:
        return "0+unknown"


class Agent:
    """One node's agent; `run()` blocks until `stop` is set or a fatal error."""

    def __init__(self, config: AgentConfig, stop: threading.Event | None = None,
                 on_assignment: AssignmentHook | None = None, run_instances: bool = False
                 ) -> None:
        """`run_instances`: run the assigned instances (NodeRuntime) and report them;
        otherwise only `on_assignment` sees assignments (tests, embedding)."""
        self.config = config
        self.stop = stop or threading.Event()
        self.on_assignment = on_assignment
        self.run_instances = run_instances
        self.node: NodeRuntime | None = None
        self.state_dir = config.state_dir
        self.revision = -1
        self.fatal: AgentError | None = None
        self._poke = threading.Event()  # wakes the poller out of a backoff wait
        self._creds: NodeCredentials | None = None
        # Problems not yet cleared; the first `_resolved` of them were followed by a
        # success and are dropped once a heartbeat has carried them to the platform.
        self._problems: list[str] = []
        self._resolved = 0
        self._problems_lock = threading.Lock()

    @property
    def token_file(self) -> Path:
        return self.state_dir / "node.json"

    @property
    def assignment_file(self) -> Path:
        return self.state_dir / "assignment.json"

    # -- lifecycle -------------------------------------------------------------------------
    def run(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # A node that joined before has its credentials on disk: it starts its last
        # assignment at once, whether the platform is reachable or not.
        saved_creds = self.load_credentials()
        if saved_creds is not None:
            self._start_node(saved_creds)
        saved = self.load_assignment()
        if saved is not None:
            log.info("last assignment from disk", revision=saved.revision,
                     instances=len(saved.instances))
            try:
                self._deliver(saved)
            except Exception as exc:  # the poller fetches it again and retries
                self._problem(f"assignment revision {saved.revision} (from disk)", exc)
        creds = self._credentials()
        if creds is None:  # stopped while joining
            return
        self._creds = creds
        self._start_node(creds)
        poller = threading.Thread(target=self._poll_loop, name="assignment-poll", daemon=True)
        poller.start()
        try:
            self._heartbeat_loop(creds)
        finally:
            self.stop.set()
            self._poke.set()
            # A long-poll in flight may take up to LONG_POLL_S: abandon it (daemon thread,
            # it applies nothing once `stop` is set) rather than delay the exit.
            poller.join(timeout=0.3)
            if self.node is not None:
                self.node.close()
        if self.fatal is not None:
            raise self.fatal
        log.info("agent stopped", node=creds.node_id)

    def _start_node(self, creds: NodeCredentials) -> None:
        if self.run_instances and self.node is None:
            self.node = NodeRuntime(self.state_dir, creds.site, creds.files, creds.broker)

    def _fail(self, message: str) -> None:
        if self.fatal is None:
            self.fatal = AgentError(message)
        self.stop.set()
        self._poke.set()

    # -- join ------------------------------------------------------------------------------
    def load_credentials(self) -> NodeCredentials | None:
        try:
            creds = NodeCredentials.model_validate_json(self.token_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValidationError) as exc:
            raise AgentError(f"{self.token_file}: unreadable node credentials ({exc}); "
                             "delete it and join again with a new join token") from None
        if (creds.site, creds.name) != (self.config.site, self.config.name):
            raise AgentError(f"{self.token_file} belongs to node {creds.site}/{creds.name}, not "
                             f"{self.config.site}/{self.config.name}; use another --state-dir")
        return creds

    def _credentials(self) -> NodeCredentials | None:
        creds = self.load_credentials()
        if creds is not None:
            log.info("using saved node token", node=creds.node_id, file=str(self.token_file),
                     join_token_ignored=self.config.join_token is not None)
            return creds
        if not self.config.join_token:
            raise AgentError(f"node {self.config.site}/{self.config.name} has not joined yet "
                             f"(no {self.token_file}); pass a join token: --token TOKEN "
                             f"(create one with `edgecloud token create --site "
                             f"{self.config.site}`)")
        return self._join(self.config.join_token)

    def _join(self, join_token: str) -> NodeCredentials | None:
        cfg = self.config
        req = JoinRequest(site=cfg.site, name=cfg.name, labels=cfg.labels,
                          resources=cfg.resources, detected=detect_resources(), speed=cfg.speed,
                          agent_version=agent_version(), hostname=socket.gethostname())
        backoff = Backoff()
        with PlatformClient(cfg.platform_url, join_token) as client:
            while not self.stop.is_set():
                try:
                    resp = client.join(req)
                    break
                except PlatformUnreachable as exc:
                    delay = backoff.next()
                    log.warning("platform unreachable, join retry", error=str(exc),
                                retry_in_s=round(delay, 2))
                    self.stop.wait(delay)
                except PlatformError as exc:
                    raise AgentError(self._join_hint(exc)) from None
            else:
                return None
        creds = NodeCredentials(node_id=resp.node_id, node_token=resp.node_token, site=cfg.site,
                                name=cfg.name, heartbeat_interval_s=resp.heartbeat_interval_s,
                                broker=resp.broker, files=resp.files)
        write_private(self.token_file, creds.model_dump_json(indent=2))
        log.info("joined", node=creds.node_id, platform=cfg.platform_url, broker=resp.broker,
                 files=resp.files)
        return creds

    def _join_hint(self, exc: PlatformError) -> str:
        cfg = self.config
        what = f"joining {cfg.platform_url} as {cfg.site}/{cfg.name} failed: {exc.detail}"
        if exc.status == 401:
            return (f"{what}. Create a fresh join token with `edgecloud token create --site "
                    f"{cfg.site}` and pass it with --token")
        if exc.status == 404:
            return f"{what}. Check --site against the registered infrastructure"
        return what

    # -- heartbeat ---------------------------------------------------------------------------
    def _heartbeat_loop(self, creds: NodeCredentials) -> None:
        interval = self.config.heartbeat_interval_s or creds.heartbeat_interval_s
        psutil.cpu_percent(interval=None)  # primes the counter; the first reading is 0.0
        # Retries never wait much longer than the platform's NotReady window (3 beats):
        # after a platform hiccup (a restart, a burst of errors under load) the node is
        # Ready again within a few beats, not after a 10 s backoff.
        backoff = Backoff(base=min(1.0, interval),
                          cap=min(MAX_BACKOFF_S, max(1.0, 3 * interval)))
        connected = True
        with PlatformClient(self.config.platform_url, creds.node_token,
                            timeout=max(5.0, 2 * interval)) as client:
            while not self.stop.is_set():
                instances, logs = self.node.report() if self.node else ([], {})
                with self._problems_lock:
                    problems, resolved = list(self._problems), self._resolved
                beat = Heartbeat(metrics=host_metrics(self.state_dir), instances=instances,
                                 logs=logs, interval_s=self.config.heartbeat_interval_s,
                                 problems=problems)
                wait = interval
                try:
                    resp = client.heartbeat(creds.site, creds.name, beat)
                    self._problems_reported(resolved)
                    creds = self._follow_endpoints(creds, resp)
                    if not connected:
                        log.info("platform reachable again", platform=self.config.platform_url)
                        self._poke.set()
                    connected = True
                    backoff.reset()
                    if resp.revision != self.revision:
                        self._poke.set()
                except PlatformUnreachable as exc:
                    wait = backoff.next()
                    if connected:
                        log.warning("platform unreachable; running the last assignment "
                                    "from disk and retrying", error=str(exc))
                    connected = False
                    log.info("heartbeat retry", retry_in_s=round(wait, 2))
                except PlatformError as exc:
                    if exc.status == 401:
                        self._revoked(exc)
                        return
                    wait = backoff.next()
                    log.warning("heartbeat refused", status=exc.status, detail=exc.detail)
                self.stop.wait(wait)

    # -- problems and endpoints --------------------------------------------------------------
    def _problem(self, what: str, exc: BaseException) -> None:
        """Record what the agent could not do; the next heartbeats carry it."""
        text = f"{what}: {type(exc).__name__}: {exc}"
        log.error("agent problem", problem=text)
        with self._problems_lock:
            if self._problems and self._problems[-1] == text:
                return  # a retry failing the same way is one problem, not many
            self._problems.append(text)
            overflow = len(self._problems) - MAX_PROBLEMS
            if overflow > 0:
                del self._problems[:overflow]
                self._resolved = max(0, self._resolved - overflow)

    def _problems_solved(self) -> None:
        with self._problems_lock:
            self._resolved = len(self._problems)

    def _problems_reported(self, resolved: int) -> None:
        # Problems solved before this heartbeat left have now reached the platform.
        with self._problems_lock:
            drop = min(resolved, self._resolved, len(self._problems))
            del self._problems[:drop]
            self._resolved -= drop

    @property
    def problems(self) -> list[str]:
        """Problems the next heartbeat reports, oldest first."""
        with self._problems_lock:
            return list(self._problems)

    def _follow_endpoints(self, creds: NodeCredentials,
                          resp: HeartbeatResponse) -> NodeCredentials:
        """Adopt the site endpoints the platform answers with when they moved."""
        broker = resp.broker or creds.broker
        files = resp.files or creds.files
        if (broker, files) == (creds.broker, creds.files):
            return creds
        log.info("site endpoints changed", broker_was=creds.broker, broker=broker,
                 files_was=creds.files, files=files)
        creds = creds.model_copy(update={"broker": broker, "files": files})
        try:
            write_private(self.token_file, creds.model_dump_json(indent=2))
        except OSError as exc:
            self._problem(f"saving new endpoints to {self.token_file}", exc)
        self._creds = creds
        if self.node is not None:
            self.node.set_endpoints(broker, files)
        return creds

    def _revoked(self, exc: PlatformError) -> None:
        # Keep the dead token aside so that a start with a new join token re-joins.
        revoked = self.token_file.with_suffix(".json.revoked")
        self.token_file.replace(revoked)
        self._fail(f"the platform rejected the token of node {self.config.site}/"
                   f"{self.config.name} ({exc.detail}): the node was removed or its token "
                   f"revoked. Moved it to {revoked}; join again with a new token from "
                   f"`edgecloud token create --site {self.config.site}`")

    # -- assignment --------------------------------------------------------------------------
    def _poll_loop(self) -> None:
        creds = self._creds
        assert creds is not None
        backoff = Backoff()
        apply_backoff = Backoff(base=1.0, cap=30.0)
        synced = False
        with PlatformClient(self.config.platform_url, creds.node_token) as client:
            while not self.stop.is_set():
                try:
                    # After (re)connecting, fetch the current assignment at once: the
                    # platform's revision may be lower than ours (its database was reset).
                    a = client.assignment(creds.site, creds.name,
                                          after=self.revision if synced else -1,
                                          wait=LONG_POLL_S if synced else 0.0)
                    synced = True
                    backoff.reset()
                except PlatformUnreachable:
                    synced = False  # the heartbeat loop logs connectivity; just retry
                except PlatformError as exc:
                    if exc.status == 401:
                        return  # the heartbeat loop reports revocation
                    log.warning("assignment fetch refused", status=exc.status,
                                detail=exc.detail)
                except Exception as exc:  # e.g. an answer that does not parse: keep polling
                    synced = False
                    self._problem("fetching the assignment", exc)
                else:
                    # Any different revision is the platform's truth.
                    if a.revision == self.revision or self.stop.is_set():
                        continue
                    if self._try_apply(a):
                        apply_backoff.reset()
                        continue
                    # Not `_poke`: heartbeats poke while our revision lags, which would
                    # turn the backoff into a retry per heartbeat.
                    synced = False
                    self.stop.wait(apply_backoff.next())
                    continue
                self._poke.wait(backoff.next())
                self._poke.clear()

    def _try_apply(self, a: Assignment) -> bool:
        """Apply `a`; on failure record the problem (the caller retries) and return False."""
        try:
            self.apply(a)
        except Exception as exc:
            self._problem(f"applying assignment revision {a.revision}", exc)
            return False
        self._problems_solved()
        return True

    def apply(self, a: Assignment) -> None:
        """Save a new assignment to disk, then run it and hand it to `on_assignment`.

        Raises whatever failed; `revision` advances only once everything succeeded.
        """
        write_private(self.assignment_file, a.model_dump_json(indent=2))
        log.info("assignment", revision=a.revision, instances=len(a.instances))
        self._deliver(a)

    def load_assignment(self) -> Assignment | None:
        try:
            a = Assignment.model_validate(json.loads(self.assignment_file.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable assignment file", file=str(self.assignment_file),
                        error=str(exc))
            return None
        return a

    def _deliver(self, a: Assignment) -> None:
        if self.node is not None:
            self.node.apply(a.instances)
        if self.on_assignment is not None:
            self.on_assignment(a)
        self.revision = a.revision


def run_agent(config: AgentConfig, stop: threading.Event | None = None,
              on_assignment: AssignmentHook | None = None, run_instances: bool = True) -> None:
    """Run a node agent until `stop` is set; raises AgentError if it cannot go on."""
    Agent(config, stop, on_assignment, run_instances).run()
