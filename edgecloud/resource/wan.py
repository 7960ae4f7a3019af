"""WAN emulation in user space: one shaping TCP proxy per edge site.

The kernel here has no netem, so every cross-site TCP path (bridge, file transfers,
agents' control traffic) passes through its edge site's proxy (routes in
docs/internals.md). The proxy terminates TCP on both sides and shapes the bytes between:

- rate: one serialisation queue per direction per site, shared by every connection of the
  site, like one link: a chunk of n bytes leaves at max(now, link free) + 8n/rate;
- delay and jitter: a chunk arrives `delay` (+ a jitter sample) after it left; arrival
  times never go backwards within a connection, so bytes stay in order;
- loss, as TCP feels it: with probability `loss` a chunk arrives one retransmission
  timeout (max(200 ms, 2 x delay)) late, holding back what follows it;
- partition: nothing is read or delivered; connections stay open and their bytes are
  delivered intact after the heal.

The byte counters are the one accounting point for edge-cloud bandwidth. Everything can
be changed live through the control API (`GET/PATCH /link`), which `edgecloud link`
uses; settings and counters persist in `state_file`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import time
from collections import deque
from pathlib import Path
from typing import Any, Literal

import httpx
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field, ValidationError

from edgecloud.errors import UserError
from edgecloud.log import get_logger
from edgecloud.resource.infra import WanSpec
from edgecloud.service import Endpoint, quiet_uvicorn, run_service

log = get_logger("wan")

CHUNK = 16 * 1024
MIN_BUFFER = 256 * 1024
UNLIMITED_BUFFER = 4 << 20
SAVE_EVERY_S = 1.0


class LinkSettings(BaseModel):
    """Live settings of one edge site's WAN link (rates in bit/s, None = unlimited)."""

    up_bps: float | None = Field(None, gt=0, description="edge -> cloud")
    down_bps: float | None = Field(None, gt=0, description="cloud -> edge")
    delay_s: float = Field(0.0, ge=0, le=60, description="one-way delay")
    jitter_s: float = Field(0.0, ge=0, le=60)
    loss: float = Field(0.0, ge=0, lt=1, description="probability a chunk is retransmitted")
    partitioned: bool = False

    @classmethod
    def from_spec(cls, spec: WanSpec | None) -> LinkSettings:
        if spec is None:
            return cls()
        return cls(up_bps=spec.up, down_bps=spec.down, delay_s=spec.delay,
                   jitter_s=spec.jitter, loss=spec.loss)


class LinkUpdate(BaseModel):
    """Body of `PATCH /link`: only the fields given change (null rate = unlimited)."""

    model_config = {"extra": "forbid"}
    up_bps: float | None = Field(None, gt=0)
    down_bps: float | None = Field(None, gt=0)
    delay_s: float | None = Field(None, ge=0, le=60)
    jitter_s: float | None = Field(None, ge=0, le=60)
    loss: float | None = Field(None, ge=0, lt=1)
    partitioned: bool | None = None


class Route(BaseModel):
    """listen -> target; bytes from the initiator to the target flow `up` when the
    initiator is the edge side, `down` when it is the cloud side."""

    name: str
    listen: Endpoint
    target: Endpoint
    initiator: Literal["edge", "cloud"]


class WanConfig(BaseModel):
    site: str
    control: Endpoint
    routes: list[Route]
    link: LinkSettings = LinkSettings()
    state_file: Path


class LinkStatus(BaseModel):
    site: str
    settings: LinkSettings
    bytes_up: int
    bytes_down: int
    connections: int
    since: float


class _Direction:
    """One direction of the site's link: the serialisation queue and its byte counter."""

    def __init__(self, link: Link, name: Literal["up", "down"]) -> None:
        self.link = link
        self.name = name
        self.free_at = 0.0
        self.bytes = 0

    @property
    def rate_bps(self) -> float | None:
        s = self.link.settings
        return s.up_bps if self.name == "up" else s.down_bps

    def depart(self, n: int) -> float:
        """Reserve the link for n bytes; returns when they have left."""
        now = time.monotonic()
        rate = self.rate_bps
        start = max(now, self.free_at)
        self.free_at = start + (n * 8 / rate if rate else 0.0)
        return self.free_at

    def buffer_limit(self) -> int:
        """Bytes one connection may have inside the emulated link (router buffer + BDP)."""
        rate = self.rate_bps
        if rate is None:
            return UNLIMITED_BUFFER
        s = self.link.settings
        in_flight = rate / 8 * (2 * (s.delay_s + s.jitter_s) + 0.1)
        return int(max(MIN_BUFFER, in_flight))


