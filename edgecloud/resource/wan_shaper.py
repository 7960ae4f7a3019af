"""The data path of the WAN emulation: one emulated link per edge site and the relay of
each proxied TCP connection across it (the process, API and persistence are in wan.py).

Model. A site's link has two directions, `up` (edge -> cloud) and `down`; each is one
serialisation queue shared by every route and connection of the site. A connection
direction (a `Pipe`) reads a chunk from its source only when the link is free for it,
reserves the link for 8n/rate seconds (`Direction.serialise`), waits until the chunk has
left, and hands it to the propagation stage, which delivers it `delay` (+ jitter, + an
RTO when the chunk is "lost") later, never before the chunk ahead of it. So:

- live changes bite at once: only bytes already "on the wire" keep their old timing, the
  rest are serialised at the rate of the moment they reach the link;
- competing connections interleave chunk by chunk (round robin, like a fair queue);
- in-flight bytes per pipe are bounded (max(4 MiB, 2 x BDP)); when the bound is reached
  the pipe stops reading its source, which is TCP backpressure on the sender.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from typing import Literal

from edgecloud.log import get_logger
from edgecloud.resource.wan_models import LinkSettings

log = get_logger("wan")

CHUNK_MAX = 16 * 1024
"""Largest chunk serialised at once while shaping (a segment train, not a burst)."""
CHUNK_MIN = 1024
CHUNK_TIME_S = 0.01
"""A chunk takes at most ~10 ms to serialise, so a rate change bites within that."""
UNSHAPED_CHUNK = 64 * 1024
BURST_S = 0.003
"""How far a backlogged link may catch up on late timer wake-ups; an idle link earns no
credit beyond this, so there is no burst worth speaking of."""
MIN_BUFFER = 4 << 20
RTO_MIN_S = 0.2

EOF = b""
RESET = None  # the source vanished (RST): abort the destination after the data before it


class Direction:
    """One direction of a site's link: its serialisation queue and delivered-byte counter."""

    def __init__(self, link: Link, name: Literal["up", "down"]) -> None:
        self.link = link
        self.name = name
        self.free_at = 0.0
        self.bytes = 0

    @property
    def rate_bps(self) -> float | None:
        s = self.link.settings
        return s.up_bps if self.name == "up" else s.down_bps

    def chunk_size(self) -> int:
        rate = self.rate_bps
        if rate is None:
            return UNSHAPED_CHUNK
        return int(min(CHUNK_MAX, max(CHUNK_MIN, rate / 8 * CHUNK_TIME_S)))

    def serialise(self, n: int) -> float:
        """Reserve the link for n bytes; returns when their last bit has left (monotonic)."""
        now = time.monotonic()
        rate = self.rate_bps
        if rate is None:
            return now
        # A pump that woke a little late must not lose link time (else 1 ms of timer
        # overshoot per 10 ms chunk would cost 10 % of the rate), hence the small slack.
        start = max(self.free_at, now - BURST_S)
        self.free_at = max(start + n * 8 / rate, now)
        return self.free_at

    def buffer_limit(self) -> int:
        """Bytes one pipe may hold inside the emulated link: max(4 MiB, 2 x BDP)."""
        rate = self.rate_bps
        if rate is None:
            return MIN_BUFFER
        s = self.link.settings
        rtt = 2 * (s.delay_s + 3 * s.jitter_s) + (self.link.rto() if s.loss else 0.0)
        return int(max(MIN_BUFFER, 2 * rate / 8 * rtt))


class Link:
    """A site's link: live settings, both directions, the partition gate."""

    def __init__(self, site: str, settings: LinkSettings) -> None:
        self.site = site
        self.settings = settings
        self.up = Direction(self, "up")
        self.down = Direction(self, "down")
        # Bytes delivered per route and direction ({"mqtt": {"up": n, "down": n}}): which
        # service a site's WAN traffic belongs to (data messages, files, control plane).
        self.route_bytes: dict[str, dict[str, int]] = {}
        self.connections = 0
        self.since = time.time()
        self._open = asyncio.Event()
        self._changed = asyncio.Event()
        self._apply_gate()

    def update(self, settings: LinkSettings) -> None:
        """Apply new settings; open connections feel them from their next chunk."""
        old = self.settings
        self.settings = settings
        for d, before in ((self.up, old.up_bps), (self.down, old.down_bps)):
            if d.rate_bps != before:
                # link time reserved at the old rate must not hold back the new one
                d.free_at = min(d.free_at, time.monotonic())
        self._apply_gate()
        self._changed.set()  # wakes pipes waiting for buffer room (the limit may have grown)
        self._changed = asyncio.Event()

    def _apply_gate(self) -> None:
        if self.settings.partitioned:
            self._open.clear()
        else:
            self._open.set()

    async def wait_open(self) -> None:
        """Return when the link is not partitioned."""
        await self._open.wait()

    async def wait_changed(self) -> None:
        await self._changed.wait()

    def rto(self) -> float:
        return max(RTO_MIN_S, 2 * self.settings.delay_s)

    def arrival(self, departed: float) -> float:
        """When a chunk that left at `departed` reaches the far end."""
        s = self.settings
        delay = s.delay_s
        if s.jitter_s:
            delay = max(0.0, delay + random.gauss(0.0, s.jitter_s))
        if s.loss and random.random() < s.loss:
            delay += self.rto()  # lost once, retransmitted after a timeout
        return departed + delay


