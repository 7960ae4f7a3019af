"""WAN emulation in user space: one shaping TCP proxy per edge site.

The kernel here has no netem, so every cross-site TCP path (bridge, file transfers,
agents' control traffic) passes through its edge site's proxy (routes in
docs/internals.md). The proxy terminates TCP on both sides and shapes the bytes between
(data-path model and mechanics in `wan_shaper`, settings and config in `wan_models`):

- rate: one serialisation queue per direction per site, shared by every connection of the
  site, like one link: a chunk of n bytes leaves at max(now, link free) + 8n/rate;
- delay and jitter: a chunk arrives `delay` (+ a jitter sample) after it left; arrival
  times never go backwards within a connection, so bytes stay in order;
- loss, as TCP feels it: with probability `loss` a chunk arrives one retransmission
  timeout (max(200 ms, 2 x delay)) late, holding back what follows it;
- partition: nothing crosses; connections stay open (new ones are accepted) and their
  bytes are delivered intact after the heal.

The byte counters are the one accounting point for edge-cloud bandwidth. Everything can
be changed live through the control API (`GET/PATCH /link`), which `edgecloud link`
uses; settings and counters persist in `state_file` (it wins over `link` at start).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import Callable, Coroutine
from typing import Any

import httpx
from fastapi import FastAPI
from pydantic import ValidationError

from edgecloud.errors import UserError
from edgecloud.log import get_logger
from edgecloud.resource.wan_models import LinkSettings, LinkStatus, LinkUpdate, Route, WanConfig
from edgecloud.resource.wan_shaper import Link, relay
from edgecloud.service import quiet_uvicorn, run_service

log = get_logger("wan")

SAVE_EVERY_S = 1.0

# The models live in wan_models (shared with wan_shaper); importers keep using this module.
__all__ = ["LinkClient", "LinkSettings", "LinkStatus", "LinkUpdate", "Route", "WanConfig",
           "WanProxy"]


class WanProxy:
    """All routes of one site on one emulated link, plus persistence and the control API."""

    def __init__(self, config: WanConfig) -> None:
        self.config = config
        self.link = Link(config.site, config.link)
        self._load_state()
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._saved: str | None = None

    def status(self) -> LinkStatus:
        lk = self.link
        return LinkStatus(site=lk.site, settings=lk.settings, bytes_up=lk.up.bytes,
                          bytes_down=lk.down.bytes,
                          by_route={k: dict(v) for k, v in lk.route_bytes.items() if k},
                          connections=lk.connections, since=lk.since)

    # -- persistence ---------------------------------------------------------------------
    def _load_state(self) -> None:
        path = self.config.state_file
        try:
            data = json.loads(path.read_text())
            settings = LinkSettings.model_validate(data["settings"])
            up, down, since = int(data["bytes_up"]), int(data["bytes_down"]), float(data["since"])
        except FileNotFoundError:
            return
        except (ValueError, KeyError, TypeError, ValidationError) as exc:
            log.warning("ignoring unreadable state file", file=str(path), error=str(exc))
            return
        self.link.update(settings)
        self.link.up.bytes, self.link.down.bytes, self.link.since = up, down, since
        for route, counts in (data.get("by_route") or {}).items():
            self.link.route_bytes[str(route)] = {"up": int(counts.get("up", 0)),
                                                 "down": int(counts.get("down", 0))}
        log.info("state restored", site=self.config.site, file=str(path), bytes_up=up,
                 bytes_down=down)

    def save(self) -> None:
        """Write settings and counters (atomically; skipped when nothing changed)."""
        text = self.status().model_dump_json(exclude={"connections"})
        if text == self._saved:
            return
        path = self.config.state_file
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(path)
        except OSError as exc:
            log.warning("cannot save state", file=str(path), error=str(exc))
            return
        self._saved = text

    # -- proxying --------------------------------------------------------------------------
    async def start(self) -> None:
        for route in self.config.routes:
            server = await asyncio.start_server(
                self._on_connect(route), route.listen.host, route.listen.port,
                reuse_address=True)
            self._servers.append(server)
        log.info("WAN emulation up", site=self.config.site, routes=len(self.config.routes),
                 **self.link.settings.model_dump())

    def _on_connect(self, route: Route
                    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], None]:
        """The route server's callback: relay each accepted connection in a tracked task."""
        def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._track(self._handle(route, reader, writer))
        return accept

    def _track(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, route: Route, c_reader: asyncio.StreamReader,
                      c_writer: asyncio.StreamWriter) -> None:
        try:
            t_reader, t_writer = await asyncio.open_connection(route.target.host,
                                                               route.target.port)
        except OSError as exc:
            log.warning("target unreachable", site=self.config.site, route=route.name,
                        target=f"{route.target.host}:{route.target.port}", error=str(exc))
            c_writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await c_writer.wait_closed()
            return
        log.debug("connection", route=route.name)
        try:
            await relay(self.link, route.initiator == "edge", c_reader, c_writer,
                        t_reader, t_writer, route.name)
        except Exception:  # a bug in the relay must not take the proxy down
            log.exception("relay failed", site=self.config.site, route=route.name)

    async def stop(self) -> None:
        for s in self._servers:
            s.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.save()

    # -- control API -----------------------------------------------------------------------
    def api(self) -> FastAPI:
        app = FastAPI(title=f"edgecloud WAN emulation of {self.config.site}")

        @app.get("/link")
        async def get_link() -> LinkStatus:
            return self.status()

        @app.patch("/link")
        async def patch_link(body: LinkUpdate) -> LinkStatus:
            changes = body.model_dump(exclude_unset=True)
            self.link.update(self.link.settings.model_copy(update=changes))
            self.save()
            log.info("link changed", site=self.config.site, **changes)
            return self.status()

        return app


