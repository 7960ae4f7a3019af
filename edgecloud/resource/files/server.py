"""A site's file server: `python -m edgecloud.resource.files.server CONFIG.json`.

Components put and get objects at their own site only. `GET /sites/<X>/objects/<key>`
serves an object that lives at site X: from the local store if X is this site, else from
the cache (content-addressed by sha256), else fetched once from X's file server across
the WAN (through the base URL in `peers`, the shaping proxy's route), verified and cached.
Concurrent requests for the same object share one transfer.

HTTP API:

    PUT    /objects/{key}            body = content; X-Expected-Sha256 optional -> FileRef
    GET    /objects/{key}            content (HEAD: headers only); X-Sha256 header
    GET    /objects?prefix=P         [ObjectInfo]
    GET    /stat/{key}               ObjectInfo
    DELETE /objects/{key}            204
    GET    /sites/{site}/objects/{key}?sha256=&size=   fetch-through
    GET    /healthz                  {"site", "status", "stats"}
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import signal
import time
import uuid
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import httpx
from fastapi import FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.requests import ClientDisconnect

from edgecloud.errors import UserError
from edgecloud.log import get_logger
from edgecloud.resource.files.store import (
    CHUNK,
    DirectoryStore,
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

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
SHA_HEADER = "X-Sha256"
EXPECTED_SHA_HEADER = "X-Expected-Sha256"
OCTETS = "application/octet-stream"


class FileServerConfig(BaseModel):
    """Configuration of one site's file server (written by the supervisor)."""

    site: str
    listen: Endpoint
    store: StoreConfig
    cache_dir: Path
    peers: dict[str, str] = {}
    """Site name -> base URL of that site's file server as reachable from here."""
    cache_max_bytes: int | None = None
    """Evict least recently used cached objects above this total (None: keep all)."""


class _BigChunkFileResponse(FileResponse):
    # Starlette's 64 KiB default makes the event loop, not the disk or socket, the limit.
    chunk_size = CHUNK


