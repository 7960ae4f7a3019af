"""Fixtures shared by the test modules: real brokers, a real platform process, and one
embedded run (`edgecloud up`) shared by the modules that only deploy onto it.

Helper functions (the CLI, waiting on conditions) live in tests/support.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest
from pydantic import BaseModel

from edgecloud.platform.apps import AppManager
from edgecloud.platform.core import Platform
from edgecloud.platform.server import PlatformConfig
from edgecloud.procutil import free_port, spawn_service, stop_process, wait_port
from edgecloud.resource.broker import BrokerConfig, mosquitto_path
from edgecloud.resource.infra import load_infrastructure
from edgecloud.resource.protocol import (
    PlatformClient,
    RegisterInfrastructure,
    SiteEndpoints,
    SiteInfo,
)
from edgecloud.resource.state import RunState
from edgecloud.service import Endpoint
from tests.support import LOCAL_INFRA, embedded_run

BROKER_KINDS = ["amqtt"] + (["mosquitto"] if mosquitto_path() else [])
ADMIN_TOKEN = "admin-token-for-tests-0123456789"


# -- service processes ---------------------------------------------------------------------
class ServiceProc:
    """An edgecloud service subprocess (`python -m module config.json`) in its own process
    group: started, stopped, killed, paused and resumed, restartable on the same config."""

    def __init__(self, tmp: Path, name: str, module: str, config: BaseModel,
                 port: int | None = None) -> None:
        self.tmp, self.name, self.module, self.config, self.port = tmp, name, module, config, port
        self.log = tmp / "logs" / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProc:
        self.proc = spawn_service(self.name, self.module, self.config, self.tmp / "run",
                                  self.log)
        if self.port is not None:
            wait_port("127.0.0.1", self.port, 20, self.proc, self.name, self.log)
        return self

    def stop(self) -> int | None:
        """Stop it (SIGTERM, then SIGKILL); its exit code, None if it was not running."""
        if self.proc is None:
            return None
        self.resume()  # a stopped (SIGSTOP) process would never see the SIGTERM
        code = stop_process(self.proc, timeout=10)
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL the whole process group (the service and e.g. its mosquitto)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP the process group: connections stay open, nothing is answered."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGCONT)

    def __enter__(self) -> ServiceProc:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class BrokerProc(ServiceProc):
    """A site's MQTT broker service (amqtt, or mosquitto under edgecloud's wrapper)."""

    config: BrokerConfig

    def __init__(self, tmp: Path, kind: str = "amqtt", name: str = "broker",
                 site: str = "cloud") -> None:
        endpoint = Endpoint(port=free_port())
        config = BrokerConfig(site=site, listen=endpoint, data_dir=tmp / name,
                              kind=kind)  # type: ignore[arg-type]
        super().__init__(tmp, name, "edgecloud.resource.broker", config, endpoint.port)
        self.kind = kind

    @property
    def endpoint(self) -> Endpoint:
        return self.config.listen

    @property
    def url(self) -> str:
        return self.endpoint.url("mqtt")

    def start(self) -> BrokerProc:
        super().start()
        return self

    def __enter__(self) -> BrokerProc:
        return self.start() if self.proc is None else self


@pytest.fixture(scope="module", params=BROKER_KINDS)
def broker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[BrokerProc]:
    """A broker of every installed kind (the module's tests run once per kind)."""
    with BrokerProc(tmp_path_factory.mktemp(request.param), request.param) as b:
        yield b


@pytest.fixture(scope="module")
def amqtt_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProc]:
    with BrokerProc(tmp_path_factory.mktemp("amqtt"), "amqtt") as b:
        yield b


@pytest.fixture(scope="module")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProc]:
    """A Mosquitto broker (the kind `edgecloud up` runs when it is installed)."""
    if mosquitto_path() is None:
        pytest.skip("mosquitto not installed")
    with BrokerProc(tmp_path_factory.mktemp("mosquitto"), "mosquitto") as b:
        yield b


