"""Restarts of a whole embedded run, on one home: what a user does over days.

One home serves the module, in order: the run's agents got their join tokens without a
command line; a broker whose Python wrapper is killed takes its mosquitto with it and
comes back, and `status` shows it; a deployed application survives `down` then `up`
(same ports, instances Running again without `app update`, restarts counted); a killed
supervisor takes every service with it, and `down` cleans up what is left.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from edgecloud.config import Home
from edgecloud.resource.mqtt import MqttClient
from edgecloud.resource.state import RunState, load_run_state
from tests.support import LOCAL_INFRA, ROOT, cli, wait_for


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    h = tmp_path_factory.mktemp("home")
    cli("up", str(LOCAL_INFRA), "--home", str(h), "--detach", "--heartbeat", "1")
    try:
        yield h
    finally:
        cli("down", "--home", str(h), check=False)


def state(home: Path) -> RunState:
    return load_run_state(Home(home))


def service(home: Path, name: str) -> dict[str, Any]:
    doc = json.loads(cli("status", "--home", str(home), "--json").stdout)
    return next(s for s in doc["services"] if s["name"] == name)


def instances(home: Path, app: str) -> list[dict[str, Any]]:
    doc = json.loads(cli("app", "status", app, "--home", str(home), "--json").stdout)
    return doc["instances"]  # type: ignore[no-any-return]


def test_join_tokens_stay_off_command_lines(home: Path) -> None:
    agents = [s for s in state(home).services if s.name.startswith("agent-")]
    assert agents
    for svc in agents:
        argv = psutil.Process(svc.pid).cmdline()
        assert "--token" not in argv
        token_file = Path(argv[argv.index("--token-file") + 1])
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert token_file.read_text().strip() not in " ".join(argv)


def test_killed_broker_wrapper_takes_mosquitto_along(home: Path) -> None:
    before = state(home)
    if before.broker_kind != "mosquitto":
        pytest.skip("mosquitto is not installed")
    wrapper = next(s for s in before.services if s.name == "broker-ec-1")
    (mosquitto,) = psutil.Process(wrapper.pid).children()
    os.kill(wrapper.pid, signal.SIGKILL)
    wait_for(lambda: gone(mosquitto.pid), 10, "mosquitto to die with its wrapper")
    back = wait_for(lambda: (s := service(home, "broker-ec-1"))["state"] == "running"
                    and s["pid"] != wrapper.pid and s, 60, "the broker restarted")
    assert back["restarts"] == 1 and not gone(back["pid"])
    with MqttClient(before.site("ec-1").broker.url("mqtt"), src="probe") as c:
        c.connect()  # the restarted broker serves on the same port
    table = cli("status", "--home", str(home)).stdout
    assert "broker-ec-1" in table and "running" in table


def test_application_survives_down_and_up(home: Path,
                                          tmp_path_factory: pytest.TempPathFactory) -> None:
    app_dir = tmp_path_factory.mktemp("relay")
    shutil.copytree(ROOT / "examples/relay", app_dir, dirs_exist_ok=True)
    cli("app", "deploy", str(app_dir / "relay.yaml"), "--home", str(home))
    running = wait_for(lambda: (i := instances(home, "relay-demo"))
                       and all(x["state"] == "Running" for x in i) and i, 60, "app Running")
    pids = {i["name"]: i["pid"] for i in running}
    first = state(home)

    cli("down", "--home", str(home))
    cli("up", str(LOCAL_INFRA), "--home", str(home), "--detach", "--heartbeat", "1")
    second = state(home)
    assert second.platform == first.platform and second.sites == first.sites, \
        "a restart on the same home keeps every port"

    def restarted() -> list[dict[str, Any]] | None:
        now = instances(home, "relay-demo")
        fresh = [i for i in now if i["pid"] not in (None, pids.get(i["name"]))]
        ok = len(fresh) == len(running) and all(i["state"] == "Running" for i in fresh)
        return now if ok else None
    wait_for(restarted, 90, "the app Running again without `app update`")


def test_restarts_after_an_agent_crash_are_counted(home: Path) -> None:
    """kill -9 of an agent takes its instances along; the agent the supervisor starts
    again starts them again, and that is a restart."""
    sink = next(i for i in instances(home, "relay-demo") if i["name"] == "sink-0")
    agent = next(s for s in state(home).services if s.name == f"agent-{sink['node']}")
    os.killpg(agent.pid, signal.SIGKILL)

    def counted() -> dict[str, Any] | None:
        now = next(i for i in instances(home, "relay-demo") if i["name"] == "sink-0")
        ok = now["pid"] not in (None, sink["pid"]) and now["state"] == "Running"
        return now if ok else None
    after = wait_for(counted, 60, "sink-0 running again")
    assert after["restarts"] == sink["restarts"] + 1, (sink, after)


def test_killed_supervisor_takes_every_service_along(home: Path) -> None:
    run = state(home)
    pids = [s.pid for s in run.services]
    runners = [p.pid for p in psutil.process_iter(["cmdline", "environ"])
               if "edgecloud.application.runner" in " ".join(p.info["cmdline"] or [])
               and str(home) in (p.info["environ"] or {}).get("EDGECLOUD_CONTEXT", "")]
    assert runners, "the relay app's instances run under this home"
    os.kill(run.supervisor_pid, signal.SIGKILL)
    wait_for(lambda: all(gone(p) for p in pids + runners), 30,
             "services and instances to die with the supervisor")
    r = cli("status", "--home", str(home), check=False)
    assert r.returncode == 2 and "supervisor" in r.stderr and "is gone" in r.stderr
    cli("down", "--home", str(home))
    assert not (home / "state.json").exists()
