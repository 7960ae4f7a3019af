"""The client of a site's file server, used by components (`self.files`) and the CLI.

    files = FileClient("http://127.0.0.1:9100", site="cloud")
    ref = files.put(Path("model.bin"), key="models/eoc.bin")   # -> FileRef
    data = FileClient(edge_url, site="ec-1").get(ref)         # fetched across the WAN once

A client always talks to its own site's file server; objects of other sites come
through it (`GET /sites/<site>/objects/<key>`). Content is verified against the
reference's sha256 on this side too, so a bad cache or proxy cannot go unnoticed.
"""

from __future__ import annotations

import hashlib
import io
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import httpx

from edgecloud.errors import UserError
from edgecloud.resource.files.store import CHUNK, FileRef, ObjectInfo, check_key


class FileServiceError(UserError):
    """A file service call failed; the message says what, where and why."""

    exit_code = 1


def _path(key: str) -> str:
    return quote(check_key(key), safe="/")


class FileClient:
    """Talks to the LOCAL site's file server; remote objects come through it.

    Thread-safe: one HTTP connection pool is shared by all threads of a component.
    """

    def __init__(self, base_url: str, site: str, timeout: float = 300.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.site = site
        # read/write timeouts are per chunk; a transfer that keeps moving never times out.
        self._timeout = httpx.Timeout(30, connect=10, read=timeout, write=timeout)
        self._http: httpx.Client | None = None
        self._lock = threading.Lock()

    # -- plumbing -------------------------------------------------------------------------
    def _client(self) -> httpx.Client:
        with self._lock:
            if self._http is None:
                self._http = httpx.Client(base_url=self.base_url, timeout=self._timeout)
            return self._http

    def close(self) -> None:
        """Close the connection pool (the client reopens it if used again)."""
        with self._lock:
            if self._http is not None:
                self._http.close()
                self._http = None

    def __enter__(self) -> FileClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _where(self) -> str:
        return f"file server of site {self.site} at {self.base_url}"

    def _fail(self, what: str, exc: Exception | httpx.Response) -> FileServiceError:
        if isinstance(exc, httpx.Response):
            try:
                detail = exc.json().get("detail", exc.text)
            except ValueError:
                detail = exc.text
            return FileServiceError(f"{what}: the {self._where()} answered {exc.status_code}: "
                                    f"{detail}")
        return FileServiceError(f"{what}: the {self._where()} is not reachable "
                                f"({type(exc).__name__}: {exc}); is the site running?")

    def _request(self, what: str, method: str, url: str, **kw: Any) -> httpx.Response:
        try:
            return self._client().request(method, url, **kw)
        except httpx.TransportError as exc:
            raise self._fail(what, exc) from None

    # -- API ------------------------------------------------------------------------------
    def put(self, data: bytes | Path | str, key: str | None = None) -> FileRef:
        """Store bytes or a file (a Path or a str path) at this site; returns its reference.

        The default key is `objects/<uuid>`. A file is streamed, never read whole.
        """
        key = check_key(key or f"objects/{uuid.uuid4().hex}")
        what = f"put {key!r}"
        if isinstance(data, bytes | bytearray | memoryview):
            digest = hashlib.sha256(data).hexdigest()
            r = self._request(what, "PUT", f"/objects/{_path(key)}", content=bytes(data),
                              headers={"X-Expected-Sha256": digest})
        else:
            src = Path(data)
            h = hashlib.sha256()
            try:
                fh = open(src, "rb")
                size = src.stat().st_size
            except FileNotFoundError:
                raise FileServiceError(f"{what}: no such file {src}") from None
            except OSError as exc:
                raise FileServiceError(f"{what}: cannot read {src}: {exc.strerror}") from None
            with fh:
                # Hash while streaming, then compare with what the server computed: one
                # pass over the file instead of hash-then-upload.
                r = self._request(what, "PUT", f"/objects/{_path(key)}",
                                  content=_chunks(fh, h),
                                  headers={"Content-Length": str(size)})
            digest = h.hexdigest()
        if r.status_code != 200:
            raise self._fail(what, r)
        ref = FileRef.model_validate(r.json())
        if ref.sha256 != digest:
            raise FileServiceError(f"{what}: the {self._where()} stored sha256 {ref.sha256} but "
                                   f"the data sent has {digest} (file changed while uploading?)")
        return ref

    def get(self, ref: FileRef) -> bytes:
        """The object's bytes, fetched from its site if needed; sha256 verified."""
        buf = io.BytesIO()
        self._download(ref, buf)
        return buf.getvalue()

    def get_to(self, ref: FileRef, dest: Path | str) -> Path:
        """Stream the object into `dest` (written atomically); sha256 verified."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            with open(tmp, "wb") as fh:
                self._download(ref, fh)
            tmp.replace(dest)
        finally:
            tmp.unlink(missing_ok=True)
        return dest

    def _download(self, ref: FileRef, out: IO[bytes]) -> None:
        what = f"get {ref.site}:{ref.key}"
        h = hashlib.sha256()
        size = 0
        try:
            with self._client().stream(
                    "GET", f"/sites/{quote(ref.site, safe='')}/objects/{_path(ref.key)}",
                    params={"sha256": ref.sha256, "size": ref.size}) as r:
                if r.status_code != 200:
                    r.read()
                    raise self._fail(what, r)
                for chunk in r.iter_raw(CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
        except httpx.TransportError as exc:
            raise self._fail(what, exc) from None
        if h.hexdigest() != ref.sha256 or size != ref.size:
            raise FileServiceError(f"{what}: received {size} bytes with sha256 {h.hexdigest()}"
                                   f" from the {self._where()}, the reference says {ref.size} "
                                   f"bytes with sha256 {ref.sha256}")

    def stat(self, key: str) -> ObjectInfo | None:
        """Size and sha256 of an object stored at this site, or None."""
        r = self._request(f"stat {key!r}", "GET", f"/stat/{_path(key)}")
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            raise self._fail(f"stat {key!r}", r)
        return ObjectInfo.model_validate(r.json())

    def ref(self, key: str) -> FileRef:
        """The reference of an object stored at this site (to send to other sites)."""
        info = self.stat(key)
        if info is None:
            raise FileServiceError(f"no object {key!r} at site {self.site} "
                                   f"({self.base_url})")
        return FileRef(site=self.site, key=key, size=info.size, sha256=info.sha256)

    def ls(self, prefix: str = "") -> list[ObjectInfo]:
        """Objects stored at this site whose key starts with `prefix`."""
        r = self._request("list", "GET", "/objects", params={"prefix": prefix})
        if r.status_code != 200:
            raise self._fail("list", r)
        return [ObjectInfo.model_validate(o) for o in r.json()]

    def delete(self, key: str) -> bool:
        """Delete an object stored at this site; False if there was none."""
        r = self._request(f"delete {key!r}", "DELETE", f"/objects/{_path(key)}")
        if r.status_code == 404:
            return False
        if r.status_code != 204:
            raise self._fail(f"delete {key!r}", r)
        return True


def _chunks(fh: IO[bytes], h: Any) -> Iterator[bytes]:
    while data := fh.read(CHUNK):
        h.update(data)
        yield data
