"""The shaping proxy as a real process: rate, delay, partition, live changes, accounting."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner, Result

from edgecloud.cli.link_cmd import app as link_app
from edgecloud.config import Home
from edgecloud.errors import UserError
from edgecloud.procutil import free_port, spawn_service, stop_process, wait_port
from edgecloud.resource.state import RunState, SiteRuntime
from edgecloud.resource.wan import LinkClient, LinkSettings, Route, WanConfig
from edgecloud.service import Endpoint
from tests.support import eventually


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
    sink_b: int  # a second edge route to the sink: shares the site's link
    dead: int  # route whose target does not listen
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
    # wait_port's probes open connections through the proxy; let them close
    assert eventually(lambda: LinkClient(cfg.control.url("http")).status().connections == 0)
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
                    target=Endpoint(port=sink), initiator="cloud"),
              Route(name="sink-b", listen=Endpoint(port=free_port()), target=Endpoint(port=sink),
                    initiator="edge"),
              Route(name="dead", listen=Endpoint(port=free_port()),
                    target=Endpoint(port=free_port()), initiator="edge")]
    cfg = WanConfig(site="ec-1", control=Endpoint(port=free_port()), routes=routes,
                    link=LinkSettings(), state_file=tmp_path / "wan.json")
    p = Proxy(LinkClient(cfg.control.url("http"), "ec-1"), *(r.listen.port for r in routes),
              config=cfg, tmp=tmp_path)
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


def sha_answer(data: bytes) -> str:
    """What the sink answers for `data`."""
    return f"{hashlib.sha256(data).hexdigest()} {len(data)}"


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


def test_bytes_are_split_by_route(proxy: Proxy) -> None:
    """The accounting point says which service the bytes belong to, and the routes add up
    to the link's totals."""
    start = proxy.control.status()
    send_all(proxy.sink, os.urandom(30_000))
    send_all(proxy.sink_from_cloud, os.urandom(20_000))
    st = proxy.control.status()

    def delta(route: str, direction: str) -> int:
        return (st.by_route.get(route, {}).get(direction, 0)
                - start.by_route.get(route, {}).get(direction, 0))

    assert delta("sink", "up") == 30_000 and delta("sink", "down") < 200
    assert delta("sink-in", "down") == 20_000
    assert sum(c["up"] for c in st.by_route.values()) == st.bytes_up
    assert sum(c["down"] for c in st.by_route.values()) == st.bytes_down


def test_delay_and_jitter_show_in_round_trips(proxy: Proxy) -> None:
    base = min(rtt(proxy.echo))
    proxy.control.update(delay_s=0.05)
    delayed = rtt(proxy.echo)
    assert min(delayed) >= 0.1 and min(delayed) < base + 0.2
    proxy.control.update(jitter_s=0.02)
    jittered = rtt(proxy.echo, 10)
    assert max(jittered) - min(jittered) > 0.005


def test_partition_holds_bytes_and_heal_delivers_them(proxy: Proxy) -> None:
    proxy.control.update(up_bps=4e6)
    old, new = os.urandom(1_000_000), os.urandom(300_000)  # old: 2 s at 4 Mbit/s
    result: dict[str, str] = {}
    t_old = threading.Thread(target=lambda: result.update(old=send_all(proxy.sink, old)[0]))
    t_old.start()  # a connection open before the cut, cut in the middle of its transfer
    time.sleep(0.5)  # a quarter into its 2 s transfer: the timing is the test
    proxy.control.update(partitioned=True)
    t_new = threading.Thread(target=lambda: result.update(new=send_all(proxy.sink, new)[0]))
    t_new.start()  # a connection accepted during the cut
    time.sleep(0.2)  # chunks already on the wire may still leave the serialiser
    during = proxy.control.status()
    time.sleep(1.2)  # an absence: 1.2 s of partition during which no byte may pass
    after = proxy.control.status()
    assert t_old.is_alive() and t_new.is_alive()
    assert after.bytes_up == during.bytes_up
    assert after.bytes_down == during.bytes_down and after.connections == 2
    proxy.control.update(partitioned=False)
    t_old.join(10)
    t_new.join(10)
    assert result == {"old": sha_answer(old), "new": sha_answer(new)}


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
    assert after.by_route["sink"]["up"] >= before.by_route["sink"]["up"] >= 50_000
    assert after.since == before.since


