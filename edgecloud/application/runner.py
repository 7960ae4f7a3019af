"""`python -m edgecloud.application.runner`: the process of one component instance.

Reads the instance context (EDGECLOUD_CONTEXT), imports the component class, connects to
the site broker, runs `setup`, then `run` on the main thread while messages are handled
on a worker thread, reports to the in-app controller and writes metrics for the agent.
SIGTERM stops it cleanly: no new messages are taken, the worker finishes the current one
and drains the queue for a few seconds (what is left stays with the broker, unacknowledged,
for the next start), then `teardown`, then the publishes are flushed, exit 0.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from edgecloud.application import topics
from edgecloud.application.context import InstanceContext
from edgecloud.application.sdk import Component, load_class
from edgecloud.errors import UserError
from edgecloud.log import get_logger, setup_logging
from edgecloud.resource.mqtt import BackpressureError, MqttClient

log = get_logger("runner")
METRICS_EVERY_S = 2.0
READY_FILE = "ready"


def _import_path(ctx: InstanceContext) -> None:
    for p in reversed([ctx.source_dir, *ctx.python_path]):
        if p and p not in sys.path:
            sys.path.insert(0, p)


def _background(comp: Component, ctx: InstanceContext) -> None:
    """Reports to the controller and metric snapshots for the agent, until stopped."""
    metrics_file = Path(ctx.instance_dir) / "metrics.json" if ctx.instance_dir else None
    interval = ctx.controller.report_interval_s if ctx.controller else METRICS_EVERY_S
    report_topic = topics.reports(ctx.controller_site, ctx.app)
    while comp.sleep(interval):
        if ctx.controller is not None and ctx.role == "component":
            report = comp._make_report(interval).model_dump(mode="json")
            try:
                comp._mqtt.publish(report_topic, report)
            except BackpressureError as exc:
                log.warning("controller report dropped", error=str(exc))
        if metrics_file is not None:
            try:
                comp.metrics.write(metrics_file)
            except OSError as exc:
                log.warning("cannot write metrics", error=str(exc))


def instance_client(ctx: InstanceContext, **kwargs: object) -> MqttClient:
    """The MQTT client of an instance: a persistent session with manual acknowledgements.

    The stable client id keeps the session across restarts: while the instance is away
    (restarting, crashed), the broker keeps what is sent to it, and redelivers what it
    had received but not acknowledged (the inbox acknowledges only handled messages).
    Duplicates are dropped by the inbox, not at receipt (`edgecloud.application.inbox`).
    """
    return MqttClient(ctx.broker_url, client_id=f"{ctx.app}.{ctx.instance}",
                      src=ctx.instance, clean_session=False, manual_ack=True, dedup=False,
                      **kwargs)  # type: ignore[arg-type]


def main() -> int:
    setup_logging()
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
        threading.Thread(target=_background, args=(comp, ctx), daemon=True).start()
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
