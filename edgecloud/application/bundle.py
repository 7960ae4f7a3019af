"""Application bundles: the code of an application, shipped to nodes as one file.

`edgecloud app deploy` packs the topology file's directory into a tar.gz, puts it in the
cloud's file store, and the platform hands its reference to every instance; each site's
file service fetches it across the WAN once and caches it (docs/internals.md).
"""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

from edgecloud.errors import UserError

EXCLUDED_DIRS = {"__pycache__", ".git", ".edgecloud", ".pytest_cache", ".ruff_cache",
                 ".mypy_cache", "node_modules", ".venv", "venv"}
MAX_BUNDLE_BYTES = 200 << 20


def _included(path: Path, root: Path) -> bool:
    rel = path.relative_to(root)
    if any(part in EXCLUDED_DIRS for part in rel.parts):
        return False
    return path.suffix not in (".pyc", ".pyo")


def make_bundle(source_dir: Path, exclude: tuple[Path, ...] = ()) -> bytes:
    """tar.gz of `source_dir` without caches, VCS folders and `exclude` (the topology
    file: the platform has it, and editing its params must not change the code bundle,
    or an incremental update would restart every component). Deterministic: the same
    files give the same bytes, so an unchanged bundle keeps its sha256."""
    root = source_dir.resolve()
    skip = {p.resolve() for p in exclude}
    buf = io.BytesIO()
    total = 0
    # mtime=0 in the gzip header too, so equal content gives an equal sha256.
    gz = gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=6, mtime=0)
    with gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for path in sorted(root.rglob("*")):
            if (not path.is_file() or path.is_symlink() or not _included(path, root)
                    or path.resolve() in skip):
                continue
            total += path.stat().st_size
            if total > MAX_BUNDLE_BYTES:
                raise UserError(f"{root}: the application directory holds more than "
                                f"{MAX_BUNDLE_BYTES >> 20} MiB of files; keep data and models "
                                "in the file service, not next to the topology file")
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(root)))
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            with open(path, "rb") as fh:
                tar.addfile(info, fh)
    return buf.getvalue()


def bundle_python_path(source_dir: Path, python_path: list[str]) -> list[str]:
    """spec.pythonPath entries as paths relative to the bundle root (they must be inside)."""
    root = source_dir.resolve()
    out = []
    for entry in python_path:
        p = (root / entry).resolve()
        try:
            out.append(str(p.relative_to(root)))
        except ValueError:
            raise UserError(f"spec.pythonPath entry {entry!r} is outside the application "
                            f"directory {root}; only that directory is shipped to nodes") \
                from None
    return out