def test_control_api_rejects_bad_values(proxy: Proxy) -> None:
    url = proxy.config.control.url("http") + "/link"
    for bad in ({"loss": 1.5}, {"up_bps": -1}, {"down_bps": 0}, {"delay_s": -0.1},
                {"jitter_s": "lots"}, {"partitioned": None}, {"colour": "red"}):
        r = httpx.patch(url, json=bad)
        assert r.status_code == 422, bad
        [(field, _)] = bad.items()
        assert [e["loc"][-1] for e in r.json()["detail"]] == [field], r.json()
    assert httpx.patch(url, json={"up_bps": 1e6}).json()["settings"]["up_bps"] == 1e6
    assert httpx.patch(url, json={"up_bps": None}).json()["settings"]["up_bps"] is None
    with pytest.raises(UserError, match=r"ec-1 rejected the change: loss: .*less than 1"):
        proxy.control.update(loss=1.0)
    assert proxy.control.status().settings == LinkSettings(), "a rejected change changes nothing"
    with pytest.raises(UserError, match="WAN emulation of site ec-9 is not reachable"):
        LinkClient(f"http://127.0.0.1:{free_port()}", "ec-9").status()


def test_one_stream_with_delay_keeps_the_rate(proxy: Proxy) -> None:
    # The proxy terminates TCP on both sides, so the bytes in flight inside the emulated
    # link (rate x delay) must not throttle a single stream.
    rate, delay = 20e6, 0.05
    proxy.control.update(up_bps=rate, delay_s=delay)
    data = os.urandom(5_000_000)  # 2 s at 20 Mbit/s
    answer, elapsed = send_all(proxy.sink, data)
    assert answer == sha_answer(data)
    serialising = len(data) * 8 / rate
    assert elapsed >= serialising, elapsed
    achieved = serialising / (elapsed - 2 * delay)  # the round trip to set up is not rate
    assert achieved >= 0.95, (elapsed, achieved)


def test_routes_and_connections_share_one_link(proxy: Proxy) -> None:
    proxy.control.update(up_bps=4e6)
    data = [os.urandom(500_000), os.urandom(500_000)]
    answers: dict[int, tuple[str, float]] = {}
    threads = [threading.Thread(target=lambda i=i, port=port: answers.update(
        {i: send_all(port, data[i])})) for i, port in enumerate((proxy.sink, proxy.sink_b))]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    elapsed = time.monotonic() - t0
    assert [answers[i][0] for i in (0, 1)] == [sha_answer(d) for d in data]
    assert elapsed >= 1.95, elapsed  # 8 Mbit in total at 4 Mbit/s, not 1 s each in parallel
    # fair interleaving: neither connection finishes long before the other
    assert abs(answers[0][1] - answers[1][1]) < 0.5, answers


def test_jitter_and_loss_keep_bytes_in_order(proxy: Proxy) -> None:
    proxy.control.update(up_bps=20e6, delay_s=0.01, jitter_s=0.01)
    data = os.urandom(1_000_000)
    assert send_all(proxy.sink, data)[0] == sha_answer(data)
    proxy.control.update(jitter_s=0.0, loss=0.3)
    # a lost chunk arrives one RTO (>= 200 ms) late: some round trips show it
    rtts = rtt(proxy.echo, 10)
    assert max(rtts) >= 0.2 and min(rtts) < 0.2, rtts
    assert send_all(proxy.sink, data)[0] == sha_answer(data)