class FileServer:
    """The state and handlers of one file server; `api()` builds its FastAPI app."""

    def __init__(self, config: FileServerConfig) -> None:
        self.config = config
        self.site = config.site
        self.peers = {s: u.rstrip("/") for s, u in config.peers.items()}
        self.store: ObjectStore = make_store(config.store)
        self.cache_dir = config.cache_dir
        self.cache_tmp = self.cache_dir / ".tmp"
        # Uploads are spooled next to the objects when the store is a directory, so the
        # final step is a hard link, not a copy.
        self.put_tmp = (self.store.tmp_dir if isinstance(self.store, DirectoryStore)
                        else self.cache_dir / ".uploads")
        shutil.rmtree(self.cache_tmp, ignore_errors=True)  # leftovers of a crash
        for d in (self.cache_tmp, self.put_tmp):
            d.mkdir(parents=True, exist_ok=True)
        _remove_stale(self.put_tmp)
        self._flights: dict[str, asyncio.Task[Path]] = {}
        self.stats = {"puts": 0, "gets": 0, "remote_fetches": 0, "fetch_joins": 0,
                      "cache_hits": 0, "fetch_failures": 0, "remote_bytes": 0,
                      "cache_evictions": 0}

    @staticmethod
    def _tmp(d: Path) -> Path:
        return d / uuid.uuid4().hex

    def _no_object(self, key: str) -> HTTPException:
        return HTTPException(404, f"no object {key!r} at site {self.site}")

    # -- local objects ------------------------------------------------------------------
    async def put(self, key: str, request: Request, expected: str | None) -> FileRef:
        """Spool the body to a temp file while hashing, then hand it to the store."""
        h = hashlib.sha256()
        tmp = self._tmp(self.put_tmp)
        try:
            with open(tmp, "wb") as fh:
                try:
                    async for chunk in request.stream():
                        h.update(chunk)
                        fh.write(chunk)
                except ClientDisconnect:
                    raise HTTPException(400, f"upload of {key!r} interrupted") from None
            digest = h.hexdigest()
            if expected and expected.lower() != digest:
                raise HTTPException(400, f"sha256 mismatch for {key!r}: the body has {digest}, "
                                         f"the client expected {expected}; nothing stored")
            try:
                info = await asyncio.to_thread(self.store.put_file, key, tmp, digest)
            except InvalidKey as exc:
                raise HTTPException(409, str(exc)) from None
        finally:
            tmp.unlink(missing_ok=True)
        self.stats["puts"] += 1
        log.info("put", key=key, size=info.size)
        return FileRef(site=self.site, key=key, size=info.size, sha256=info.sha256)

    def serve_local(self, key: str, head: bool = False, sha256: str | None = None) -> Response:
        """An object of this site's store (blocking: call from a thread for S3)."""
        info = self.store.stat(key)
        if info is None:
            raise self._no_object(key)
        if sha256 and info.sha256 != sha256:
            raise HTTPException(409, f"object {key!r} at site {self.site} has changed: it has "
                                     f"sha256 {info.sha256}, the reference says {sha256}")
        headers = {SHA_HEADER: info.sha256}
        if head:
            return Response(headers={**headers, "Content-Length": str(info.size)},
                            media_type=OCTETS)
        self.stats["gets"] += 1
        path = self.store.local_path(key)
        if path is not None:
            return _BigChunkFileResponse(path, headers=headers, media_type=OCTETS)
        try:
            stream = self.store.open(key)
        except FileNotFoundError:
            raise self._no_object(key) from None
        return StreamingResponse(iter_file(stream), media_type=OCTETS,
                                 headers={**headers, "Content-Length": str(info.size)})

    # -- objects of other sites -----------------------------------------------------------
    async def serve_site(self, site: str, key: str, sha256: str | None,
                         size: int | None) -> Response:
        """Fetch-through: local store, else cache, else one verified transfer from `site`."""
        if sha256 is not None:
            sha256 = sha256.lower()
            if not SHA256_RE.match(sha256):
                raise HTTPException(400, f"sha256 must be 64 hex digits, got {sha256!r}")
        if site == self.site:
            return await asyncio.to_thread(self.serve_local, key, False, sha256)
        base = self.peers.get(site)
        if base is None:
            known = ", ".join(sorted([self.site, *self.peers]))
            raise HTTPException(404, f"unknown site {site!r}: the file server of {self.site} "
                                     f"knows {known}")
        if sha256 is None:
            info = await self._remote_stat(base, site, key)
            sha256, size = info.sha256, info.size
        cached = self.cache_dir / sha256
        if cached.is_file():
            self.stats["cache_hits"] += 1
            os.utime(cached)  # mtime = last use, for LRU eviction
        else:
            await self._single_flight(base, site, key, sha256, size, cached)
            if self.config.cache_max_bytes is not None:
                await asyncio.to_thread(self._evict, self.config.cache_max_bytes, cached)
        return _BigChunkFileResponse(cached, headers={SHA_HEADER: sha256}, media_type=OCTETS)

    async def _single_flight(self, base: str, site: str, key: str, sha256: str,
                             size: int | None, dest: Path) -> None:
        task = self._flights.get(sha256)
        if task is None:
            task = asyncio.create_task(self._fetch(base, site, key, sha256, size, dest))
            self._flights[sha256] = task
            task.add_done_callback(lambda t: self._flight_done(sha256, t))
        else:
            self.stats["fetch_joins"] += 1
        # shield: a requester that hangs up must not abort the transfer others wait for.
        await asyncio.shield(task)

    def _flight_done(self, sha256: str, task: asyncio.Task[Path]) -> None:
        self._flights.pop(sha256, None)
        exc = None if task.cancelled() else task.exception()  # marks it retrieved
        if exc is not None:
            self.stats["fetch_failures"] += 1
            log.warning("fetch failed", sha256=sha256[:16],
                        error=getattr(exc, "detail", None) or repr(exc))

    def _evict(self, limit: int, keep: Path) -> None:
        """Delete least recently used cache entries until the cache holds <= `limit` bytes.

        An entry being served stays readable: the open file outlives its unlinking.
        """
        entries = []
        for p in self.cache_dir.iterdir():
            try:
                if p.is_file():
                    st = p.stat()
                    entries.append((st.st_mtime, st.st_size, p))
            except FileNotFoundError:
                continue
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= limit:
                break
            if path != keep:
                path.unlink(missing_ok=True)
                total -= size
                self.stats["cache_evictions"] += 1
                log.info("evicted", sha256=path.name[:16], size=size)

    async def _remote_stat(self, base: str, site: str, key: str) -> ObjectInfo:
        url = f"{base}/stat/{quote(key, safe='/')}"
        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(30, connect=10)) as http:
                r = await http.get(url)
        except httpx.TransportError as exc:
            raise _unreachable(site, base, exc) from None
        if r.status_code != 200:
            raise HTTPException(404 if r.status_code == 404 else 502, _detail(r, site))
        return ObjectInfo.model_validate(r.json())

    async def _fetch(self, base: str, site: str, key: str, sha256: str, size: int | None,
                     dest: Path) -> Path:
        """Stream `key` from `site` into a temp file; publish it at `dest` only if verified."""
        h = hashlib.sha256()
        received = 0
        tmp = self._tmp(self.cache_tmp)
        url = f"{base}/objects/{quote(key, safe='/')}"
        try:
            # read timeout is per chunk: a slow but moving WAN transfer never times out.
            timeout = httpx.Timeout(60, connect=10, read=120)
            async with httpx.AsyncClient(timeout=timeout) as http, \
                    http.stream("GET", url) as r:
                if r.status_code != 200:
                    await r.aread()
                    raise HTTPException(404 if r.status_code == 404 else 502, _detail(r, site))
                length = r.headers.get("content-length")
                if size is not None and length is not None and int(length) != size:
                    raise HTTPException(502, f"object {key!r} at site {site} has {length} bytes, "
                                             f"the reference says {size}; nothing cached")
                with open(tmp, "wb") as fh:
                    async for chunk in r.aiter_raw(CHUNK):
                        h.update(chunk)
                        fh.write(chunk)
                        received += len(chunk)
            digest = h.hexdigest()
            if digest != sha256:
                raise HTTPException(502, f"object {key!r} from site {site} does not match its "
                                         f"reference (sha256 {digest}, expected {sha256}); "
                                         "nothing cached")
            if size is not None and received != size:
                raise HTTPException(502, f"object {key!r} from site {site} has {received} "
                                         f"bytes, the reference says {size}; nothing cached")
            tmp.replace(dest)
        except httpx.TransportError as exc:
            raise _unreachable(site, base, exc, received) from None
        finally:
            tmp.unlink(missing_ok=True)
            self.stats["remote_bytes"] += received
        self.stats["remote_fetches"] += 1
        log.info("fetched", site=site, key=key, size=received)
        return dest

    # -- API ------------------------------------------------------------------------------
    def api(self) -> FastAPI:
        """The FastAPI application serving this site's objects."""
        app = FastAPI(title=f"edgecloud file server {self.site}")

        def key_ok(key: str) -> str:
            try:
                return check_key(key)
            except InvalidKey as exc:
                raise HTTPException(400, str(exc)) from None

        @app.get("/healthz")
        def healthz() -> dict[str, Any]:
            return {"site": self.site, "status": "ok", "stats": self.stats,
                    "peers": sorted(self.peers)}

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
                raise self._no_object(key)
            return info

        @app.delete("/objects/{key:path}", status_code=204)
        def delete(key: str) -> None:
            if not self.store.delete(key_ok(key)):
                raise self._no_object(key)
            log.info("deleted", key=key)

        @app.get("/sites/{site}/objects/{key:path}")
        async def get_site(site: str, key: str,
                           sha256: Annotated[str | None, Query()] = None,
                           size: Annotated[int | None, Query(ge=0)] = None) -> Response:
            return await self.serve_site(site, key_ok(key), sha256, size)

        return app


