"""The file service: large payloads go to object stores, references travel as messages.

`FileRef` is what a message carries; `FileClient` talks to the local site's file server;
`FileServerConfig`/`serve` run one (imported lazily: components need not load FastAPI).
"""

from typing import Any

from edgecloud.resource.files.client import FileClient, FileServiceError
from edgecloud.resource.files.store import (
    DirectoryStore,
    DirStoreConfig,
    FileRef,
    InvalidKey,
    ObjectInfo,
    ObjectStore,
    S3Store,
    S3StoreConfig,
    StoreConfig,
    check_key,
    make_store,
)

_SERVER_NAMES = ("FileServer", "FileServerConfig", "serve")


def __getattr__(name: str) -> Any:
    if name in _SERVER_NAMES:
        from edgecloud.resource.files import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DirStoreConfig", "DirectoryStore", "FileClient", "FileRef", "FileServer",
           "FileServerConfig", "FileServiceError", "InvalidKey", "ObjectInfo", "ObjectStore",
           "S3Store", "S3StoreConfig", "StoreConfig", "check_key", "make_store", "serve"]
