"""The shaping proxy as a real process: rate, delay, partition, live changes, accounting."""

from __future__ import annotations

import hashlib
import os
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from edgecloud.procutil import free_port, spawn_service, stop_process, wait_port
from edgecloud.resource.wan import LinkClient, LinkSettings, Route, WanConfig
from edgecloud.service import Endpoint


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


class _Sink(socketserver.BaseRequestHandler):
    """Reads everything, then answers with the sha256 and size of what it read."""

    def handle(self) -> None:
        h, n = hashlib.sha256(), 0
        while data := self.request.recv(65536):
            h.update(data)
            n += len(data)
        self.request.sendall(f"{h.hexdigest()} {n}".encode())


def _server(handler: type) -> tuple[socketserver.ThreadingTCPServer, int]:
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, srv.server_address[1]


@dataclass
class Proxy:
    control: LinkClient
    echo: int  # route port, initiator edge
    sink: int  # route port, initiator edge
    sink_from_cloud: int  # route port, initiator cloud
    config: WanConfig
    tmp: Path
    proc: object = None

    def restart(self) -> None:
        stop_process(self.proc)  # type: ignore[arg-type]
        self.proc = _spawn(self.config, self.tmp)


def _spawn(cfg: WanConfig, tmp: Path) -> object:
    proc = spawn_service("wan-ec-1", "edgecloud.resource.wan", cfg, tmp / "run", tmp / "wan.log")
    wait_port(cfg.control.host, cfg.control.port, 20, proc, "wan", tmp / "wan.log")
    for r in cfg.routes:
        wait_port(r.listen.host, r.listen.port, 20, proc, "wan")
    return proc


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Proxy]:
    echo_srv, echo = _server(_Echo)
    sink_srv, sink = _server(_Sink)
    routes = [Route(name="echo", listen=Endpoint(port=free_port()), target=Endpoint(port=echo),
                    initiator="edge"),
              Route(name="sink", listen=Endpoint(port=free_port()), target=Endpoint(port=sink),
                    initiator="edge"),
              Route(name="sink-in", listen=Endpoint(port=free_port()),
                    target=Endpoint(port=sink), initiator="cloud")]
    cfg = WanConfig(site="ec-1", control=Endpoint(port=free_port()), routes=routes,
                    link=LinkSettings(), state_file=tmp_path / "wan.json")
    p = Proxy(LinkClient(cfg.control.url("http"), "ec-1"), routes[0].listen.port,
              routes[1].listen.port, routes[2].listen.port, cfg, tmp_path)
    p.proc = _spawn(cfg, tmp_path)
    yield p
    stop_process(p.proc)  # type: ignore[arg-type]
    echo_srv.shutdown()
    sink_srv.shutdown()


def send_all(port: int, data: bytes) -> tuple[str, float]:
    """Send data through the proxy to the sink; returns its answer and the elapsed time."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    return answer.decode(), time.monotonic() - t0


def rtt(port: int, n: int = 5) -> list[float]:
    out = []
    with socket.create_connection(("127.0.0.1", port)) as s:
        for _ in range(n):
            t0 = time.monotonic()
            s.sendall(b"ping")
            got = b""
            while len(got) < 4:
                got += s.recv(4)
            out.append(time.monotonic() - t0)
    return out


def test_rate_limits_and_counts_up(proxy: Proxy) -> None:
    proxy.control.update(up_bps=4e6)
    start = proxy.control.status()
    data = os.urandom(2_000_000)
    answer, elapsed = send_all(proxy.sink, data)
    assert answer == f"{hashlib.sha256(data).hexdigest()} {len(data)}"
    assert elapsed >= 3.9, elapsed  # 16 Mbit at 4 Mbit/s
    assert elapsed < 5.5, elapsed  # and not much slower: the shaper keeps the link busy
    st = proxy.control.status()
    assert st.bytes_up - start.bytes_up == len(data)
    assert st.bytes_down - start.bytes_down < 1000


def test_initiator_cloud_counts_the_other_way(proxy: Proxy) -> None:
    start = proxy.control.status()
    data = os.urandom(100_000)
    send_all(proxy.sink_from_cloud, data)
    st = proxy.control.status()
    assert st.bytes_down - start.bytes_down == len(data)
    assert st.bytes_up - start.bytes_up < 1000


def test_delay_and_jitter_show_in_round_trips(proxy: Proxy) -> None:
    base = min(rtt(proxy.echo))
    proxy.control.update(delay_s=0.05)
    delayed = rtt(proxy.echo)
    assert min(delayed) >= 0.1 and min(delayed) < base + 0.2
    proxy.control.update(jitter_s=0.02)
    jittered = rtt(proxy.echo, 10)
    assert max(jittered) - min(jittered) > 0.005


def test_partition_holds_bytes_and_heal_delivers_them(proxy: Proxy) -> None:
    proxy.control.update(partitioned=True)
    before = proxy.control.status().bytes_up  # wait_port's probes crossed the link already
    data = os.urandom(300_000)
    result: dict[str, str] = {}
    t = threading.Thread(target=lambda: result.update(a=send_all(proxy.sink, data)[0]))
    t.start()
    time.sleep(1.5)
    assert t.is_alive() and proxy.control.status().bytes_up == before
    proxy.control.update(partitioned=False)
    t.join(10)
    assert result["a"] == f"{hashlib.sha256(data).hexdigest()} {len(data)}"


def test_live_rate_change_applies_to_open_connection(proxy: Proxy) -> None:
    proxy.control.update(up_bps=1e6)
    data = os.urandom(1_000_000)  # 8 s at 1 Mbit/s
    timer = threading.Timer(0.5, lambda: proxy.control.update(up_bps=50e6))
    timer.start()
    answer, elapsed = send_all(proxy.sink, data)
    assert answer.startswith(hashlib.sha256(data).hexdigest())
    assert elapsed < 3.0, elapsed


def test_settings_and_counters_survive_restart(proxy: Proxy) -> None:
    proxy.control.update(delay_s=0.01, down_bps=8e6)
    send_all(proxy.sink, b"x" * 50_000)
    before = proxy.control.status()
    proxy.restart()
    after = proxy.control.status()
    assert after.settings.delay_s == 0.01 and after.settings.down_bps == 8e6
    # counters carry on (the restart's readiness probes add a few bytes)
    assert before.bytes_up <= after.bytes_up < before.bytes_up + 1000
    assert after.since == before.since


def test_control_api_rejects_bad_values(proxy: Proxy) -> None:
    url = proxy.config.control.url("http") + "/link"
    for bad in ({"loss": 1.5}, {"up_bps": -1}, {"delay_s": -0.1}, {"colour": "red"}):
        assert httpx.patch(url, json=bad).status_code == 422, bad