def _remove_stale(d: Path, age: float = 3600.0) -> None:
    """Remove temp files a crashed server left (old enough not to be a live upload)."""
    now = time.time()
    for p in d.iterdir():
        try:
            if now - p.stat().st_mtime > age:
                p.unlink()
        except OSError:
            continue


def _unreachable(site: str, base: str, exc: Exception, received: int = 0) -> HTTPException:
    what = (f"the transfer from site {site} broke after {received} bytes" if received
            else f"the file server of site {site} at {base} is unreachable")
    return HTTPException(504, f"{what} ({type(exc).__name__}); is the WAN link up? "
                              "nothing cached, retry later")


def _detail(r: httpx.Response, site: str) -> str:
    try:
        detail = r.json().get("detail", r.text)
    except ValueError:
        detail = r.text
    return f"site {site} answered {r.status_code}: {detail}"


def serve(config: FileServerConfig) -> None:
    """Run the file server until SIGTERM/SIGINT; returns once stopped cleanly."""
    try:
        server = FileServer(config)
    except UserError as exc:
        log.error("cannot start", site=config.site, error=str(exc))
        raise SystemExit(1) from None
    uv = quiet_uvicorn(server.api(), config.listen, timeout_graceful_shutdown=5)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: setattr(uv, "should_exit", True))
    log.info("file server up", site=config.site, url=config.listen.url("http"),
             store=config.store.kind, peers=",".join(sorted(config.peers)))
    uv.run()
    log.info("file server stopped", site=config.site)


__all__ = ["DirStoreConfig", "FileServer", "FileServerConfig", "S3StoreConfig", "serve"]

if __name__ == "__main__":
    run_service(FileServerConfig, serve)
