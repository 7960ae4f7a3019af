"""The file service: large payloads go to object stores, references travel as messages."""

from edgecloud.resource.files.client import FileClient, FileServiceError
from edgecloud.resource.files.store import (
    DirectoryStore,
    DirStoreConfig,
    FileRef,
    ObjectInfo,
    ObjectStore,
    S3Store,
    S3StoreConfig,
    make_store,
)

__all__ = ["DirStoreConfig", "DirectoryStore", "FileClient", "FileRef", "FileServiceError",
           "ObjectInfo", "ObjectStore", "S3Store", "S3StoreConfig", "make_store"]