class Link:
    """The site's link: settings, both directions, the partition gate."""

    def __init__(self, site: str, settings: LinkSettings) -> None:
        self.site = site
        self.settings = settings
        self.up = _Direction(self, "up")
        self.down = _Direction(self, "down")
        self.open = asyncio.Event()
        self.changed = asyncio.Event()  # wakes waiters when settings change
        self.connections = 0
        self.since = time.time()
        self._apply_gate()

    def update(self, settings: LinkSettings) -> None:
        self.settings = settings
        self._apply_gate()
        self.changed.set()
        self.changed = asyncio.Event()

    def _apply_gate(self) -> None:
        if self.settings.partitioned:
            self.open.clear()
        else:
            self.open.set()

    def arrival(self, departed: float) -> float:
        s = self.settings
        delay = s.delay_s
        if s.jitter_s:
            delay = max(0.0, delay + random.gauss(0.0, s.jitter_s))
        if s.loss and random.random() < s.loss:
            delay += max(0.2, 2 * s.delay_s)  # one retransmission timeout
        return departed + delay

    def status(self) -> LinkStatus:
        return LinkStatus(site=self.site, settings=self.settings, bytes_up=self.up.bytes,
                          bytes_down=self.down.bytes, connections=self.connections,
                          since=self.since)


class _Pipe:
    """One direction of one proxied connection."""

    def __init__(self, link: Link, direction: _Direction, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.link = link
        self.dir = direction
        self.reader = reader
        self.writer = writer
        self.queue: deque[tuple[float, bytes]] = deque()
        self.queued = 0
        self.last_arrival = 0.0
        self.eof = False
        self.item = asyncio.Event()  # something was queued (or EOF)
        self.room = asyncio.Event()  # the buffer has room again

    async def pump_in(self) -> None:
        try:
            while True:
                await self.link.open.wait()
                while self.queued >= self.dir.buffer_limit():
                    self.room.clear()
                    await self.room.wait()
                data = await self.reader.read(CHUNK)
                if not data:
                    break
                await self.link.open.wait()  # a partition that began during the read
                arrival = max(self.last_arrival, self.link.arrival(self.dir.depart(len(data))))
                self.last_arrival = arrival
                self.queue.append((arrival, data))
                self.queued += len(data)
                self.item.set()
        except (ConnectionError, OSError):
            pass
        finally:
            self.eof = True
            self.item.set()

    async def pump_out(self) -> None:
        try:
            while True:
                while not self.queue:
                    if self.eof:
                        if self.writer.can_write_eof():
                            self.writer.write_eof()
                        return
                    self.item.clear()
                    await self.item.wait()
                arrival, data = self.queue[0]
                wait = arrival - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self.link.open.wait()
                self.queue.popleft()
                self.queued -= len(data)
                self.room.set()
                self.writer.write(data)
                await self.writer.drain()
                self.dir.bytes += len(data)
        except (ConnectionError, OSError):
            self.eof = True


class WanProxy:
    """All routes of one site plus its control API."""

    def __init__(self, config: WanConfig) -> None:
        self.config = config
        self.link = Link(config.site, config.link)
        self._load_state()
        self._servers: list[asyncio.base_events.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._dirty = False

    # -- persistence ---------------------------------------------------------------------
    def _load_state(self) -> None:
        try:
            data = json.loads(self.config.state_file.read_text())
            self.link.update(LinkSettings.model_validate(data["settings"]))
            self.link.up.bytes = int(data["bytes_up"])
            self.link.down.bytes = int(data["bytes_down"])
            self.link.since = float(data["since"])
            log.info("state restored", site=self.config.site, file=str(self.config.state_file))
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, ValidationError) as exc:
            log.warning("ignoring unreadable state file", file=str(self.config.state_file),
                        error=str(exc))

    def save(self) -> None:
        path = self.config.state_file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.link.status().model_dump_json())
        tmp.replace(path)

    # -- proxying ----------------------------------------------------------------------------
    async def start(self) -> None:
        for route in self.config.routes:
            server = await asyncio.start_server(
                lambda r, w, route=route: self._track(self._handle(route, r, w)),
                route.listen.host, route.listen.port, reuse_address=True)
            self._servers.append(server)
        log.info("WAN emulation up", site=self.config.site, routes=len(self.config.routes),
                 **self.link.settings.model_dump())

    def _track(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, route: Route, c_reader: asyncio.StreamReader,
                      c_writer: asyncio.StreamWriter) -> None:
        try:
            t_reader, t_writer = await asyncio.open_connection(route.target.host,
                                                               route.target.port)
        except OSError as exc:
            log.warning("target unreachable", route=route.name, target=route.target.port,
                        error=str(exc))
            c_writer.close()
            return
        to_target, to_client = ((self.link.up, self.link.down) if route.initiator == "edge"
                                else (self.link.down, self.link.up))
        pipes = [_Pipe(self.link, to_target, c_reader, t_writer),
                 _Pipe(self.link, to_client, t_reader, c_writer)]
        self.link.connections += 1
        try:
            await asyncio.gather(*(p.pump_in() for p in pipes), *(p.pump_out() for p in pipes))
        finally:
            self.link.connections -= 1
            for w in (c_writer, t_writer):
                w.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await w.wait_closed()

    async def stop(self) -> None:
        for s in self._servers:
            s.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.save()

    # -- control API --------------------------------------------------------------------------
    def api(self) -> FastAPI:
        app = FastAPI(title=f"edgecloud WAN emulation {self.config.site}")

        @app.get("/link")
        async def get_link() -> LinkStatus:
            return self.link.status()

        @app.patch("/link")
        async def patch_link(body: LinkUpdate) -> LinkStatus:
            changes = body.model_dump(exclude_unset=True)
            merged = {**self.link.settings.model_dump(), **changes}
            try:
                settings = LinkSettings.model_validate(merged)
            except ValidationError as exc:
                raise HTTPException(422, str(exc)) from None
            self.link.update(settings)
            self.save()
            log.info("link changed", site=self.config.site, **changes)
            return self.link.status()

        return app


