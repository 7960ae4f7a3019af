"""The S3 store (production): objects in a bucket of any S3 service, through boto3."""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

from edgecloud.errors import UserError
from edgecloud.resource.files.store.base import CHUNK, ObjectInfo, check_key, sha256_file


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
            # boto3 is untyped; the body of an object is a binary stream (StreamingBody).
            body: BinaryIO = self.s3.get_object(Bucket=self.bucket, Key=self._k(key))["Body"]
        except ClientError as exc:
            if _status(exc) == 404:
                raise FileNotFoundError(f"no object {key!r} in {self._where()}") from None
            raise
        return body

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