def test_vanishing_clients_and_dead_targets_leave_nothing_behind(proxy: Proxy) -> None:
    proxy.control.update(delay_s=0.02)
    for _ in range(3):  # client resets the connection while bytes are in flight
        s = socket.create_connection(("127.0.0.1", proxy.echo))
        s.sendall(os.urandom(200_000))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
        s.close()
    assert eventually(lambda: proxy.control.status().connections == 0, timeout=5)
    # a target that does not listen: the client's connection is closed, not left hanging
    with socket.create_connection(("127.0.0.1", proxy.dead), timeout=5) as s:
        assert s.recv(10) == b""
    log = (proxy.tmp / "wan.log").read_text()
    assert "target unreachable" in log and "route=dead" in log
    assert "Traceback" not in log and "ERROR" not in log


def _run_state(proxy: Proxy, home: Path) -> None:
    """A state.json as `edgecloud up` writes it, with ec-1's link on the test proxy."""
    RunState(infra="t", infra_file=home / "infra.yaml", home=home, supervisor_pid=os.getpid(),
             broker_kind="amqtt", platform=Endpoint(port=free_port()),
             sites=[SiteRuntime(name="cloud", kind="cloud", broker=Endpoint(port=1),
                                files=Endpoint(port=2)),
                    SiteRuntime(name="ec-1", kind="edge", broker=Endpoint(port=3),
                                files=Endpoint(port=4), wan_control=proxy.config.control)]
             ).save(Home(home))


def test_link_cli_set_and_show(proxy: Proxy, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    _run_state(proxy, home)
    runner = CliRunner()

    def link(*args: str) -> Result:
        return runner.invoke(link_app, [*args, "--home", str(home)])

    r = link("set", "ec-1", "--up", "10mbit", "--down", "2MB/s", "--delay", "20ms",
             "--jitter", "5ms", "--loss", "1%", "--partition")
    assert r.exit_code == 0, r.output
    assert "10mbit" in r.output and "16mbit" in r.output and "yes" in r.output
    s = proxy.control.status().settings
    assert (s.up_bps, s.down_bps, s.delay_s, s.jitter_s, s.loss, s.partitioned) == (
        10e6, 16e6, 0.02, 0.005, 0.01, True)
    assert link("set", "ec-1", "--heal", "--loss", "0.02").exit_code == 0
    send_all(proxy.sink, b"y" * 10_000)

    r = link("show", "--json")
    assert r.exit_code == 0, r.output
    sites = json.loads(r.output)["sites"]
    assert [x["site"] for x in sites] == ["ec-1"]
    assert sites[0]["settings"] == {"up_bps": 10e6, "down_bps": 16e6, "delay_s": 0.02,
                                    "jitter_s": 0.005, "loss": 0.02, "partitioned": False}
    assert sites[0]["bytes_up"] >= 10_000 and "bytes_down" in sites[0]
    r = link("show")
    assert r.exit_code == 0 and "ec-1" in r.output and "10mbit" in r.output, r.output
    r = link("show", "--routes")
    assert r.exit_code == 0 and "route" in r.output and "sink" in r.output, r.output

    for args, words in ((("set", "cloud", "--up", "1mbit"), ("cloud", "ec-1")),
                        (("set", "ec-9", "--up", "1mbit"), ("ec-9", "ec-1")),
                        (("set", "ec-1", "--loss", "1.5"), ("--loss", "[0, 1)")),
                        (("set", "ec-1", "--delay", "fast"), ("--delay",)),
                        (("set", "ec-1", "--partition", "--heal"), ("exclude",)),
                        (("set", "ec-1"), ("nothing to change",))):
        r = link(*args)
        assert r.exit_code == 2, (args, r.output)
        assert all(w in r.output for w in words), (args, r.output)

    stop_process(proxy.proc)  # type: ignore[arg-type]
    r = link("show")
    assert r.exit_code == 1 and "not reachable" in r.output, r.output
