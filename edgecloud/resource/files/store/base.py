"""What every object store shares: references, object info, keys, the store protocol."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from pydantic import BaseModel

from edgecloud.errors import UserError

CHUNK = 1 << 20
"""Read/write/hash chunk: large enough that per-chunk Python overhead is negligible."""

MAX_KEY = 1024
MAX_SEGMENT = 200  # below NAME_MAX (255) with room for the sidecar's and temp names' suffixes


class FileRef(BaseModel):
    """A reference to an object at a site: what travels in messages instead of the bytes."""

    site: str
    key: str
    size: int
    sha256: str
    """Hex sha256 of the content; receivers verify it."""


class ObjectInfo(BaseModel):
    """What a store knows about one object (no rehash needed to answer)."""

    key: str
    size: int
    sha256: str
    modified: float
    """Seconds since the epoch."""


class InvalidKey(UserError):
    """A key that could escape the store, is empty or clashes with another key."""


def check_key(key: str) -> str:
    """Return `key` if it is a safe relative POSIX path, else raise InvalidKey.

    Refused: empty keys, a leading '/', '\\', empty segments ('a//b', trailing '/'),
    '.' and '..' segments, control characters, over-long keys or segments.
    """
    def bad(why: str) -> InvalidKey:
        return InvalidKey(f"invalid object key {key!r}: {why}; use a relative path like "
                          "'models/eoc.bin'")

    if not key:
        raise bad("empty key")
    if key.startswith("/"):
        raise bad("absolute path")
    if "\\" in key:
        raise bad("backslash (use '/')")
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise bad("control character")
    if len(key) > MAX_KEY:
        raise bad(f"longer than {MAX_KEY} characters")
    for part in key.split("/"):
        if part == "":
            raise bad("empty path segment")
        if part in (".", ".."):
            raise bad(f"'{part}' segment")
        if len(part.encode()) > MAX_SEGMENT:
            raise bad(f"segment longer than {MAX_SEGMENT} bytes")
    return key


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in large chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


class ObjectStore(Protocol):
    """What a file server needs from a store. Implementations must be thread-safe."""

    def put_file(self, key: str, src: Path, sha256: str | None = None) -> ObjectInfo:
        """Store the content of `src` under `key` (replacing it). `sha256`, if the caller
        already hashed the file while writing it, saves a pass over the data."""
        ...

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        """Store `data` under `key`."""
        ...

    def open(self, key: str) -> BinaryIO:
        """A binary stream of the object; FileNotFoundError if there is none."""
        ...

    def local_path(self, key: str) -> Path | None:
        """The object's file if the store keeps it on local disk (lets servers sendfile)."""
        ...

    def stat(self, key: str) -> ObjectInfo | None:
        """Size and sha256 of an object, or None."""
        ...

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Objects whose key starts with `prefix`, sorted by key."""
        ...

    def delete(self, key: str) -> bool:
        """Remove an object; False if there was none."""
        ...


def iter_file(fh: BinaryIO, chunk: int = CHUNK) -> Iterator[bytes]:
    """Chunks of a stream, closing it at the end (or when the consumer stops early)."""
    try:
        while data := fh.read(chunk):
            yield data
    finally:
        fh.close()