async def _sleep_until(t: float) -> None:
    wait = t - time.monotonic()
    if wait > 0:
        await asyncio.sleep(wait)


class Pipe:
    """One direction of one proxied connection: source -> link -> destination."""

    def __init__(self, link: Link, direction: Direction, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, route: str = "") -> None:
        self.link = link
        self.dir = direction
        self.route_count = link.route_bytes.setdefault(route, {"up": 0, "down": 0})
        self.reader = reader
        self.writer = writer
        self.flight: deque[tuple[float, bytes | None]] = deque()  # (arrival, data)
        self.in_flight = 0
        self.last_arrival = 0.0
        self._item = asyncio.Event()
        self._room = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None

    def start(self) -> tuple[asyncio.Task[None], asyncio.Task[None]]:
        self._sender = asyncio.create_task(self._send())
        return self._sender, asyncio.create_task(self._deliver())

    def _push(self, arrival: float, data: bytes | None) -> None:
        self.last_arrival = max(self.last_arrival, arrival)  # never reorder within a pipe
        self.flight.append((self.last_arrival, data))
        self.in_flight += len(data or b"")
        self._item.set()

    async def _wait_room(self) -> None:
        while self.in_flight >= self.dir.buffer_limit():
            self._room.clear()
            room = asyncio.ensure_future(self._room.wait())
            changed = asyncio.ensure_future(self.link.wait_changed())
            try:
                await asyncio.wait({room, changed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                room.cancel()
                changed.cancel()

    async def _send(self) -> None:
        """Read the source chunk by chunk as the link has room and time for it."""
        end: bytes | None = EOF
        try:
            while True:
                await self._wait_room()
                await self.link.wait_open()  # a cut link reads nothing: backpressure
                data = await self.reader.read(self.dir.chunk_size())
                if not data:
                    break
                await self.link.wait_open()  # the cut may have come during the read
                departed = self.dir.serialise(len(data))
                await _sleep_until(departed)
                self._push(self.link.arrival(departed), data)
        except (ConnectionError, OSError):
            end = RESET
        await self.link.wait_open()
        self._push(time.monotonic() + self.link.settings.delay_s, end)

    async def _deliver(self) -> None:
        """Hand chunks to the destination when they arrive; EOF/RST travel behind them."""
        try:
            while True:
                while not self.flight:
                    self._item.clear()
                    await self._item.wait()
                arrival, data = self.flight[0]
                await _sleep_until(arrival)
                await self.link.wait_open()  # bytes on a cut link wait for the heal
                self.flight.popleft()
                if data is RESET:
                    self.writer.transport.abort()
                    return
                if data == EOF:
                    if self.writer.can_write_eof():
                        self.writer.write_eof()
                    return
                self.in_flight -= len(data)
                self._room.set()
                self.writer.write(data)
                self.dir.bytes += len(data)
                self.route_count[self.dir.name] += len(data)
                await self.writer.drain()
        except (ConnectionError, OSError):
            # The destination is gone: nothing more can cross in this direction.
            if self._sender is not None:
                self._sender.cancel()
            self.flight.clear()


async def relay(link: Link, up_to_target: bool, c_reader: asyncio.StreamReader,
                c_writer: asyncio.StreamWriter, t_reader: asyncio.StreamReader,
                t_writer: asyncio.StreamWriter, route: str = "") -> None:
    """Relay one connection of ``route`` across the link until both directions have ended."""
    to_target, to_client = ((link.up, link.down) if up_to_target else (link.down, link.up))
    pipes = [Pipe(link, to_target, c_reader, t_writer, route),
             Pipe(link, to_client, t_reader, c_writer, route)]
    tasks = [t for p in pipes for t in p.start()]
    link.connections += 1
    try:
        await asyncio.gather(tasks[1], tasks[3])  # both deliverers done = connection done
    finally:
        link.connections -= 1
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await _close(c_writer, t_writer)


async def _close(*writers: asyncio.StreamWriter, grace_s: float = 2.0) -> None:
    """Close sockets, flushing what is buffered; abort those whose peer will not take it
    (a peer that stopped reading must not keep the proxy from shutting down)."""
    for w in writers:
        w.close()
    waits = [asyncio.ensure_future(w.wait_closed()) for w in writers]
    _, pending = await asyncio.wait(waits, timeout=grace_s)
    for w, fut in zip(writers, waits, strict=True):
        if fut in pending:
            fut.cancel()
            w.transport.abort()
        elif not fut.cancelled():
            fut.exception()  # a reset during close is ordinary; mark it retrieved
