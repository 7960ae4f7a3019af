"""Store configuration: which store a site's file server uses, and building it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from edgecloud.resource.files.store.base import ObjectStore
from edgecloud.resource.files.store.directory import DirectoryStore
from edgecloud.resource.files.store.s3 import S3Store


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
