"""`python -m edgecloud.application.runner`: the process of one component instance.

Reads the instance context (EDGECLOUD_CONTEXT), imports the component class, connects to
the site broker, runs `setup`, then `run` on the main thread while messages are handled
on a worker thread, reports to the in-app controller and writes metrics for the agent.
SIGTERM stops it cleanly: no new messages are taken, the worker finishes the current one
and drains the queue for a few seconds (what is left stays with the broker, unacknowledged,
for the next start), then `teardown`, then the publishes are flushed, exit 0.

The membership is live: the node replaces the context file (atomically) when only the
application's membership changed, and the background thread, which checks the file's
identity (inode, mtime, size) every `MEMBERSHIP_EVERY_S`, hands the new peers and
members to the component (`Component._follow_membership`).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from edgecloud.application import topics
from edgecloud.application.context import CONTEXT_ENV, InstanceContext
from edgecloud.application.sdk import Component, load_class
from edgecloud.errors import UserError
from edgecloud.log import get_logger, setup_logging
from edgecloud.resource.mqtt import BackpressureError, MqttClient

log = get_logger("runner")
METRICS_EVERY_S = 2.0
MEMBERSHIP_EVERY_S = 0.5
"""How often the context file is checked (one stat) for a new membership."""
READY_FILE = "ready"


def _import_path(ctx: InstanceContext) -> None:
    for p in reversed([ctx.source_dir, *ctx.python_path]):
        if p and p not in sys.path:
            sys.path.insert(0, p)


class ContextWatcher:
    """Notices that the context file was replaced (one `stat` per check: cheap).

    Create it before the file is first read: a replacement in between is then seen too.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen = self._identity()

    def _identity(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def changed(self) -> InstanceContext | None:
        """The context as the file holds it now, if the file changed since last seen."""
        identity = self._identity()
        if identity is None or identity == self._seen:
            return None
        try:
            ctx = InstanceContext.model_validate_json(self.path.read_bytes())
        except (OSError, ValueError) as exc:  # not seen: read again at the next check
            log.warning("unreadable instance context", path=str(self.path), error=str(exc))
            return None
        self._seen = identity
        return ctx


def _background(comp: Component, ctx: InstanceContext,
                watcher: ContextWatcher | None) -> None:
    """Membership updates, reports to the controller and metric snapshots for the agent,
    until stopped."""
    metrics_file = Path(ctx.instance_dir) / "metrics.json" if ctx.instance_dir else None
    interval = ctx.controller.report_interval_s if ctx.controller else METRICS_EVERY_S
    last_report = time.monotonic()
    while comp.sleep(min(interval, MEMBERSHIP_EVERY_S)):
        if watcher is not None:
            new = watcher.changed()
            if new is not None:
                comp._follow_membership(new)
        now = time.monotonic()
        if now - last_report < interval:
            continue
        elapsed, last_report = now - last_report, now
        if ctx.controller is not None and ctx.role == "component":
            # The membership decides the controller (a local one may appear): read it live.
            topic = topics.reports(comp.context.controller_site, ctx.app)
            report = comp._make_report(elapsed).model_dump(mode="json")
            try:
                comp._mqtt.publish(topic, report)
            except BackpressureError as exc:
                log.warning("controller report dropped", error=str(exc))
        if metrics_file is not None:
            try:
                comp.metrics.write(metrics_file)
            except OSError as exc:
                log.warning("cannot write metrics", error=str(exc))


def instance_client(ctx: InstanceContext, **kwargs: Any) -> MqttClient:
    """The MQTT client of an instance: a persistent session with manual acknowledgements.

    The stable client id keeps the session across restarts: while the instance is away
    (restarting, crashed), the broker keeps what is sent to it, and redelivers what it
    had received but not acknowledged (the inbox acknowledges only handled messages).
    Duplicates are dropped by the inbox, not at receipt (`edgecloud.application.inbox`).
    """
    return MqttClient(ctx.broker_url, client_id=f"{ctx.app}.{ctx.instance}",
                      src=ctx.instance, clean_session=False, manual_ack=True, dedup=False,
                      **kwargs)


def main() -> int:
    setup_logging()
    context_path = os.environ.get(CONTEXT_ENV)
    watcher = ContextWatcher(Path(context_path)) if context_path else None
    try:
        ctx = InstanceContext.from_env()
        _import_path(ctx)
        cls = load_class(ctx.entry)
        if not issubclass(cls, Component):
            raise UserError(f"entry {ctx.entry!r} is not a subclass of edgecloud.Component")
        # The platform starts senders only once receivers ran once (their session exists).
        mqtt = instance_client(ctx)
        comp = cls(ctx, mqtt)
        # Subscribed before connecting: the session's backlog (messages not acknowledged
        # by the previous run) arrives right after the CONNACK and must find its handlers.
        comp._attach()
        mqtt.connect(timeout=30)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: comp.stop())
    signal.signal(signal.SIGINT, lambda *_: comp.stop())
    log.info("instance up", app=ctx.app, instance=ctx.instance, site=ctx.site, node=ctx.node)
    code = 0
    try:
        comp.setup()
        comp._start_inbox()  # on_message only once set up (messages wait in the inbox)
        threading.Thread(target=_background, args=(comp, ctx, watcher), daemon=True).start()
        if ctx.instance_dir:  # subscribed and set up: the runtime may now say Running
            (Path(ctx.instance_dir) / READY_FILE).touch()
        comp.run()
        comp.stopped.wait()  # a source whose run() returned keeps serving until stopped
    except UserError as exc:
        # A configuration problem the author reported (bad params, missing data): one
        # line saying what, which also becomes the instance's status reason.
        log.error("component failed", instance=ctx.instance, error=str(exc))
        print(f"error: {exc}", file=sys.stderr, flush=True)
        code = 1
    except Exception:
        log.exception("component failed", instance=ctx.instance)
        code = 1
    finally:
        comp.stop()
        comp._finish_inbox()  # the last on_message returned: teardown cannot race it
        if comp._failure:  # a message could not be handled; the restart redelivers it
            print(f"error: {comp._failure}", file=sys.stderr, flush=True)
            code = 1
        try:
            comp.teardown()
        except Exception:
            log.exception("teardown failed", instance=ctx.instance)
        if ctx.instance_dir:
            comp.metrics.write(Path(ctx.instance_dir) / "metrics.json")
        mqtt.flush(5)
        mqtt.close()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
