"""Node agents as real processes against a real platform process: join, readiness, crash
and restart, platform restart, removal, bad tokens, and the in-process assignment hook."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edgecloud.platform.server import PlatformConfig
from edgecloud.procutil import free_port, spawn_command, spawn_service, stop_process, wait_port
from edgecloud.resource.agent import AgentConfig, AgentError, run_agent
from edgecloud.resource.infra import load_infrastructure
from edgecloud.resource.protocol import (
    Assignment,
    PlatformClient,
    RegisterInfrastructure,
    SiteEndpoints,
)
from edgecloud.service import Endpoint
from tests.support import wait_for

INFRA_FILE = Path(__file__).resolve().parents[1] / "examples" / "infra" / "local.yaml"
HB = 0.3
ADMIN = "admin-token-for-agent-tests-0123456789"




class PlatformProc:
    """A platform process that tests can stop and start again on the same port and DB."""

    def __init__(self, d: Path) -> None:
        self.dir = d
        (d / "admin.token").write_text(ADMIN)
        self.endpoint = Endpoint(port=free_port())
        self.url = self.endpoint.url("http")
        self.config = PlatformConfig(listen=self.endpoint,
                                     db_url=f"sqlite:///{d / 'platform.db'}",
                                     admin_token_file=d / "admin.token",
                                     heartbeat_interval_s=HB)
        self.log = d / "platform.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = spawn_service("platform", "edgecloud.platform.server", self.config, self.dir,
                                  self.log)
        wait_port(self.endpoint.host, self.endpoint.port, 20, self.proc, "platform", self.log)

    def stop(self) -> int | None:
        assert self.proc is not None
        return stop_process(self.proc, timeout=10)

    def admin(self) -> PlatformClient:
        return PlatformClient(self.url, ADMIN)

    def token(self, site: str) -> str:
        with self.admin() as c:
            return c.create_token(site).token

    def state(self, site: str, name: str) -> str:
        with self.admin() as c:
            return c.node(site, name).state


@pytest.fixture(scope="module")
def plat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlatformProc]:
    p = PlatformProc(tmp_path_factory.mktemp("platform"))
    p.start()
    infra = load_infrastructure(INFRA_FILE)
    sites = {s.name: SiteEndpoints(broker="mqtt://127.0.0.1:1883", files="http://127.0.0.1:9000",
                                   platform=p.url) for s in infra.spec.sites}
    with p.admin() as c:
        c.register_infrastructure(RegisterInfrastructure(infrastructure=infra, sites=sites))
    try:
        yield p
    finally:
        assert p.stop() == 0, p.log.read_text()


def spawn_agent(p: PlatformProc, site: str, name: str, state_dir: Path, log: Path,
                token: str | None = None, *extra: str) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "edgecloud.cli.main", "agent", "--platform", p.url,
            "--site", site, "--name", name, "--state-dir", str(state_dir),
            "--heartbeat", str(HB), *extra]
    if token:
        argv += ["--token", token]
    return spawn_command(f"agent-{name}", argv, log)


@pytest.fixture
def agents() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        stop_process(proc, timeout=5)


def test_agent_joins_crashes_and_comes_back(plat: PlatformProc, tmp_path: Path,
                                            agents: list[subprocess.Popen[bytes]]) -> None:
    state, log = tmp_path / "state", tmp_path / "agent.log"
    agents.append(spawn_agent(plat, "ec-1", "ec-1-rpi1", state, log, plat.token("ec-1"),
                              "--labels", "camera=true", "--labels", "zone=a",
                              "--resources", "cpu=4,memory=4Gi,gpu=0", "--speed", "0.25"))
    wait_for(lambda: plat.state("ec-1", "ec-1-rpi1") == "Ready", 15, "node Ready")
    with plat.admin() as c:
        node = c.node("ec-1", "ec-1-rpi1")
    assert node.labels == {"camera": "true", "zone": "a"} and node.speed == 0.25
    assert node.resources.memory == 4 << 30 and node.metrics["memory_total"] > 0
    assert stat.S_IMODE((state / "node.json").stat().st_mode) == 0o600
    wait_for(lambda: (state / "assignment.json").exists(), 5, "assignment saved")

    with plat.admin() as c:  # a new assignment reaches the agent's disk promptly
        c.request("PUT", "/nodes/ec-1/ec-1-rpi1/assignment", "assign",
                  json={"instances": [{"name": "cam-0"}]})
    saved = wait_for(lambda: _saved_revision(state) >= 1 and _saved(state), 3, "assignment")
    assert saved.instances == [{"name": "cam-0"}]

    os.killpg(agents[0].pid, signal.SIGKILL)
    agents[0].wait(5)
    t0 = time.monotonic()
    wait_for(lambda: plat.state("ec-1", "ec-1-rpi1") == "NotReady", 3 * HB + 1.5,
               "NotReady after the agent died")
    assert time.monotonic() - t0 >= 2 * HB

    # Restarted with the same state dir and no join token: the saved node token is used.
    agents.append(spawn_agent(plat, "ec-1", "ec-1-rpi1", state, log))
    wait_for(lambda: plat.state("ec-1", "ec-1-rpi1") == "Ready", 15, "Ready after restart")
    text = log.read_text()
    assert "using saved node token" in text and "last assignment from disk" in text


def _saved(state: Path) -> Assignment:
    return Assignment.model_validate_json((state / "assignment.json").read_text())


def _saved_revision(state: Path) -> int:
    try:
        return _saved(state).revision
    except (OSError, ValueError):
        return -1


def test_platform_restart_agent_reconnects(plat: PlatformProc, tmp_path: Path,
                                           agents: list[subprocess.Popen[bytes]]) -> None:
    log = tmp_path / "agent.log"
    agents.append(spawn_agent(plat, "ec-1", "ec-1-pc", tmp_path / "state", log,
                              plat.token("ec-1")))
    wait_for(lambda: plat.state("ec-1", "ec-1-pc") == "Ready", 15, "node Ready")
    time.sleep(0.5)  # let the agent's long-poll be in flight while the platform stops
    t0 = time.monotonic()
    assert plat.stop() == 0
    assert time.monotonic() - t0 < 4, "platform shutdown was held up by a long-poll"
    wait_for(lambda: "platform unreachable" in log.read_text(), 5, "agent notices")
    time.sleep(0.5)
    assert agents[0].poll() is None, "the agent must keep running without the platform"
    restarted = datetime.now(UTC)
    plat.start()
    with plat.admin() as c:
        def fresh_beat() -> bool:
            n = c.node("ec-1", "ec-1-pc")
            return n.state == "Ready" and n.last_heartbeat is not None \
                and n.last_heartbeat > restarted
        wait_for(fresh_beat, 15, "heartbeats after the platform restart")
    assert agents[0].poll() is None
    wait_for(lambda: "platform reachable again" in log.read_text(), 5, "reconnect logged")


def test_removed_node_agent_exits(plat: PlatformProc, tmp_path: Path,
                                  agents: list[subprocess.Popen[bytes]]) -> None:
    state, log = tmp_path / "state", tmp_path / "agent.log"
    agents.append(spawn_agent(plat, "ec-2", "ec-2-rpi1", state, log, plat.token("ec-2")))
    wait_for(lambda: plat.state("ec-2", "ec-2-rpi1") == "Ready", 15, "node Ready")
    with plat.admin() as c:
        c.delete_node("ec-2", "ec-2-rpi1")
    assert agents[0].wait(10) == 1
    assert "node was removed or its token revoked" in log.read_text()
    assert (state / "node.json.revoked").exists() and not (state / "node.json").exists()


def test_bad_join_token_fails_clearly(plat: PlatformProc, tmp_path: Path,
                                      agents: list[subprocess.Popen[bytes]]) -> None:
    log = tmp_path / "agent.log"
    agents.append(spawn_agent(plat, "cloud", "cc-1", tmp_path / "s", log, "garbage-token"))
    assert agents[0].wait(10) == 1
    text = log.read_text()
    assert "invalid token" in text and "edgecloud token create --site cloud" in text
    assert "Traceback" not in text


def test_in_process_agent_hook_and_offline_start(plat: PlatformProc, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "assignment.json").write_text(Assignment(revision=7, instances=[{"name": "x"}])
                                           .model_dump_json())
    seen: list[Assignment] = []
    stop = threading.Event()
    dead = f"http://127.0.0.1:{free_port()}"
    cfg = AgentConfig(platform_url=dead, site="cloud", name="cc-1", join_token="t",
                      state_dir=state, heartbeat_interval_s=HB)
    t = threading.Thread(target=run_agent, args=(cfg, stop, seen.append))
    t.start()
    # Unreachable platform: the last assignment from disk is delivered anyway.
    wait_for(lambda: seen, 3, "assignment from disk")
    assert seen[0].revision == 7
    stop.set()
    t.join(5)
    assert not t.is_alive()

    seen.clear()
    stop.clear()
    cfg = cfg.model_copy(update={"platform_url": plat.url, "join_token": plat.token("cloud")})
    errors: list[BaseException] = []

    def run() -> None:
        try:
            run_agent(cfg, stop, seen.append)
        except AgentError as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    try:
        # The platform's revision (0) differs from the stale one on disk: it wins.
        wait_for(lambda: any(a.revision == 0 for a in seen), 5, "platform assignment")
        with plat.admin() as c:
            c.request("PUT", "/nodes/cloud/cc-1/assignment", "assign",
                      json={"instances": [{"name": "y"}]})
        wait_for(lambda: seen[-1].revision == 1, 3, "hook on new assignment")
        assert seen[-1].instances == [{"name": "y"}] and _saved(state).revision == 1
    finally:
        stop.set()
        t.join(5)
    assert not errors and not t.is_alive()
