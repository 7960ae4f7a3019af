"""The supervisor of an embedded run: starts, watches and stops every service process.

`edgecloud up FILE` creates a `Supervisor`, calls `start()` (platform, one broker and one
file server per site, one shaping proxy and one bridge per edge site, one agent per
node), then `watch()` until Ctrl-C or `edgecloud down` (SIGTERM), then `stop()`.
A service that dies is restarted with exponential backoff; one that cannot be restarted
`MAX_RESTART_ATTEMPTS` times in a row is given up and recorded as failed in state.json
(`edgecloud status` shows every service's health). Its log is in
`<home>/logs/<service>.log`. Every service dies with the supervisor (parent-death
signal), so a killed supervisor leaves nothing behind.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from pydantic import BaseModel

from edgecloud.config import Home
from edgecloud.embedded.layout import Layout, load_ports, plan_layout, save_ports
from edgecloud.errors import UserError
from edgecloud.log import get_logger
from edgecloud.procutil import (
    port_in_use,
    port_open,
    process_started,
    spawn_command,
    spawn_service,
    stop_process,
    stop_processes,
    wait_port,
)
from edgecloud.resource.infra import Infrastructure
from edgecloud.resource.protocol import PlatformClient, RegisterInfrastructure, SiteEndpoints
from edgecloud.resource.state import (
    RunState,
    ServiceHealth,
    ServiceRuntime,
    SiteRuntime,
)
from edgecloud.service import Endpoint

log = get_logger("supervisor")

BrokerKind = Literal["amqtt", "mosquitto"]
Progress = Callable[[str], None]

MAX_RESTART_ATTEMPTS = 5  # in a row; then the service is recorded as failed
HEALTHY_AFTER_S = 60.0  # a service that ran this long is forgiven its earlier crashes
RESTART_READY_S = 15.0
# Services get SIGTERM when the supervisor dies: they shut down cleanly (agents stop their
# instances, brokers save their sessions) instead of running on as orphans.
SERVICE_DEATH_SIGNAL = signal.SIGTERM


def already_running(home: Home, pid: object) -> UserError:
    """The refusal of a second `up` on a home in use (which must change nothing)."""
    return UserError(f"an edgecloud infrastructure is already running under {home.root} "
                     f"(supervisor pid {pid}); stop it with `edgecloud down --home "
                     f"{home.root}` or use another --home")


@dataclass
class Service:
    """One supervised child process and how to (re)start it."""

    name: str
    start: Callable[[], subprocess.Popen[bytes]]
    ready: Endpoint | None
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    attempts: int = 0  # restart attempts in a row (the backoff exponent)
    restarts: int = 0  # restarts since the run started
    next_restart: float = 0.0
    started_at: float = field(default_factory=time.monotonic)
    health: ServiceHealth = "running"
    detail: str = ""

    def launch(self, timeout: float = 30.0) -> None:
        if self.ready is not None and port_open(self.ready.host, self.ready.port, 0.2):
            # Else the readiness wait would mistake the other listener for this service.
            raise UserError(f"{self.name}: port {self.ready.host}:{self.ready.port} is "
                            "already in use by another process; stop it or use another "
                            "--home", exit_code=1)
        self.proc = self.start()
        self.started_at = time.monotonic()
        if self.ready is not None:
            wait_port(self.ready.host, self.ready.port, timeout, self.proc, self.name, self.log)
        self.health, self.detail = "running", ""

    def runtime(self) -> ServiceRuntime | None:
        """How state.json records it (None if it never started)."""
        if self.proc is None:
            return None
        alive = self.proc.poll() is None
        return ServiceRuntime(name=self.name, pid=self.proc.pid, log=self.log,
                              started=process_started(self.proc.pid) if alive else None,
                              state=self.health, restarts=self.restarts, detail=self.detail)


class Supervisor:
    """Brings an infrastructure up on this machine and keeps it up."""

    def __init__(self, infra: Infrastructure, infra_file: Path, home: Home,
                 broker: BrokerKind = "amqtt", heartbeat_s: float = 5.0,
                 platform_port: int | None = None) -> None:
        self.infra = infra
        self.infra_file = infra_file.resolve()
        self.home = Home(home.root.resolve())
        self.broker_kind = broker
        self.heartbeat_s = heartbeat_s
        self.platform_port = platform_port
        self.services: list[Service] = []
        self.stopping = threading.Event()
        self._lock_fh: IO[str] | None = None
        self.layout: Layout | None = None
        self.admin_token = ""
        self.restart_backoff_s = 0.5  # first restart delay; doubles per attempt, max 30 s

    # -- locking -------------------------------------------------------------------
    def acquire_home(self) -> None:
        """One supervisor per home: a second `up` on the same home is refused clearly."""
        self.home.root.mkdir(parents=True, exist_ok=True)
        fh = open(self.home.lock_file, "a+")  # noqa: SIM115 - held for the run's lifetime
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            pid = fh.read().strip() or "?"
            fh.close()
            raise already_running(self.home, pid) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._lock_fh = fh

    @property
    def owns_home(self) -> bool:
        return self._lock_fh is not None

    def release_home(self) -> None:
        if self._lock_fh is not None:
            self._lock_fh.close()
            self._lock_fh = None

    # -- start ---------------------------------------------------------------------
    def start(self, progress: Progress = lambda _: None) -> RunState:
        self.acquire_home()
        try:
            return self._start(progress)
        except BaseException:
            self.stop(progress)
            raise

    def _start(self, progress: Progress) -> RunState:
        if self.platform_port and port_in_use("127.0.0.1", self.platform_port):
            raise UserError(f"port {self.platform_port} for the platform is already in use; "
                            "pick another with --port or stop what holds it")
        self.home.state_file.unlink(missing_ok=True)
        self.layout = layout = self._plan_layout(progress)
        self.admin_token = secrets.token_urlsafe(32)
        self.home.write_secret(self.home.admin_token_file, self.admin_token)

        progress("platform")
        self._launch(self._platform_service(layout))
        for site in self.infra.spec.sites:
            progress(f"broker {site.name} ({self.broker_kind})")
            self._launch(self._broker_service(layout, site.name))
            progress(f"file server {site.name}")
            self._launch(self._files_service(layout, site.name))
        for site in self.infra.edges:
            progress(f"WAN emulation {site.name}")
            self._launch(self._wan_service(layout, site.name))
        for site in self.infra.edges:
            progress(f"bridge {site.name} <-> {self.infra.cloud.name}")
            self._launch(self._bridge_service(layout, site.name))

        progress("registering the infrastructure")
        self._register(layout)
        for site in self.infra.spec.sites:
            for node in site.nodes:
                progress(f"agent {node.name}")
                self._launch(self._agent_service(layout, site.name, node.name))
        progress("waiting for nodes to join")
        self._wait_nodes_ready(timeout=60)
        state = self._run_state(layout)
        state.save(self.home)
        return state

    def _plan_layout(self, progress: Progress) -> Layout:
        """The ports of the last run on this home where still free (URLs kept by nodes and
        instances stay valid), new ones otherwise."""

        def moved(what: str, old: int, new: int) -> None:
            log.warning("port of the last run is taken; using another", what=what, old=old,
                        new=new)
            progress(f"port {old} ({what}) is taken: using {new}")

        layout = plan_layout(self.infra, platform_port=self.platform_port,
                             previous=load_ports(self.home.layout_file), on_moved=moved)
        save_ports(self.home.layout_file, layout)
        return layout

    def _launch(self, service: Service) -> None:
        self.services.append(service)
        service.launch()

    # -- service definitions ----------------------------------------------------------
    def _service(self, name: str, module: str, config: BaseModel,
                 ready: Endpoint | None) -> Service:
        log_file = self.home.log_file(name)
        return Service(name, lambda: spawn_service(name, module, config, self.home.run,
                                                   log_file,
                                                   parent_death_signal=SERVICE_DEATH_SIGNAL),
                       ready, log_file)

    def _platform_service(self, layout: Layout) -> Service:
        from edgecloud.platform.server import PlatformConfig

        db = self.home.platform_dir / "platform.db"
        db.parent.mkdir(parents=True, exist_ok=True)
        cfg = PlatformConfig(listen=layout.platform, db_url=f"sqlite:///{db}",
                             admin_token_file=self.home.admin_token_file,
                             heartbeat_interval_s=self.heartbeat_s)
        return self._service("platform", "edgecloud.platform.server", cfg, layout.platform)

    def _broker_service(self, layout: Layout, site: str) -> Service:
        from edgecloud.resource.broker import BrokerConfig

        s = layout.sites[site]
        cfg = BrokerConfig(site=site, listen=s.broker, kind=self.broker_kind,
                           data_dir=self.home.site_dir(site) / "broker")
        return self._service(f"broker-{site}", "edgecloud.resource.broker", cfg, s.broker)

    def _files_service(self, layout: Layout, site: str) -> Service:
        from edgecloud.resource.files.server import FileServerConfig
        from edgecloud.resource.files.store import DirStoreConfig

        s = layout.sites[site]
        d = self.home.site_dir(site)
        cfg = FileServerConfig(site=site, listen=s.files,
                               store=DirStoreConfig(kind="dir", path=d / "objects"),
                               cache_dir=d / "cache", peers=layout.file_peers(site))
        return self._service(f"files-{site}", "edgecloud.resource.files.server", cfg, s.files)

    def _wan_service(self, layout: Layout, site: str) -> Service:
        from edgecloud.resource.wan import LinkSettings, Route, WanConfig

        s = layout.sites[site]
        assert s.wan_control is not None
        routes = [Route(name=name, listen=s.routes[name], target=target, initiator=side)
                  for name, (target, side) in s.route_targets.items()]
        cfg = WanConfig(site=site, control=s.wan_control, routes=routes,
                        link=LinkSettings.from_spec(self.infra.site(site).wan),
                        state_file=self.home.site_dir(site) / "wan.json")
        return self._service(f"wan-{site}", "edgecloud.resource.wan", cfg, s.wan_control)

    def _bridge_service(self, layout: Layout, site: str) -> Service:
        from edgecloud.resource.bridge import BridgeConfig

        s = layout.sites[site]
        # Only what crosses sites enters the bridge (the cloud and the other edge sites).
        remote = [other.name for other in self.infra.spec.sites if other.name != site]
        cfg = BridgeConfig(site=site, local=s.broker, cloud=s.routes["mqtt"],
                           data_dir=self.home.site_dir(site) / "bridge", remote_sites=remote)
        return self._service(f"bridge-{site}", "edgecloud.resource.bridge", cfg, None)

    def _agent_service(self, layout: Layout, site: str, node: str) -> Service:
        spec = next(n for n in self.infra.site(site).nodes if n.name == node)
        # A file, not --token: a command line is visible to every user in `ps`.
        token_file = self.home.join_token_file(node)
        self.home.write_secret(token_file, self._join_token(site))
        r = spec.resources
        argv = [sys.executable, "-m", "edgecloud.cli.main", "agent",
                "--platform", layout.platform_url_for(site), "--token-file", str(token_file),
                "--site", site, "--name", node,
                "--resources", f"cpu={r.cpu:g},memory={r.memory},gpu={r.gpu}",
                "--speed", f"{spec.speed:g}",
                "--state-dir", str(self.home.node_dir(node)),
                "--heartbeat", f"{self.heartbeat_s:g}"]
        for key, value in spec.labels.items():
            argv += ["--labels", f"{key}={value}"]
        log_file = self.home.log_file(f"agent-{node}")
        return Service(f"agent-{node}",
                       lambda: spawn_command(f"agent-{node}", argv, log_file,
                                             parent_death_signal=SERVICE_DEATH_SIGNAL),
                       None, log_file)

    # -- platform calls ----------------------------------------------------------------
    def _api(self) -> PlatformClient:
        """The platform API as admin; a dead or failing platform raises a UserError that
        names it (never an httpx traceback)."""
        assert self.layout is not None
        return PlatformClient(self.layout.platform.url("http"), self.admin_token)

    def _register(self, layout: Layout) -> None:
        sites = {name: SiteEndpoints(broker=layout.broker_url_for(name),
                                     files=layout.files_url_for(name),
                                     platform=layout.platform_url_for(name))
                 for name in layout.sites}
        with self._api() as api:
            api.register_infrastructure(RegisterInfrastructure(infrastructure=self.infra,
                                                               sites=sites))

    def _join_token(self, site: str) -> str:
        with self._api() as api:
            return api.create_token(site).token

    def node_states(self) -> dict[str, str]:
        with self._api() as api:
            doc = api.status()
        return {n["name"]: n["state"] for s in doc["sites"] for n in s["nodes"]}

    def _wait_nodes_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            states = self.node_states()
            if states and all(v == "Ready" for v in states.values()):
                return
            self._check_alive()
            time.sleep(0.2)
        missing = sorted(n for n, v in states.items() if v != "Ready")
        raise UserError(f"nodes did not become Ready within {timeout:.0f}s: "
                        f"{', '.join(missing)}; see {self.home.logs}/agent-<node>.log",
                        exit_code=1)

    def _check_alive(self) -> None:
        for svc in self.services:
            if svc.proc is not None and svc.proc.poll() is not None:
                raise UserError(f"{svc.name} exited with code {svc.proc.returncode} during "
                                f"start-up; see {svc.log}", exit_code=1)

    def _run_state(self, layout: Layout) -> RunState:
        sites = [SiteRuntime(name=s.name, kind=s.kind,
                             broker=s.broker, files=s.files, wan_control=s.wan_control,
                             routes=s.routes) for s in layout.sites.values()]
        services = [rt for rt in (svc.runtime() for svc in self.services) if rt is not None]
        return RunState(infra=self.infra.name, infra_file=self.infra_file, home=self.home.root,
                        supervisor_pid=os.getpid(),
                        broker_kind=self.broker_kind,
                        platform=layout.platform, sites=sites, services=services)

    # -- watch and stop ----------------------------------------------------------------
    def watch(self, poll_s: float = 0.5) -> None:
        """Restart dead services with backoff until `stopping` is set.

        Nothing a service does stops the watching: a failed restart (its binary gone, its
        port taken, an OSError) is logged and retried, and after MAX_RESTART_ATTEMPTS in a
        row the service is recorded as failed and left alone.
        """
        while not self.stopping.wait(poll_s):
            changed = False
            for svc in self.services:
                try:
                    changed = self._tend(svc) or changed
                except Exception as exc:  # the watch must outlive any one service
                    log.exception("supervising a service failed", service=svc.name)
                    svc.detail = f"{type(exc).__name__}: {exc}"
            if changed:
                self._save_state()

    def _save_state(self) -> None:
        if self.layout is None or self.stopping.is_set():
            return
        try:
            self._run_state(self.layout).save(self.home)
        except OSError as exc:
            log.error("cannot save the run state", file=str(self.home.state_file),
                      error=str(exc))

    def _tend(self, svc: Service) -> bool:
        """One watch step for one service; True if what state.json says about it changed."""
        if svc.health == "failed" or (svc.proc is not None and svc.proc.poll() is None):
            return False
        now = time.monotonic()
        if svc.next_restart == 0.0:  # just found dead (or a restart just failed)
            if now - svc.started_at > HEALTHY_AFTER_S:
                svc.attempts = 0
            code = svc.proc.returncode if svc.proc is not None else None
            if svc.attempts >= MAX_RESTART_ATTEMPTS:
                svc.health = "failed"
                svc.detail = (f"gave up after {svc.attempts} restart attempts "
                              f"(last exit code {code}); see {svc.log}")
                log.error("service failed; not restarting it again", service=svc.name,
                          attempts=svc.attempts, code=code, log=str(svc.log))
                return True
            delay = min(30.0, self.restart_backoff_s * 2 ** svc.attempts)
            svc.next_restart = now + delay
            svc.health = "restarting"
            if not svc.detail:
                svc.detail = f"exited with code {code}"
            log.warning("service exited", service=svc.name, code=code, restart_in_s=delay)
            return True
        if now < svc.next_restart:
            return False
        svc.attempts += 1
        svc.restarts += 1
        svc.next_restart = 0.0
        try:
            svc.launch(timeout=RESTART_READY_S)
            log.info("service restarted", service=svc.name, restarts=svc.restarts)
        except (UserError, OSError) as exc:
            svc.started_at = time.monotonic()  # a failed attempt is no healthy run
            svc.detail = str(exc).splitlines()[0]
            log.error("restart failed", service=svc.name, attempt=svc.attempts, error=str(exc))
            if svc.proc is not None and svc.proc.poll() is None:
                stop_process(svc.proc, timeout=5)  # started but never ready: try again later
        return True

    def stop(self, progress: Progress = lambda _: None) -> None:
        """Stop the agents (and with them their instances) first, then every service;
        each phase signals all its processes at once and waits at most 10 s.

        A supervisor that does not hold the home (refused, or stopped already) touches
        nothing: the state under the home belongs to another run."""
        self.stopping.set()
        if not self.owns_home:
            return
        agents = [s for s in self.services if s.name.startswith("agent-")]
        others = [s for s in self.services if not s.name.startswith("agent-")]
        for phase, group in (("agents", agents), ("services", others)):
            running = [s.proc for s in group if s.proc is not None and s.proc.poll() is None]
            if running:
                progress(f"stopping {len(running)} {phase}")
                stop_processes(running, timeout=10)
        self.home.state_file.unlink(missing_ok=True)
        for node in (n.name for site in self.infra.spec.sites for n in site.nodes):
            self.home.join_token_file(node).unlink(missing_ok=True)
        self.release_home()
