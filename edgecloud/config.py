"""The home directory of an embedded edgecloud run: every path in one place.

`edgecloud up --home DIR` keeps all state, logs and the admin token under DIR (default
`./.edgecloud`, or $EDGECLOUD_HOME). Every command that talks to a running
infrastructure finds it through the `state.json` written there.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_HOME = ".edgecloud"


def default_home() -> Path:
    return Path(os.environ.get("EDGECLOUD_HOME", DEFAULT_HOME))


class Home:
    """Paths under one home directory."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_home()

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def admin_token_file(self) -> Path:
        return self.root / "admin.token"

    @property
    def lock_file(self) -> Path:
        return self.root / "supervisor.lock"

    @property
    def layout_file(self) -> Path:
        """The ports of the last run, reused by the next so that URLs stay valid."""
        return self.root / "layout.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def run(self) -> Path:
        """Service config files written by the supervisor."""
        return self.root / "run"

    @property
    def platform_dir(self) -> Path:
        return self.root / "platform"

    def site_dir(self, site: str) -> Path:
        return self.root / "sites" / site

    def node_dir(self, node: str) -> Path:
        return self.root / "nodes" / node

    def join_token_file(self, node: str) -> Path:
        """The join token handed to a node's agent (mode 0600, never on a command line)."""
        return self.run / f"agent-{node}.token"

    def log_file(self, service: str) -> Path:
        return self.logs / f"{service}.log"

    def write_secret(self, path: Path, text: str) -> None:
        """Write a secret readable by the owner only (see `write_private`)."""
        write_private(path, text)


def write_private(path: Path, text: str) -> None:
    """Replace `path` atomically with `text`, mode 0600 from creation: never a half-written
    or briefly world-readable secret."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o600)
    tmp.replace(path)
