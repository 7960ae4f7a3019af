"""What a node does with its assignment: fetch app bundles, run instances, report back.

`NodeRuntime` sits between the agent (control channel) and the process runtime:
`apply(assignment)` turns the desired instance list into running processes, first
fetching each application's code bundle through the site's file service (cached per
sha256, so a site's nodes share one WAN transfer and a restart needs none);
`report()` returns instance statuses and the new lines of each instance's output for the
next heartbeat, so `edgecloud app logs` works for nodes behind NAT.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
import threading
from pathlib import Path

from edgecloud.log import get_logger
from edgecloud.resource.files import FileClient, FileRef
from edgecloud.resource.runtime import InstanceSpec, InstanceStatus, ProcessRuntime

log = get_logger("node")

LOG_CHUNK_MAX = 64 * 1024


class NodeRuntime:
    """Runs a node's assignment; see the module docstring."""

    def __init__(self, state_dir: Path, site: str, files_url: str, broker_url: str) -> None:
        self.state_dir = state_dir
        self.site = site
        self.files_url = files_url
        self.broker_url = broker_url
        self.runtime = ProcessRuntime(state_dir)
        self._offsets: dict[str, int] = {}
        self._assigned: list[InstanceSpec] = []
        self._assigned_digest: dict[str, str] = {}
        self._preparing: dict[str, InstanceStatus] = {}
        self._lock = threading.Lock()
        self._apply_lock = threading.Lock()
        self._applied_endpoints = (broker_url, files_url)

    # -- assignment ----------------------------------------------------------------------
    def apply(self, instances: list[InstanceSpec]) -> None:
        """Run exactly `instances` (as the platform assigned them) on this node."""
        with self._apply_lock:
            self._assigned = list(instances)
            self._apply_assigned()
        self._follow_endpoints()

    def set_endpoints(self, broker_url: str, files_url: str) -> None:
        """Adopt the site's current broker and file-server URLs (its services moved).

        Instances restart only if a value actually changed (their context carries them).
        Never waits for an apply in progress (this runs on the heartbeat thread): that
        apply re-applies with the new values when it ends.
        """
        if (broker_url, files_url) == (self.broker_url, self.files_url):
            return
        log.info("site endpoints changed", broker=broker_url, files=files_url)
        self.broker_url, self.files_url = broker_url, files_url
        self._follow_endpoints()

    def _follow_endpoints(self) -> None:
        # Whoever releases the apply lock checks again, so a change made while another
        # thread held it is never left unapplied.
        while self._applied_endpoints != (self.broker_url, self.files_url):
            if not self._apply_lock.acquire(blocking=False):
                return
            try:
                if self._applied_endpoints != (self.broker_url, self.files_url):
                    self._apply_assigned()
            finally:
                self._apply_lock.release()

    def _apply_assigned(self) -> None:
        endpoints = (self.broker_url, self.files_url)
        specs: list[InstanceSpec] = []
        digests: dict[str, str] = {}
        for spec in self._assigned:
            try:
                specs.append(self._localise(spec, *endpoints))
            except Exception as exc:  # one bad instance must not block the others
                log.error("cannot prepare instance", instance=spec.key, error=str(exc))
                self._preparing[spec.key] = self._pending(spec, f"cannot prepare: {exc}")
                continue
            digests[spec.key] = spec.digest()
        with self._lock:
            self.runtime.apply(specs)
            # Reported from now on: the platform compares the digests of what it assigned
            # (not of the local copy), and `apply` has given every instance its spec (a
            # membership change included: its context file was rewritten).
            self._assigned_digest = digests
            alive = {s.key for s in specs}
            self._offsets = {k: v for k, v in self._offsets.items() if k in alive}
            assigned = {s.key for s in self._assigned}
            self._preparing = {k: v for k, v in self._preparing.items()
                               if k in assigned and k not in alive}
        self._applied_endpoints = endpoints

    def _localise(self, spec: InstanceSpec, broker_url: str, files_url: str) -> InstanceSpec:
        """Fill in what only the node knows: its site's endpoints and the bundle path."""
        ctx = spec.context
        if ctx is None:
            return spec
        update: dict[str, object] = {"broker_url": broker_url, "files_url": files_url}
        if ctx.bundle is not None:
            self._preparing[spec.key] = self._pending(
                spec, f"fetching bundle {ctx.bundle.sha256[:12]} ({ctx.bundle.size} bytes)")
            root = self.fetch_bundle(ctx.bundle)
            update["source_dir"] = str(root / ctx.bundle_subdir)
            update["python_path"] = [str(root / p) for p in ctx.bundle_python_path]
        return spec.model_copy(update={"context": ctx.model_copy(update=update)})

    def _pending(self, spec: InstanceSpec, reason: str) -> InstanceStatus:
        return InstanceStatus(app=spec.app, name=spec.name, component=spec.component,
                              state="Pending", digest=spec.digest(), reason=reason)

    def fetch_bundle(self, file_ref: FileRef) -> Path:
        """Unpacked bundle directory for a FileRef, fetched once per sha256."""
        dest = self.state_dir / "bundles" / file_ref.sha256
        if (dest / ".complete").exists():
            return dest
        with tempfile.TemporaryDirectory(dir=self.state_dir) as tmp:
            archive = Path(tmp) / "bundle.tar.gz"
            FileClient(self.files_url, self.site).get_to(file_ref, archive)
            staging = Path(tmp) / "x"
            with tarfile.open(archive) as tar:
                tar.extractall(staging, filter="data")  # no absolute paths or links out
            (staging / ".complete").touch()
            shutil.rmtree(dest, ignore_errors=True)
            dest.parent.mkdir(parents=True, exist_ok=True)
            staging.replace(dest)
        log.info("bundle fetched", sha256=file_ref.sha256[:12], size=file_ref.size)
        return dest

    # -- reporting -----------------------------------------------------------------------
    def report(self) -> tuple[list[InstanceStatus], dict[str, str]]:
        """Instance statuses (those still being prepared as Pending, with why) and new
        output per instance since the last report."""
        with self._lock:  # the digests and the runtime's instances of one apply
            digests = self._assigned_digest
            statuses = [s.model_copy(update={"digest": digests.get(f"{s.app}/{s.name}",
                                                                   s.digest)})
                        for s in self.runtime.statuses()]
        running = {f"{s.app}/{s.name}" for s in statuses}
        statuses += [p for k, p in list(self._preparing.items()) if k not in running]
        logs: dict[str, str] = {}
        with self._lock:
            for s in statuses:
                key = f"{s.app}/{s.name}"
                chunk = self._new_output(key, self.runtime.log_path(s.app, s.name))
                if chunk:
                    logs[key] = chunk
        return statuses, logs

    def _new_output(self, key: str, path: Path) -> str:
        try:
            size = path.stat().st_size
        except OSError:
            return ""
        offset = self._offsets.get(key, 0)
        if size < offset:  # the log was rotated
            offset = 0
        if size == offset:
            return ""
        start = max(offset, size - LOG_CHUNK_MAX)  # a burst beyond the cap is skipped
        with open(path, "rb") as fh:
            fh.seek(start)
            data = fh.read(size - start)
        self._offsets[key] = size
        return data.decode(errors="replace")

    def close(self) -> None:
        self.runtime.close()
