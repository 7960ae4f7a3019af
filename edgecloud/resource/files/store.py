"""Object stores behind a site's file server: a directory (embedded) or any S3 service.

Both keep each object's size and sha256 so that `stat` never rehashes: the directory
store in a JSON sidecar, S3 in the object's metadata.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, BinaryIO, Literal, Protocol

from pydantic import BaseModel, Field

from edgecloud.errors import UserError

HASH_CHUNK = 1 << 20


class FileRef(BaseModel):
    """A reference to an object at a site: what travels in messages instead of the bytes."""

    site: str
    key: str
    size: int
    sha256: str


class ObjectInfo(BaseModel):
    key: str
    size: int
    sha256: str
    modified: float


class InvalidKey(UserError):
    """A key that could escape the store or is empty."""


def check_key(key: str) -> str:
    """Keys are relative POSIX paths without '..', empty segments or a leading '/'."""
    parts = PurePosixPath(key).parts
    if (not key or key.startswith("/") or "\\" in key or "//" in key or key.endswith("/")
            or any(p in ("..", ".") for p in parts) or key.startswith(".meta")):
        raise InvalidKey(f"invalid object key {key!r}: use a relative path like "
                         "'models/eoc.bin' (no '..', no leading '/', no empty parts)")
    return key


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class ObjectStore(Protocol):
    def put_file(self, key: str, src: Path, sha256: str | None = None) -> ObjectInfo: ...
    def put_bytes(self, key: str, data: bytes) -> ObjectInfo: ...
    def open(self, key: str) -> BinaryIO: ...
    def local_path(self, key: str) -> Path | None: ...
    def stat(self, key: str) -> ObjectInfo | None: ...
    def list(self, prefix: str = "") -> list[ObjectInfo]: ...
    def delete(self, key: str) -> bool: ...


class DirectoryStore:
    """Objects as files under `root/objects`, metadata under `root/.meta` (embedded)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "objects"
        self.meta = root / ".meta"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.meta.mkdir(parents=True, exist_ok=True)

    def _paths(self, key: str) -> tuple[Path, Path]:
        check_key(key)
        return self.objects / key, self.meta / f"{key}.json"

    def put_file(self, key: str, src: Path, sha256: str | None = None) -> ObjectInfo:
        """Move (or copy) `src` in atomically; `sha256` if the caller hashed while writing."""
        path, meta = self._paths(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta.parent.mkdir(parents=True, exist_ok=True)
        digest = sha256 or sha256_file(src)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}")
        try:
            os.link(src, tmp)  # same filesystem: no copy
        except OSError:
            shutil.copyfile(src, tmp)
        info = ObjectInfo(key=key, size=tmp.stat().st_size, sha256=digest, modified=time.time())
        tmp.replace(path)
        _write_json(meta, info.model_dump())
        return info

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        with tempfile.NamedTemporaryFile(dir=self.root, delete=False) as fh:
            fh.write(data)
        try:
            return self.put_file(key, Path(fh.name), hashlib.sha256(data).hexdigest())
        finally:
            os.unlink(fh.name)

    def open(self, key: str) -> BinaryIO:
        path, _ = self._paths(key)
        return open(path, "rb")

    def local_path(self, key: str) -> Path | None:
        path, _ = self._paths(key)
        return path if path.is_file() else None

    def stat(self, key: str) -> ObjectInfo | None:
        path, meta = self._paths(key)
        if not path.is_file():
            return None
        try:
            return ObjectInfo.model_validate_json(meta.read_text())
        except (OSError, ValueError):  # written by hand: compute and remember
            info = ObjectInfo(key=key, size=path.stat().st_size, sha256=sha256_file(path),
                              modified=path.stat().st_mtime)
            _write_json(meta, info.model_dump())
            return info

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        out = []
        for path in sorted(self.objects.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                key = path.relative_to(self.objects).as_posix()
                if key.startswith(prefix):
                    info = self.stat(key)
                    if info is not None:
                        out.append(info)
        return out

    def delete(self, key: str) -> bool:
        path, meta = self._paths(key)
        meta.unlink(missing_ok=True)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True


class S3Store:
    """Objects in an S3 bucket (AWS, MinIO, nanio, ...) through boto3 (production)."""

    def __init__(self, endpoint_url: str, bucket: str, access_key: str, secret_key: str,
                 region: str = "us-east-1", prefix: str = "") -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix
        self.s3 = boto3.client("s3", endpoint_url=endpoint_url, aws_access_key_id=access_key,
                               aws_secret_access_key=secret_key, region_name=region,
                               config=Config(s3={"addressing_style": "path"},
                                             retries={"max_attempts": 3}))
        try:
            self.s3.head_bucket(Bucket=bucket)
        except self.s3.exceptions.ClientError:
            self.s3.create_bucket(Bucket=bucket)

    def _k(self, key: str) -> str:
        return self.prefix + check_key(key)

    def put_file(self, key: str, src: Path, sha256: str | None = None) -> ObjectInfo:
        digest = sha256 or sha256_file(src)
        self.s3.upload_file(str(src), self.bucket, self._k(key),
                            ExtraArgs={"Metadata": {"sha256": digest}})
        return ObjectInfo(key=key, size=src.stat().st_size, sha256=digest,
                          modified=time.time())

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        digest = hashlib.sha256(data).hexdigest()
        self.s3.put_object(Bucket=self.bucket, Key=self._k(key), Body=data,
                           Metadata={"sha256": digest})
        return ObjectInfo(key=key, size=len(data), sha256=digest, modified=time.time())

    def open(self, key: str) -> BinaryIO:
        body = self.s3.get_object(Bucket=self.bucket, Key=self._k(key))["Body"]
        return body  # type: ignore[no-any-return]

    def local_path(self, key: str) -> Path | None:
        return None

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            head = self.s3.head_object(Bucket=self.bucket, Key=self._k(key))
        except self.s3.exceptions.ClientError:
            return None
        digest = head.get("Metadata", {}).get("sha256", "")
        return ObjectInfo(key=key, size=int(head["ContentLength"]), sha256=digest,
                          modified=head["LastModified"].timestamp())

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        out = []
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                key = obj["Key"][len(self.prefix):]
                info = self.stat(key)
                if info is not None:
                    out.append(info)
        return out

    def delete(self, key: str) -> bool:
        if self.stat(key) is None:
            return False
        self.s3.delete_object(Bucket=self.bucket, Key=self._k(key))
        return True


class DirStoreConfig(BaseModel):
    kind: Literal["dir"] = "dir"
    path: Path


class S3StoreConfig(BaseModel):
    kind: Literal["s3"] = "s3"
    endpoint_url: str
    bucket: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    prefix: str = ""


StoreConfig = Annotated[DirStoreConfig | S3StoreConfig, Field(discriminator="kind")]


def make_store(cfg: DirStoreConfig | S3StoreConfig) -> ObjectStore:
    if isinstance(cfg, DirStoreConfig):
        return DirectoryStore(cfg.path)
    return S3Store(cfg.endpoint_url, cfg.bucket, cfg.access_key, cfg.secret_key, cfg.region,
                   cfg.prefix)


def iter_file(fh: BinaryIO, chunk: int = HASH_CHUNK) -> Iterator[bytes]:
    try:
        while data := fh.read(chunk):
            yield data
    finally:
        fh.close()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)
