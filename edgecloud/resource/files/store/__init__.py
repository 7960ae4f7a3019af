"""Object stores behind a site's file server: a directory (embedded) or any S3 service.

Both keep each object's size and sha256 so that `stat` never rehashes: the directory
store in a JSON sidecar per object, S3 in the object's user metadata (`x-amz-meta-sha256`).
Keys are relative POSIX paths (`models/eoc.bin`); `check_key` is the one place that says
which keys are allowed, so a key accepted by one store is accepted by every store.

Modules: `base` (FileRef, ObjectInfo, keys, the ObjectStore protocol), `directory`
(DirectoryStore), `s3` (S3Store), `config` (store configs and `make_store`).
"""

from edgecloud.resource.files.store.base import (
    CHUNK,
    MAX_KEY,
    MAX_SEGMENT,
    FileRef,
    InvalidKey,
    ObjectInfo,
    ObjectStore,
    check_key,
    iter_file,
    sha256_file,
)
from edgecloud.resource.files.store.config import (
    DirStoreConfig,
    S3StoreConfig,
    StoreConfig,
    make_store,
)
from edgecloud.resource.files.store.directory import DirectoryStore
from edgecloud.resource.files.store.s3 import S3Store

__all__ = ["CHUNK", "MAX_KEY", "MAX_SEGMENT", "DirStoreConfig", "DirectoryStore", "FileRef",
           "InvalidKey", "ObjectInfo", "ObjectStore", "S3Store", "S3StoreConfig", "StoreConfig",
           "check_key", "iter_file", "make_store", "sha256_file"]