# -- the platform --------------------------------------------------------------------------
class PlatformProc:
    """A platform process (`edgecloud.platform.server`) with an admin token file, which
    tests can stop and start again on the same port and database."""

    admin_token = ADMIN_TOKEN

    def __init__(self, d: Path, heartbeat_interval_s: float = 0.3) -> None:
        self.dir = d
        (d / "admin.token").write_text(self.admin_token)
        self.endpoint = Endpoint(port=free_port())
        self.url = self.endpoint.url("http")
        self.config = PlatformConfig(listen=self.endpoint,
                                     db_url=f"sqlite:///{d / 'platform.db'}",
                                     admin_token_file=d / "admin.token",
                                     heartbeat_interval_s=heartbeat_interval_s)
        self.log = d / "platform.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PlatformProc:
        self.proc = spawn_service("platform", "edgecloud.platform.server", self.config,
                                  self.dir, self.log)
        wait_port(self.endpoint.host, self.endpoint.port, 20, self.proc, "platform", self.log)
        return self

    def stop(self) -> int | None:
        assert self.proc is not None
        code = stop_process(self.proc, timeout=10)
        self.proc = None
        return code

    def admin(self) -> PlatformClient:
        return PlatformClient(self.url, self.admin_token)

    def http(self, token: str | None = ADMIN_TOKEN) -> httpx.Client:
        """An HTTP client on /api/v1 with bearer `token` (the admin's; None: no token)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url + "/api/v1", headers=headers, timeout=10)

    def token(self, site: str) -> str:
        """A one-time join token for `site`."""
        with self.admin() as c:
            return c.create_token(site).token

    def state(self, site: str, name: str) -> str:
        with self.admin() as c:
            return c.node(site, name).state

    def register(self, sites: dict[str, SiteEndpoints] | None = None,
                 infra_file: Path = LOCAL_INFRA) -> None:
        """Register `infra_file`; by default its sites get distinct endpoints that nothing
        listens on (site i: broker port 1883+i, files port 9000+i)."""
        infra = load_infrastructure(infra_file)
        if sites is None:
            sites = {s.name: SiteEndpoints(broker=f"mqtt://127.0.0.1:{1883 + i}",
                                           files=f"http://127.0.0.1:{9000 + i}",
                                           platform=self.url)
                     for i, s in enumerate(infra.spec.sites)}
        with self.admin() as c:
            c.register_infrastructure(RegisterInfrastructure(infrastructure=infra, sites=sites))


@contextmanager
def running_platform(d: Path, heartbeat_interval_s: float = 0.3, *, register: bool = True
                     ) -> Iterator[PlatformProc]:
    """A fresh platform process for the block (local.yaml registered unless told not to);
    it must exit cleanly at the end."""
    p = PlatformProc(d, heartbeat_interval_s).start()
    try:
        if register:
            p.register()
        yield p
    finally:
        if p.proc is not None:
            assert p.stop() == 0, p.log.read_text()


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    """The platform core in this process (SQLite store, hooks; no HTTP served) with
    LOCAL_INFRA registered, its start-up grace over, 1 s heartbeats: node liveness is set
    exactly by the test (`record_heartbeat`, `mark_not_ready`)."""
    (tmp_path / "admin.token").write_text(ADMIN_TOKEN)
    cfg = PlatformConfig(listen=Endpoint(port=free_port()),
                         db_url=f"sqlite:///{tmp_path / 'platform.db'}",
                         admin_token_file=tmp_path / "admin.token", heartbeat_interval_s=1.0)
    p = Platform(cfg)
    infra = load_infrastructure(LOCAL_INFRA)
    sites = [SiteInfo(name=s.name, kind=s.kind, broker=f"mqtt://127.0.0.1:{1883 + i}",
                      files=f"http://127.0.0.1:{9000 + i}", platform="http://127.0.0.1:1")
             for i, s in enumerate(infra.spec.sites)]
    node_rows = [{"id": infra.node_id(s.name, n.name), "site": s.name, "name": n.name,
                  "labels": n.labels, "resources": n.resources.model_dump(), "speed": n.speed}
                 for s in infra.spec.sites for n in s.nodes]
    p.store.infra.put(infra.name, infra.model_dump(mode="json", by_alias=True), sites,
                      node_rows)
    p.started_at = time.time() - 60  # the start-up grace period is over
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def manager(platform: Platform) -> Iterator[AppManager]:
    """The application controller on `platform`, re-planning with a short debounce."""
    m = AppManager(platform, debounce_s=0.05)
    try:
        yield m
    finally:
        m.close()


@pytest.fixture(scope="module")
def plat(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[PlatformProc]:
    """The module's platform, local.yaml registered; heartbeats every
    `PLATFORM_HEARTBEAT_S` of the test module (0.3 s unless it says otherwise)."""
    hb = float(getattr(request.module, "PLATFORM_HEARTBEAT_S", 0.3))
    with running_platform(tmp_path_factory.mktemp("platform"), hb) as p:
        yield p


# -- the shared embedded run ---------------------------------------------------------------
# `edgecloud up` + `down` costs 15-30 s. The modules that only deploy apps onto a run (no
# partitions, no killed services, no platform restart) share one: `embedded`. Their tests
# are run one module after the other (see pytest_collection_modifyitems) and the run is
# brought down right after the last of them, so it does not load the machine while the
# timing-sensitive modules after it run. Each module deploys its own app names and deletes
# its apps at its end (support.delete_apps). Destructive modules keep their own run.
class _SharedRun:
    def __init__(self) -> None:
        self.stack: ExitStack | None = None
        self.state: RunState | None = None
        self.last_user: str | None = None  # nodeid of the last test using `embedded`

    def get(self, home: Path) -> RunState:
        if self.state is None:
            self.stack = ExitStack()
            self.state = self.stack.enter_context(embedded_run(home))
        return self.state

    def close(self) -> None:
        if self.stack is not None:
            self.stack.close()
        self.stack, self.state = None, None


_shared = _SharedRun()


def _uses_embedded(item: pytest.Item) -> bool:
    return "embedded" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the modules that share `embedded` back to back, where the first of them was."""
    modules = list(dict.fromkeys(i.nodeid.split("::")[0] for i in items if _uses_embedded(i)))
    if not modules:
        return
    first = next(n for n, i in enumerate(items) if i.nodeid.split("::")[0] in modules)
    sharing = [i for m in modules for i in items if i.nodeid.split("::")[0] == m]
    others = [i for i in items if i.nodeid.split("::")[0] not in modules]
    items[:] = others[:first] + sharing + others[first:]
    users = [i for i in items if _uses_embedded(i)]
    _shared.last_user = users[-1].nodeid


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    # After the module fixtures of the last user are torn down (its apps deleted).
    if item.nodeid == _shared.last_user:
        _shared.close()


@pytest.fixture(scope="session")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunState]:
    """One embedded run of examples/infra/local.yaml (1 s heartbeats) shared by modules."""
    yield _shared.get(tmp_path_factory.mktemp("embedded-home"))
    _shared.close()