async def _run(config: WanConfig) -> None:
    proxy = WanProxy(config)
    await proxy.start()
    uv: Any = quiet_uvicorn(proxy.api(), config.control, lifespan="off")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    api_task = asyncio.create_task(uv.serve())

    async def autosave() -> None:
        while True:
            await asyncio.sleep(SAVE_EVERY_S)
            proxy.save()

    saver = asyncio.create_task(autosave())
    await asyncio.wait({asyncio.create_task(stop.wait()), api_task},
                                 return_when=asyncio.FIRST_COMPLETED)
    uv.should_exit = True
    saver.cancel()
    await proxy.stop()
    with contextlib.suppress(asyncio.CancelledError):
        await api_task
    log.info("WAN emulation stopped", site=config.site)


def serve(config: WanConfig) -> None:
    asyncio.run(_run(config))


class LinkClient:
    """Client of one site's WAN control API."""

    def __init__(self, base_url: str, site: str = "") -> None:
        self.base_url = base_url.rstrip("/")
        self.site = site

    def _call(self, method: str, body: dict[str, object] | None = None) -> LinkStatus:
        try:
            r = httpx.request(method, f"{self.base_url}/link", json=body, timeout=10)
        except httpx.TransportError as exc:
            raise UserError(f"the WAN emulation of site {self.site or '?'} at {self.base_url} "
                            f"is not reachable ({exc}); is `edgecloud up` running?",
                            exit_code=1) from None
        if r.status_code != 200:
            raise UserError(f"WAN emulation of {self.site or '?'} refused: {r.text}")
        return LinkStatus.model_validate(r.json())

    def status(self) -> LinkStatus:
        return self._call("GET")

    def update(self, **changes: object) -> LinkStatus:
        return self._call("PATCH", changes)


if __name__ == "__main__":
    run_service(WanConfig, serve)