async def _run(config: WanConfig) -> None:
    proxy = WanProxy(config)
    await proxy.start()
    uv = quiet_uvicorn(proxy.api(), config.control, lifespan="off")
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
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({stopper, api_task}, return_when=asyncio.FIRST_COMPLETED)
    uv.should_exit = True
    for t in (saver, stopper):
        t.cancel()
    await proxy.stop()
    with contextlib.suppress(asyncio.CancelledError):
        await api_task
    await asyncio.gather(saver, stopper, return_exceptions=True)
    log.info("WAN emulation stopped", site=config.site)


def serve(config: WanConfig) -> None:
    """Run the site's proxy and control API until SIGTERM/SIGINT, then save and return."""
    asyncio.run(_run(config))


class LinkClient:
    """Client of one site's WAN control API (`site` only names it in error messages)."""

    def __init__(self, base_url: str, site: str = "") -> None:
        self.base_url = base_url.rstrip("/")
        self.site = site

    def _call(self, method: str, body: dict[str, object] | None = None) -> LinkStatus:
        name = self.site or self.base_url
        try:
            r = httpx.request(method, f"{self.base_url}/link", json=body, timeout=10)
        except httpx.TransportError as exc:
            raise UserError(f"the WAN emulation of site {name} is not reachable at "
                            f"{self.base_url} ({exc}); is `edgecloud up` running?",
                            exit_code=1) from None
        if r.status_code == 422:
            raise UserError(f"WAN emulation of site {name} rejected the change: "
                            f"{_describe_422(r)}")
        if r.status_code != 200:
            raise UserError(f"WAN emulation of site {name} answered {r.status_code}: {r.text}",
                            exit_code=1)
        return LinkStatus.model_validate(r.json())

    def status(self) -> LinkStatus:
        """Current settings and counters."""
        return self._call("GET")

    def update(self, **changes: object) -> LinkStatus:
        """Change some settings (e.g. `update(up_bps=5e6, partitioned=True)`)."""
        return self._call("PATCH", changes)


def _describe_422(r: httpx.Response) -> str:
    try:
        detail = r.json()["detail"]
        return "; ".join(f"{e['loc'][-1]}: {e['msg']} (got {e.get('input')!r})"
                         for e in detail)
    except (ValueError, KeyError, TypeError, IndexError):
        return r.text


if __name__ == "__main__":
    run_service(WanConfig, serve)
