"""Object stores behind a site's file server: a directory (embedded) or any S3 service.

Both keep each object's size and sha256 so that `stat` never rehashes: the directory
store in a JSON sidecar per object, S3 in the object's user metadata (`x-amz-meta-sha256`).
Keys are relative POSIX paths (`models/eoc.bin`); `check_key` is the one place that says
which keys are allowed, so a key accepted by one store is accepted by every store.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any, BinaryIO, Literal, Protocol

from pydantic import BaseModel, Field

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


# -- directory store --------------------------------------------------------------------


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


# -- S3 store -------------------------------------------------------------------------


class S3Store:
    """Objects in an S3 bucket (AWS, MinIO, nanio, ...) through boto3 (production).

    The sha256 travels as user metadata; objects written by other tools without it are
    hashed once on `stat` and the metadata is added (best effort, by a self-copy).
    """

    def __init__(self, endpoint_url: str, bucket: str, access_key: str, secret_key: str,
                 region: str = "us-east-1", prefix: str = "") -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.endpoint_url = endpoint_url
        self.bucket = bucket
        self.prefix = prefix
        self.s3 = boto3.client("s3", endpoint_url=endpoint_url, aws_access_key_id=access_key,
                               aws_secret_access_key=secret_key, region_name=region,
                               config=Config(s3={"addressing_style": "path"},
                                             retries={"max_attempts": 3},
                                             max_pool_connections=16))
        # Multipart above 16 MiB in 16 MiB parts: fewer round trips than boto3's 8 MiB.
        self.transfer = TransferConfig(multipart_threshold=16 << 20,
                                       multipart_chunksize=16 << 20)
        self._ensure_bucket(region)

    def _where(self) -> str:
        return f"S3 bucket {self.bucket!r} at {self.endpoint_url}"

    def _ensure_bucket(self, region: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.s3.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _status(exc) not in (404, 400):
                raise UserError(f"{self._where()}: {exc}; check the credentials") from None
        except BotoCoreError as exc:
            raise UserError(f"{self._where()} is not reachable: {exc}") from None
        kw: dict[str, Any] = {}
        if region != "us-east-1":  # S3 rejects an explicit us-east-1 constraint
            kw["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self.s3.create_bucket(Bucket=self.bucket, **kw)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise UserError(f"{self._where()}: cannot create the bucket: {exc}") from None

    def _k(self, key: str) -> str:
        return self.prefix + check_key(key)

    def put_file(self, key: str, src: Path, sha256: str | None = None) -> ObjectInfo:
        digest = sha256 or sha256_file(src)
        self.s3.upload_file(str(src), self.bucket, self._k(key), Config=self.transfer,
                            ExtraArgs={"Metadata": {"sha256": digest}})
        return ObjectInfo(key=key, size=Path(src).stat().st_size, sha256=digest,
                          modified=time.time())

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        digest = hashlib.sha256(data).hexdigest()
        self.s3.put_object(Bucket=self.bucket, Key=self._k(key), Body=data,
                           Metadata={"sha256": digest})
        return ObjectInfo(key=key, size=len(data), sha256=digest, modified=time.time())

    def open(self, key: str) -> BinaryIO:
        from botocore.exceptions import ClientError

        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=self._k(key))["Body"]
        except ClientError as exc:
            if _status(exc) == 404:
                raise FileNotFoundError(f"no object {key!r} in {self._where()}") from None
            raise
        return body  # type: ignore[no-any-return]

    def local_path(self, key: str) -> Path | None:
        return None

    def stat(self, key: str) -> ObjectInfo | None:
        from botocore.exceptions import ClientError

        try:
            head = self.s3.head_object(Bucket=self.bucket, Key=self._k(key))
        except ClientError as exc:
            if _status(exc) == 404:
                return None
            raise
        digest = head.get("Metadata", {}).get("sha256", "")
        if not digest:
            digest = self._hash_and_tag(key)
        return ObjectInfo(key=key, size=int(head["ContentLength"]), sha256=digest,
                          modified=head["LastModified"].timestamp())

    def _hash_and_tag(self, key: str) -> str:
        h = hashlib.sha256()
        with self.open(key) as body:
            while chunk := body.read(CHUNK):
                h.update(chunk)
        digest = h.hexdigest()
        try:  # remember it, so the next stat is cheap; harmless if the server refuses
            self.s3.copy_object(Bucket=self.bucket, Key=self._k(key),
                                CopySource={"Bucket": self.bucket, "Key": self._k(key)},
                                Metadata={"sha256": digest}, MetadataDirective="REPLACE")
        except Exception:  # noqa: BLE001 - best effort only
            pass
        return digest

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        keys: list[str] = []
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + prefix)
        for page in pages:
            keys += [obj["Key"][len(self.prefix):] for obj in page.get("Contents", [])]
        # Listings carry no user metadata: one HEAD per object, a few in parallel.
        with ThreadPoolExecutor(8) as pool:
            infos = list(pool.map(self.stat, keys))
        return sorted((i for i in infos if i is not None), key=lambda o: o.key)

    def delete(self, key: str) -> bool:
        if self.stat(key) is None:
            return False
        self.s3.delete_object(Bucket=self.bucket, Key=self._k(key))
        return True


def _status(exc: Any) -> int | None:
    """HTTP status of a botocore ClientError, 404 for every spelling of 'not found'."""
    resp = getattr(exc, "response", None) or {}
    if resp.get("Error", {}).get("Code") in ("NoSuchKey", "NoSuchBucket", "NotFound", "404"):
        return 404
    status = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if status is not None else None


# -- configuration ----------------------------------------------------------------------


class DirStoreConfig(BaseModel):
    """A directory store (embedded default): objects under `path`."""

    kind: Literal["dir"] = "dir"
    path: Path


class S3StoreConfig(BaseModel):
    """An S3 bucket (production): AWS, MinIO, nanio, ... Keys are stored under `prefix`."""

    kind: Literal["s3"] = "s3"
    endpoint_url: str
    bucket: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    prefix: str = ""


StoreConfig = Annotated[DirStoreConfig | S3StoreConfig, Field(discriminator="kind")]


def make_store(cfg: DirStoreConfig | S3StoreConfig) -> ObjectStore:
    """The store a config describes (creating the directory or bucket if missing)."""
    if isinstance(cfg, DirStoreConfig):
        return DirectoryStore(cfg.path)
    return S3Store(cfg.endpoint_url, cfg.bucket, cfg.access_key, cfg.secret_key, cfg.region,
                   cfg.prefix)


def iter_file(fh: BinaryIO, chunk: int = CHUNK) -> Iterator[bytes]:
    """Chunks of a stream, closing it at the end (or when the consumer stops early)."""
    try:
        while data := fh.read(chunk):
            yield data
    finally:
        fh.close()

