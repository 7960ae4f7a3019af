"""The directory store (embedded default): objects as files, metadata in JSON sidecars."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

from edgecloud.resource.files.store.base import (
    CHUNK,
    InvalidKey,
    ObjectInfo,
    check_key,
    sha256_file,
)


class DirectoryStore:
    """Objects as files under `root/objects`, sidecars under `root/.meta` (embedded).

    Writes go to `root/.tmp` (same filesystem) and are renamed into place, so a reader
    never sees half an object. The sidecar records size and mtime_ns next to the sha256:
    if the file was changed behind the store's back, `stat` notices and rehashes once.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.meta = self.root / ".meta"
        self.tmp_dir = self.root / ".tmp"
        for d in (self.objects, self.meta, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)
        # Object rename + sidecar write must not interleave between two puts of a key.
        self._lock = threading.Lock()

    def _paths(self, key: str) -> tuple[Path, Path]:
        check_key(key)
        return self.objects / key, self.meta / f"{key}.json"

    def temp_path(self) -> Path:
        """A fresh path in the store's temp directory (same filesystem as the objects)."""
        return self.tmp_dir / uuid.uuid4().hex

    def put_file(self, key: str, src: Path, sha256: str | None = None) -> ObjectInfo:
        """Store `src` atomically; hard-linked (no copy) when `sha256` is given and `src` is
        on the same filesystem, else copied and hashed in one pass."""
        path, meta = self._paths(key)
        tmp = self.temp_path()
        try:
            digest = sha256
            if digest is not None:
                try:
                    os.link(src, tmp)
                except OSError:
                    shutil.copyfile(src, tmp)
            else:
                with open(src, "rb") as fh:
                    digest = _write_hashed(tmp, iter(lambda: fh.read(CHUNK), b""))
            return self._commit(key, path, meta, tmp, digest)
        finally:
            tmp.unlink(missing_ok=True)

    def put_stream(self, key: str, chunks: Iterable[bytes]) -> ObjectInfo:
        """Store an iterable of chunks, hashing while writing."""
        path, meta = self._paths(key)
        tmp = self.temp_path()
        try:
            return self._commit(key, path, meta, tmp, _write_hashed(tmp, chunks))
        finally:
            tmp.unlink(missing_ok=True)

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        return self.put_stream(key, [data])

    def _commit(self, key: str, path: Path, meta: Path, tmp: Path, digest: str) -> ObjectInfo:
        with self._lock:
            _make_parent(path, key)
            if path.is_dir():
                raise InvalidKey(f"object key {key!r} clashes with existing keys under "
                                 f"'{key}/'; a key cannot be both an object and a folder")
            tmp.replace(path)
            st = path.stat()
            info = ObjectInfo(key=key, size=st.st_size, sha256=digest, modified=st.st_mtime)
            _write_json(meta, {**info.model_dump(), "mtime_ns": st.st_mtime_ns})
        return info

    def open(self, key: str) -> BinaryIO:
        path, _ = self._paths(key)
        if not path.is_file():
            raise FileNotFoundError(f"no object {key!r}")
        return open(path, "rb")

    def local_path(self, key: str) -> Path | None:
        path, _ = self._paths(key)
        return path if path.is_file() else None

    def stat(self, key: str) -> ObjectInfo | None:
        path, meta = self._paths(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not path.is_file():
            return None
        try:
            data = json.loads(meta.read_text())
            if data.get("size") == st.st_size and data.get("mtime_ns") == st.st_mtime_ns:
                return ObjectInfo.model_validate(data)
        except (OSError, ValueError):
            pass
        # Missing or stale sidecar (file copied in or edited by hand): hash once, remember.
        info = ObjectInfo(key=key, size=st.st_size, sha256=sha256_file(path),
                          modified=st.st_mtime)
        with self._lock:
            _write_json(meta, {**info.model_dump(), "mtime_ns": st.st_mtime_ns})
        return info

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        # Walk only the folder the prefix names, not the whole store.
        folder = prefix.rpartition("/")[0]
        try:
            base = self.objects / check_key(folder) if folder else self.objects
        except InvalidKey:
            return []  # no valid key starts with an invalid folder
        if not base.is_dir():
            return []
        out = []
        for path in sorted(base.rglob("*")):
            if path.is_file():
                key = path.relative_to(self.objects).as_posix()
                if key.startswith(prefix):
                    info = self.stat(key)
                    if info is not None:
                        out.append(info)
        return sorted(out, key=lambda o: o.key)

    def delete(self, key: str) -> bool:
        path, meta = self._paths(key)
        with self._lock:
            meta.unlink(missing_ok=True)
            try:
                path.unlink()
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return False
        return True


def _make_parent(path: Path, key: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InvalidKey(f"object key {key!r} lies under an existing object; a key cannot "
                         "be both an object and a folder") from None


def _write_hashed(dest: Path, chunks: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    with open(dest, "wb") as fh:
        for chunk in chunks:
            h.update(chunk)
            fh.write(chunk)
    return h.hexdigest()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)
