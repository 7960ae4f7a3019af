"""The client of a site's file server, used by components (`self.files`) and the CLI.

    files = FileClient("http://127.0.0.1:9100", site="cloud")
    ref = files.put(Path("model.bin"), key="models/eoc.bin")   # -> FileRef
    data = FileClient(edge_url, site="ec-1").get(ref)         # fetched across the WAN once
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import uuid
from pathlib import Path

import httpx

from edgecloud.errors import UserError
from edgecloud.resource.files.store import FileRef, ObjectInfo, check_key

CHUNK = 1 << 20


class FileServiceError(UserError):
    exit_code = 1


class FileClient:
    """Talks to the LOCAL site's file server; remote objects come through it."""

    def __init__(self, base_url: str, site: str, timeout: float = 300.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.site = site
        self._timeout = httpx.Timeout(30, read=timeout, write=timeout)

    def _http(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=self._timeout)

    def _fail(self, what: str, exc: Exception | httpx.Response) -> FileServiceError:
        if isinstance(exc, httpx.Response):
            try:
                detail = exc.json().get("detail", exc.text)
            except ValueError:
                detail = exc.text
            return FileServiceError(f"{what}: file server of {self.site} at {self.base_url} "
                                    f"answered {exc.status_code}: {detail}")
        return FileServiceError(f"{what}: file server of {self.site} at {self.base_url} is "
                                f"not reachable ({type(exc).__name__})")

    def put(self, data: bytes | Path | str, key: str | None = None) -> FileRef:
        """Store bytes or a file at this site; returns its reference."""
        key = check_key(key or f"objects/{uuid.uuid4().hex}")
        what = f"put {key!r}"
        try:
            with self._http() as http:
                if isinstance(data, bytes):
                    r = http.put(f"/objects/{key}", content=data, headers={
                        "X-Expected-Sha256": hashlib.sha256(data).hexdigest()})
                else:
                    with open(data, "rb") as fh:
                        r = http.put(f"/objects/{key}", content=_chunks(fh))
        except FileNotFoundError:
            raise FileServiceError(f"{what}: no such file {data}") from None
        except httpx.TransportError as exc:
            raise self._fail(what, exc) from None
        if r.status_code != 200:
            raise self._fail(what, r)
        return FileRef.model_validate(r.json())

    def get(self, ref: FileRef) -> bytes:
        """The object's bytes, fetched from its site if needed; sha256 verified."""
        fd, tmp = tempfile.mkstemp()
        os.close(fd)
        try:
            return self.get_to(ref, Path(tmp)).read_bytes()
        finally:
            os.unlink(tmp)

    def get_to(self, ref: FileRef, dest: Path) -> Path:
        """Stream the object into `dest` (written atomically); sha256 verified."""
        what = f"get {ref.site}:{ref.key}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}")
        h = hashlib.sha256()
        try:
            with self._http() as http, http.stream(
                    "GET", f"/sites/{ref.site}/objects/{ref.key}",
                    params={"sha256": ref.sha256}) as r:
                if r.status_code != 200:
                    r.read()
                    raise self._fail(what, r)
                with open(tmp, "wb") as fh:
                    for chunk in r.iter_bytes(CHUNK):
                        h.update(chunk)
                        fh.write(chunk)
        except httpx.TransportError as exc:
            tmp.unlink(missing_ok=True)
            raise self._fail(what, exc) from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if h.hexdigest() != ref.sha256:
            tmp.unlink(missing_ok=True)
            raise FileServiceError(f"{what}: received data has sha256 {h.hexdigest()}, the "
                                   f"reference says {ref.sha256}")
        tmp.replace(dest)
        return dest

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            with self._http() as http:
                r = http.get(f"/stat/{check_key(key)}")
        except httpx.TransportError as exc:
            raise self._fail(f"stat {key!r}", exc) from None
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            raise self._fail(f"stat {key!r}", r)
        return ObjectInfo.model_validate(r.json())

    def ref(self, key: str) -> FileRef:
        """The reference of an object stored at this site."""
        info = self.stat(key)
        if info is None:
            raise FileServiceError(f"no object {key!r} at site {self.site}")
        return FileRef(site=self.site, key=key, size=info.size, sha256=info.sha256)

    def ls(self, prefix: str = "") -> list[ObjectInfo]:
        try:
            with self._http() as http:
                r = http.get("/objects", params={"prefix": prefix})
        except httpx.TransportError as exc:
            raise self._fail("list", exc) from None
        if r.status_code != 200:
            raise self._fail("list", r)
        return [ObjectInfo.model_validate(o) for o in r.json()]

    def delete(self, key: str) -> bool:
        try:
            with self._http() as http:
                r = http.delete(f"/objects/{check_key(key)}")
        except httpx.TransportError as exc:
            raise self._fail(f"delete {key!r}", exc) from None
        if r.status_code == 404:
            return False
        if r.status_code != 204:
            raise self._fail(f"delete {key!r}", r)
        return True


def _chunks(fh: object):  # type: ignore[no-untyped-def]
    while data := fh.read(CHUNK):  # type: ignore[attr-defined]
        yield data
