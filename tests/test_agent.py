"""Node agents as real processes against a real platform process: join, readiness, crash
and restart, platform restart, removal, bad tokens, and the in-process assignment hook."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgecloud.procutil import free_port, spawn_command, stop_process
from edgecloud.resource.agent import Agent, AgentConfig, AgentError, run_agent
from edgecloud.resource.infra import load_infrastructure
from edgecloud.resource.protocol import (
    Assignment,
    SiteEndpoints,
)
from edgecloud.resource.runtime import InstanceSpec
from tests.conftest import PlatformProc
from tests.support import wait_for

INFRA_FILE = Path(__file__).resolve().parents[1] / "examples" / "infra" / "local.yaml"

def spec(name: str) -> InstanceSpec:
    """A minimal instance of a command component (the agents here run no instances)."""
    return InstanceSpec(app="t", name=name, component=name.rsplit("-", 1)[0], kind="command",
                        command=["true"])


HB = 0.3
PLATFORM_HEARTBEAT_S = HB  # of the module's platform `plat` (tests/conftest.py)


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
                  json={"instances": [spec("cam-0").model_dump(mode="json")]})
    saved = wait_for(lambda: _saved_revision(state) >= 1 and _saved(state), 3, "assignment")
    assert [i.name for i in saved.instances] == ["cam-0"]

    os.killpg(agents[0].pid, signal.SIGKILL)
    agents[0].wait(5)
    t0 = time.monotonic()
    wait_for(lambda: plat.state("ec-1", "ec-1-rpi1") == "NotReady", 3 * HB + 1.5,
               "NotReady after the agent died")
    assert time.monotonic() - t0 >= 2 * HB

    # Restarted with the same state dir and no join token: the saved node token is used.
    # Under load, starting Python can take long: wait for the agent to be up (its log
    # says so), then for the platform to see it, each with room to spare; a passing run
    # waits no longer for it.
    offset = log.stat().st_size
    agents.append(spawn_agent(plat, "ec-1", "ec-1-rpi1", state, log))
    wait_for(lambda: "using saved node token" in log.read_text()[offset:], 60,
             "the restarted agent up")
    wait_for(lambda: plat.state("ec-1", "ec-1-rpi1") == "Ready", 30, "Ready after restart")
    assert "last assignment from disk" in log.read_text()[offset:]


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
    (state / "assignment.json").write_text(Assignment(revision=7, instances=[spec("x")])
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
                      json={"instances": [spec("y").model_dump(mode="json")]})
        wait_for(lambda: seen[-1].revision == 1, 3, "hook on new assignment")
        assert [i.name for i in seen[-1].instances] == ["y"] and _saved(state).revision == 1
    finally:
        stop.set()
        t.join(5)
    assert not errors and not t.is_alive()


class RecordingProxy:
    """A real HTTP forwarder between an agent and the platform that keeps every heartbeat
    body, so a test can see what the agent told the platform."""

    def __init__(self, target: str) -> None:
        self.heartbeats: list[dict[str, Any]] = []
        self.responses: list[dict[str, Any]] = []
        outer = self
        client = httpx.Client(base_url=target, timeout=60)

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() in ("authorization", "content-type")}
                try:
                    r = client.request(self.command, self.path, content=body, headers=headers)
                except httpx.HTTPError:
                    self.send_error(502)
                    return
                if self.path.endswith("/heartbeat") and self.command == "POST":
                    outer.heartbeats.append(json.loads(body))
                    if r.status_code == 200:
                        outer.responses.append(r.json())
                self.send_response(r.status_code)
                self.send_header("content-type", r.headers.get("content-type", "text/plain"))
                self.send_header("content-length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            do_GET = do_POST = do_PUT = _forward

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_failing_apply_is_reported_and_retried(plat: PlatformProc, tmp_path: Path) -> None:
    """The agent cannot save its assignment (a directory sits where the file goes): the
    failure reaches the platform in the heartbeats, the agent retries, and once the disk is
    fixed it follows assignments again (the old poll thread died on the first failure)."""
    state = tmp_path / "state"
    (state / "assignment.json").mkdir(parents=True)
    proxy = RecordingProxy(plat.url)
    seen: list[Assignment] = []
    stop = threading.Event()
    cfg = AgentConfig(platform_url=proxy.url, site="ec-2", name="ec-2-flaky",
                      join_token=plat.token("ec-2"), state_dir=state, heartbeat_interval_s=HB)
    agent = Agent(cfg, stop, seen.append)
    t = threading.Thread(target=agent.run)
    t.start()
    try:
        def reported() -> bool:
            return any("assignment.json" in p and "revision 0" in p
                       for beat in proxy.heartbeats for p in beat["problems"])
        wait_for(reported, 15, "the apply failure reported in a heartbeat")
        assert not seen and plat.state("ec-2", "ec-2-flaky") == "Ready"
        shutil.rmtree(state / "assignment.json")  # the operator frees the disk
        wait_for(lambda: agent.revision == 0 and seen, 15, "the retried apply")
        with plat.admin() as c:
            c.request("PUT", "/nodes/ec-2/ec-2-flaky/assignment", "assign",
                      json={"instances": [spec("z").model_dump(mode="json")]})
        wait_for(lambda: seen[-1].revision == 1, 5, "the next assignment followed")
        assert _saved(state).revision == 1
        n = len(proxy.heartbeats)
        wait_for(lambda: len(proxy.heartbeats) > n and not proxy.heartbeats[-1]["problems"],
                 5, "problems cleared once solved and reported")
        assert agent.problems == []
    finally:
        stop.set()
        t.join(5)
        proxy.close()
    assert not t.is_alive() and agent.fatal is None


def _register(p: PlatformProc, broker: str) -> None:
    infra = load_infrastructure(INFRA_FILE)
    p.register({s.name: SiteEndpoints(broker=broker, files="http://127.0.0.1:9000",
                                      platform=p.url) for s in infra.spec.sites})


def test_agent_follows_moved_site_endpoints(plat: PlatformProc, tmp_path: Path) -> None:
    """The site's broker moved (a restarted embedded run, a re-registered site): the agent
    adopts the endpoints the heartbeat answer carries, in node.json and its node runtime."""
    state = tmp_path / "state"
    proxy = RecordingProxy(plat.url)
    stop = threading.Event()
    cfg = AgentConfig(platform_url=proxy.url, site="ec-1", name="ec-1-mover",
                      join_token=plat.token("ec-1"), state_dir=state, heartbeat_interval_s=HB)
    agent = Agent(cfg, stop, run_instances=True)
    t = threading.Thread(target=agent.run)
    t.start()
    try:
        wait_for(lambda: proxy.responses, 15, "a heartbeat answer")
        assert proxy.responses[-1].get("broker"), "heartbeat answers carry the site's broker"
        moved = "mqtt://127.0.0.1:1999"
        _register(plat, moved)

        def saved_broker() -> str:
            return str(json.loads((state / "node.json").read_text())["broker"])
        wait_for(lambda: saved_broker() == moved, 10, "node.json updated")
        assert stat.S_IMODE((state / "node.json").stat().st_mode) == 0o600
        assert agent.node is not None and agent.node.broker_url == moved
    finally:
        plat.register()  # as the module fixture registered it
        stop.set()
        t.join(5)
        proxy.close()
    assert not t.is_alive() and agent.fatal is None


def test_backoff_stays_at_the_cap_through_a_long_outage() -> None:
    """Thousands of failed retries (a platform down for hours): no OverflowError (the old
    `base * 2 ** failures` overflowed a float after 1024 failures and ended the agent's
    retry loops), and every delay after the first doublings is the cap with its jitter."""
    from edgecloud.resource.agent import Backoff

    backoff = Backoff(base=0.5, cap=10.0)
    delays = [backoff.next() for _ in range(2000)]
    assert all(5.0 <= d <= 10.0 for d in delays[5:])
    assert delays[0] <= 0.5
