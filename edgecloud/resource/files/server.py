"""A site's file server: `python -m edgecloud.resource.files.server CONFIG.json`.

Components put and get objects at their own site only. `GET /sites/<X>/objects/<key>`
serves an object that lives at site X: from the local store if X is this site, else from
the cache (by sha256), else fetched once from X's file server across the WAN (through
the shaping proxy's route in `peers`), verified and cached. Concurrent requests for the
same object share one transfer.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import tempfile
from pathlib import Path
from typing import Annotated, Any

import httpx
from fastapi import FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from pydantic import BaseModel

from edgecloud.log import get_logger
from edgecloud.resource.files.store import (
    DirStoreConfig,
    FileRef,
    InvalidKey,
    ObjectInfo,
    ObjectStore,
    S3StoreConfig,
    StoreConfig,
    check_key,
    iter_file,
    make_store,
)
from edgecloud.service import Endpoint, quiet_uvicorn, run_service

log = get_logger("files")

NET_CHUNK = 256 * 1024


class FileServerConfig(BaseModel):
    site: str
    listen: Endpoint
    store: StoreConfig
    cache_dir: Path
    peers: dict[str, str] = {}
    """Site name -> base URL of that site's file server as reachable from here."""


class FileServer:
    def __init__(self, config: FileServerConfig) -> None:
        self.config = config
        self.site = config.site
        self.store: ObjectStore = make_store(config.store)
        self.cache_dir = config.cache_dir
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir = (config.store.path / ".tmp" if isinstance(config.store, DirStoreConfig)
                        else self.cache_dir / ".tmp")
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self._flights: dict[str, asyncio.Lock] = {}
        self.stats = {"puts": 0, "gets": 0, "remote_fetches": 0, "cache_hits": 0,
                      "remote_bytes": 0}

    # -- local objects ------------------------------------------------------------------
    async def put(self, key: str, request: Request, expected: str | None) -> FileRef:
        h = hashlib.sha256()
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp_dir)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as fh:
                async for chunk in request.stream():
                    h.update(chunk)
                    fh.write(chunk)
            digest = h.hexdigest()
            if expected and expected != digest:
                raise HTTPException(400, f"sha256 mismatch for {key!r}: body has {digest}, "
                                         f"expected {expected}")
            info = await asyncio.to_thread(self.store.put_file, key, tmp, digest)
        finally:
            tmp.unlink(missing_ok=True)
        self.stats["puts"] += 1
        log.info("put", key=key, size=info.size)
        return FileRef(site=self.site, key=key, size=info.size, sha256=info.sha256)

    def serve_local(self, key: str, head: bool = False) -> Response:
        info = self.store.stat(key)
        if info is None:
            raise HTTPException(404, f"no object {key!r} at site {self.site}")
        self.stats["gets"] += 1
        headers = {"X-Sha256": info.sha256}
        if head:
            return Response(headers={**headers, "Content-Length": str(info.size)})
        path = self.store.local_path(key)
        if path is not None:
            return FileResponse(path, headers=headers, media_type="application/octet-stream")
        return StreamingResponse(iter_file(self.store.open(key)), headers=headers,
                                 media_type="application/octet-stream")

    # -- remote objects -----------------------------------------------------------------
    async def serve_site(self, site: str, key: str, sha256: str | None) -> Response:
        if site == self.site:
            if sha256:
                info = self.store.stat(key)
                if info is not None and info.sha256 != sha256:
                    raise HTTPException(409, f"object {key!r} at {site} changed: it has sha256 "
                                             f"{info.sha256}, the reference says {sha256}")
            return self.serve_local(key)
        base = self.config.peers.get(site)
        if base is None:
            known = ", ".join(sorted([self.site, *self.config.peers]))
            raise HTTPException(404, f"unknown site {site!r} (known: {known})")
        if not sha256:
            sha256 = (await self._remote_stat(base, site, key)).sha256
        cached = self.cache_dir / sha256
        if not cached.exists():
            lock = self._flights.setdefault(sha256, asyncio.Lock())
            async with lock:
                if not cached.exists():
                    await self._fetch(base, site, key, sha256, cached)
            self._flights.pop(sha256, None)
        else:
            self.stats["cache_hits"] += 1
        return FileResponse(cached, headers={"X-Sha256": sha256},
                            media_type="application/octet-stream")

    async def _remote_stat(self, base: str, site: str, key: str) -> ObjectInfo:
        try:
            async with httpx.AsyncClient(timeout=30) as http:
                r = await http.get(f"{base}/stat/{key}")
        except httpx.TransportError as exc:
            raise HTTPException(504, f"site {site} unreachable ({type(exc).__name__})") \
                from None
        if r.status_code != 200:
            raise HTTPException(r.status_code if r.status_code == 404 else 502,
                                _detail(r, site))
        return ObjectInfo.model_validate(r.json())

    async def _fetch(self, base: str, site: str, key: str, sha256: str, dest: Path) -> None:
        h = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp_dir)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as fh:
                async with httpx.AsyncClient(timeout=httpx.Timeout(60, read=120)) as http, \
                        http.stream("GET", f"{base}/objects/{key}") as r:
                    if r.status_code != 200:
                        await r.aread()
                        raise HTTPException(404 if r.status_code == 404 else 502,
                                            _detail(r, site))
                    async for chunk in r.aiter_bytes(NET_CHUNK):
                        h.update(chunk)
                        fh.write(chunk)
                        size += len(chunk)
            if h.hexdigest() != sha256:
                raise HTTPException(502, f"object {key!r} from {site} does not match its "
                                         f"reference (sha256 {h.hexdigest()}, expected "
                                         f"{sha256}); nothing cached")
            tmp.replace(dest)
        except httpx.TransportError as exc:
            raise HTTPException(504, f"fetching {key!r} from site {site} failed "
                                     f"({type(exc).__name__}); is the WAN link up?") from None
        finally:
            tmp.unlink(missing_ok=True)
        self.stats["remote_fetches"] += 1
        self.stats["remote_bytes"] += size
        log.info("fetched", site=site, key=key, size=size)

    # -- API ------------------------------------------------------------------------------
    def api(self) -> FastAPI:
        app = FastAPI(title=f"edgecloud file server {self.site}")

        def key_ok(key: str) -> str:
            try:
                return check_key(key)
            except InvalidKey as exc:
                raise HTTPException(400, str(exc)) from None

        @app.get("/healthz")
        def healthz() -> dict[str, Any]:
            return {"site": self.site, "stats": self.stats}

        @app.put("/objects/{key:path}")
        async def put(key: str, request: Request,
                      x_expected_sha256: Annotated[str | None, Header()] = None) -> FileRef:
            return await self.put(key_ok(key), request, x_expected_sha256)

        @app.get("/objects/{key:path}")
        def get(key: str) -> Response:
            return self.serve_local(key_ok(key))

        @app.head("/objects/{key:path}")
        def head(key: str) -> Response:
            return self.serve_local(key_ok(key), head=True)

        @app.get("/objects")
        def list_objects(prefix: str = "") -> list[ObjectInfo]:
            return self.store.list(prefix)

        @app.get("/stat/{key:path}")
        def stat(key: str) -> ObjectInfo:
            info = self.store.stat(key_ok(key))
            if info is None:
                raise HTTPException(404, f"no object {key!r} at site {self.site}")
            return info

        @app.delete("/objects/{key:path}", status_code=204)
        def delete(key: str) -> None:
            if not self.store.delete(key_ok(key)):
                raise HTTPException(404, f"no object {key!r} at site {self.site}")

        @app.get("/sites/{site}/objects/{key:path}")
        async def get_site(site: str, key: str,
                           sha256: Annotated[str | None, Query()] = None) -> Response:
            return await self.serve_site(site, key_ok(key), sha256)

        return app


def _detail(r: httpx.Response, site: str) -> str:
    try:
        detail = r.json().get("detail", r.text)
    except ValueError:
        detail = r.text
    return f"site {site} answered {r.status_code}: {detail}"


def serve(config: FileServerConfig) -> None:
    server = FileServer(config)
    uv: Any = quiet_uvicorn(server.api(), config.listen, timeout_graceful_shutdown=5)
    log.info("file server up", site=config.site, url=config.listen.url("http"),
             store=config.store.kind, peers=",".join(sorted(config.peers)))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: setattr(uv, "should_exit", True))
    uv.run()
    log.info("file server stopped", site=config.site)


__all__ = ["DirStoreConfig", "FileServerConfig", "S3StoreConfig", "serve"]

if __name__ == "__main__":
    run_service(FileServerConfig, serve)
