"""The SDK a component author writes against.

    from edgecloud import Component

    class Relay(Component):
        def on_message(self, msg):          # msg.payload, msg.sender, msg.topic
            self.send("sink", msg.payload)

A component is instantiated by the runner inside the process the agent starts for each
instance. It talks only to its site's broker and file server. Messages (`on_message`,
`subscribe` handlers, controller commands) arrive on one worker thread in order (so
handlers need no locks of their own; a slow handler delays the messages behind it, never
the connection); `run()` runs on the main thread for sources and may loop until
`self.stopped` is set. Delivery is at least once, duplicates dropped by envelope id: a
message is acknowledged to the broker only after its handler returned
(`edgecloud.application.inbox`). A handler must not wait for a later message (it would
wait behind itself).

Membership is live: when the platform re-plans (a node lost or joined, an instance moved
to another site), the instances that did not move keep running and are handed the new
`context.peers` / `context.members`; `send` and `send_to` route by them from the next
message on, and the optional hook `on_members` runs on the worker, in order with the
messages.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from edgecloud.application import topics
from edgecloud.application.context import InstanceContext, Peer
from edgecloud.application.inbox import DRAIN_S, Inbox
from edgecloud.application.messages import ControllerCommand
from edgecloud.application.metrics import Metrics
from edgecloud.application.policy import Policy, Report, parse_decisions
from edgecloud.errors import UserError
from edgecloud.log import KVLogger, get_logger
from edgecloud.resource.mqtt import BackpressureError, BaseClient, Delivery, topic_matches
from edgecloud.resource.mqtt_base import AckMode

if TYPE_CHECKING:
    from edgecloud.resource.files import FileClient


@dataclass(slots=True)
class Message:
    """A message delivered to `on_message`."""

    payload: Any
    sender: str
    """Instance name of the sender (e.g. `sensor-0`)."""
    sender_component: str
    topic: str
    sent_at: float
    id: str
    received_at: float


def load_class(entry: str) -> type:
    """Import `module:Class`."""
    module_name, _, attr = entry.partition(":")
    if not module_name or not attr:
        raise UserError(f"entry {entry!r}: expected 'module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"entry {entry!r}: cannot import module {module_name!r}: {exc}") \
            from None
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise UserError(f"entry {entry!r}: module {module_name!r} has no {attr!r}") from None
    if not isinstance(obj, type):
        raise UserError(f"entry {entry!r}: {attr!r} is not a class")
    return obj


class PolicyHandle:
    """The component-side view of the application's policy and its latest decisions."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._global: dict[str, Any] = {}
        self._local: dict[str, Any] = {}
        self.decisions: dict[str, Any] = {}

    def update(self, scope: str, decisions: dict[str, Any]) -> None:
        if scope == "global":
            self._global = decisions
        else:
            self._local = decisions
        self.decisions = {**self._global, **self._local}  # local controllers refine global

    def decide(self, question: str, value: Any) -> Any:
        """Ask the policy, e.g. `self.policy.decide("confidence", 0.93) -> "positive"`."""
        return self.policy.decide(question, value, self.decisions)

    def get(self, name: str, default: Any = None) -> Any:
        """A published decision (e.g. a threshold), or `default` before the first one."""
        return self.decisions.get(name, default)


class Component:
    """Base class of every component. Override `setup`, `run`, `on_message`, `teardown`."""

    def __init__(self, context: InstanceContext, mqtt: BaseClient) -> None:
        self.context = context
        self.name = context.instance
        self.component = context.component
        self.app = context.app
        self.site = context.site
        self.node = context.node
        self.params: dict[str, Any] = dict(context.params)
        self.log: KVLogger = get_logger(f"app.{context.app}.{context.instance}")
        self.metrics = Metrics()
        self.stopped = threading.Event()
        self.started = threading.Event()
        self._mqtt = mqtt
        self._files: FileClient | None = None
        # Messages for the worker stay unacknowledged until handled (manual-ack clients).
        self._ack: AckMode = "manual" if mqtt.manual_ack else "auto"
        self._inbox = Inbox(mqtt, self.log, context.instance_dir, on_stuck=self._stuck)
        self._failure = ""  # why the instance must exit non-zero (set by the worker)
        self._user_subs: list[tuple[str, Callable[[Message], None]]] = []
        self._values: dict[str, Any] = {}
        self._stats_lock = threading.Lock()
        self._processed = 0
        self._busy_s = 0.0
        self._filters: dict[str, Callable[[Any], bool]] = {}
        # Replaced together when the membership changes (`_follow_membership`); readers
        # take one reference, so a send sees the old or the new membership, never a mix.
        self._membership_lock = threading.Lock()
        self._members = {p.instance: p for p in context.members}
        ctrl = context.controller
        policy_cls = load_class(ctrl.policy if ctrl else
                                "edgecloud.application.policy:BasicPolicy")
        role = "component" if context.role == "component" else (
            "global" if context.site == context.cloud_site else "local")
        self.policy = PolicyHandle(policy_cls(ctrl.params if ctrl else {}, role, self.site,
                                               self.node))
        self._msg_errors = self.metrics.counter("edgecloud_message_errors_total",
                                                "messages whose handler raised")
        self._msg_count = self.metrics.counter("edgecloud_messages_total", "messages handled")

    # -- hooks for authors ---------------------------------------------------------------
    def setup(self) -> None:
        """Called once before messages flow and before `run`."""

    def run(self) -> None:
        """Sources loop here (e.g. `while self.sleep(0.1): ...`); others need not override."""

    def on_message(self, msg: Message) -> None:
        """Called for each message sent to this instance, one at a time, in order."""

    def teardown(self) -> None:
        """Called once at shutdown, after the last message was handled."""

    def on_members(self) -> None:
        """The application's membership changed (`self.context.peers` / `.members` are
        the new ones): a re-plan dropped, added or moved instances. Runs on the worker,
        in order with the messages; `send` already routes by the new membership."""

    def on_command(self, op: str, args: dict[str, Any]) -> None:
        """Application-specific controller operations (beyond start/terminate/set/filter)."""
        self.log.warning("unknown controller operation", op=op)

    # -- what authors call ---------------------------------------------------------------
    @property
    def files(self) -> FileClient:
        """The site's file service: `ref = self.files.put(path)`, `self.files.get(ref)`."""
        if self._files is None:
            from edgecloud.resource.files import FileClient

            self._files = FileClient(self.context.files_url, self.site)
        return self._files

    def send(self, component: str, payload: Any, *, key: str | None = None) -> str:
        """Send `payload` to an instance of connected `component`; returns its name.

        The policy chooses the instance (same site first; by `key` or round-robin). The
        message goes on the local broker; the bridge carries it across sites if needed.
        If the broker stops acknowledging, this blocks a few seconds, then raises
        `edgecloud.resource.mqtt.BackpressureError` (a UserError): nothing is dropped
        silently.
        """
        all_peers = self.context.peers  # one membership for this send (it is live)
        peers = all_peers.get(component)
        if not peers:
            known = ", ".join(sorted(all_peers)) or "none"
            raise UserError(f"{self.component} has no connection to {component!r} "
                            f"(connections: {known}); add it to `connections` in the "
                            "topology file")
        flt = self._filters.get(component)
        if flt is not None and not flt(payload):
            return ""
        peer = self.policy.policy.route(component, peers, self.policy.decisions, key)
        self._publish(topics.inbox(peer.site, self.app, peer.instance), payload)
        return peer.instance

    def send_to(self, instance: str, payload: Any) -> None:
        """Send to one named instance of this application (e.g. a reply)."""
        peer = self._members.get(instance)
        if peer is None:
            raise UserError(f"no instance {instance!r} in application {self.app!r}")
        self._publish(topics.inbox(peer.site, self.app, peer.instance), payload)

    def publish(self, name: str, payload: Any, *, site: str | None = None) -> None:
        """Publish on an application topic at `site` (default: this site)."""
        self._publish(topics.user_topic(site or self.site, self.app, name), payload)

    def subscribe(self, name: str, handler: Callable[[Message], None], *,
                  wait: float | None = None) -> bool:
        """Receive an application topic published at this site (MQTT wildcards allowed).

        `handler` runs on the worker thread, in order with `on_message` (from the end of
        `setup` on), and the message is acknowledged after it returns. wait: block up to
        `wait` s until the broker confirmed the subscription (False if it did not).
        """
        topic = topics.user_topic(self.site, self.app, name)
        self._user_subs.append((topic, handler))
        return self._mqtt.subscribe(topic, self._on_user_delivery, ack=self._ack, wait=wait)

    def _publish(self, topic: str, payload: Any) -> None:
        if not self._mqtt.publish(topic, payload):
            raise UserError(f"{self.name}: the MQTT client refused a message for {topic!r} "
                            f"(broker {self._mqtt.url} not connected)")

    def report(self, **values: Any) -> None:
        """Add custom values to the next report to the in-app controller."""
        with self._stats_lock:
            self._values.update(values)

    def sleep(self, seconds: float) -> bool:
        """Sleep unless stopped; returns False once the instance is stopping."""
        return not self.stopped.wait(seconds)

    def stop(self) -> None:
        """Ask this instance to shut down (as a controller `terminate` does).

        New messages are no longer taken (the broker keeps them for the next start); what
        is queued is still handled for a few seconds. Never blocks."""
        self.stopped.set()
        self._inbox.stop(DRAIN_S)

    # -- runner plumbing --------------------------------------------------------------------
    def _attach(self) -> None:
        """Subscribe to the inbox and the control topics. Inbox messages queue up until
        :meth:`_start_inbox` (after `setup`), so `on_message` never sees a half-set-up
        component and nothing sent meanwhile is lost."""
        c = self.context
        self._mqtt.subscribe(topics.inbox(c.site, c.app, c.instance),
                             lambda d: self._inbox.put(d, self._handle_inbox), ack=self._ack)
        # Decisions are data for the policy, applied at once on the network thread (and
        # acknowledged there, in order). Commands go through the worker: they run author
        # code (`on_command`) and take effect in order with the messages around them.
        for scope in ("global", "local"):
            self._mqtt.subscribe(topics.decisions(c.site, c.app, scope),
                                 partial(self._on_decisions, scope))
        self._mqtt.subscribe(topics.commands(c.site, c.app),
                             lambda d: self._inbox.put(d, self._handle_command), ack=self._ack)

    def _start_inbox(self) -> None:
        """Start delivering queued and new messages to the handlers."""
        self._inbox.start()

    def _follow_membership(self, new: InstanceContext) -> bool:
        """Adopt the live part (peers, members, controller sites) of `new`, this
        instance's context as its node rewrote it; True if anything changed.

        The rest of a context never changes while an instance runs (a change there
        restarts it), so only the live part is taken."""
        if (new.app, new.instance) != (self.app, self.name):
            self.log.warning("context of another instance ignored", instance=new.instance)
            return False
        if new.live_part() == self.context.live_part():
            return False
        with self._membership_lock:
            self.context = self.context.with_membership_of(new)
            self._members = {p.instance: p for p in self.context.members}
        self.log.info("membership updated", members=len(self._members),
                      peers={c: len(ps) for c, ps in self.context.peers.items()})
        self._inbox.call(self._run_on_members)
        return True

    def _run_on_members(self) -> None:
        try:
            self.on_members()
        except BackpressureError:
            raise
        except Exception:
            self.log.exception("on_members failed")

    def _stuck(self, reason: str) -> None:
        """The worker cannot go on (see `inbox.Inbox`): stop, and exit non-zero."""
        self._failure = reason
        self.stop()

    def _finish_inbox(self) -> None:
        """After `stop`: wait until the worker handled its last message (before teardown)."""
        self._inbox.join()

    def _to_message(self, m: Delivery, received_at: float | None = None) -> Message:
        peer = self._members.get(m.src)
        comp = peer.component if peer else m.src.rsplit("-", 1)[0]
        return Message(payload=m.body, sender=m.src, sender_component=comp, topic=m.topic,
                       sent_at=m.ts, id=m.id,
                       received_at=time.time() if received_at is None else received_at)

    def _handle_inbox(self, d: Delivery, received_at: float) -> None:
        msg = self._to_message(d, received_at)
        t0 = time.perf_counter()
        try:
            self.on_message(msg)
            self._msg_count.inc()
        except BackpressureError:
            raise  # not handled: the inbox keeps it unacknowledged and stops
        except Exception:
            # A bad message must not take the instance down: log, count, go on.
            self._msg_errors.inc()
            self.log.exception("on_message failed", sender=msg.sender, topic=msg.topic)
        with self._stats_lock:
            self._processed += 1
            self._busy_s += time.perf_counter() - t0

    def _on_user_delivery(self, d: Delivery) -> None:
        self._inbox.put(d, self._handle_user)

    def _handle_user(self, d: Delivery, received_at: float) -> None:
        msg = self._to_message(d, received_at)
        for pattern, handler in list(self._user_subs):
            if not topic_matches(pattern, d.topic):
                continue
            try:
                handler(msg)
            except BackpressureError:
                raise
            except Exception:
                self._msg_errors.inc()
                self.log.exception("subscribe handler failed", topic=d.topic,
                                   handler=getattr(handler, "__qualname__", repr(handler)))

    def _on_decisions(self, scope: str, m: Delivery) -> None:
        try:
            self.policy.update(scope, parse_decisions(m.body))
        except ValueError as exc:
            self.log.warning("malformed decisions dropped", sender=m.src, reason=str(exc))

    def _handle_command(self, d: Delivery, received_at: float) -> None:
        try:
            cmd = ControllerCommand.model_validate(d.body)
        except ValidationError as exc:
            self.log.warning("malformed controller command dropped", sender=d.src,
                             reason=_one_line(exc))
            return
        if cmd.component not in ("*", self.component, self.name):
            return
        try:
            self._apply_command(cmd)
        except ValueError as exc:
            self.log.warning("controller command rejected", op=cmd.op, sender=d.src,
                             reason=str(exc))
        except BackpressureError:
            raise
        except Exception:
            self.log.exception("controller command failed", op=cmd.op, sender=d.src)

    def _apply_command(self, cmd: ControllerCommand) -> None:
        op, args = cmd.op, cmd.args
        if op == "start":
            self.started.set()
        elif op == "terminate":
            self.log.info("terminated by the in-app controller")
            self.stop()
        elif op == "set":
            # The policy first: a message handled in between must not see new params
            # (e.g. a new run) with the old policy (e.g. the old mode).
            self.policy.policy.on_params(args)
            self.params.update(args)
        elif op == "filter":
            self._set_filter(args)
        else:
            self.on_command(op, args)

    def _set_filter(self, args: dict[str, Any]) -> None:
        """`filter` op: keep 1 in `every` messages sent to `target` (None clears it).

        Validated before anything changes (ValueError: the command is rejected whole)."""
        target, every = args.get("target"), args.get("every")
        if not isinstance(target, str) or not target:
            raise ValueError(f"filter needs a component name as 'target', got {target!r}")
        if every is not None and (isinstance(every, bool) or not isinstance(every, int)
                                  or every < 0):
            raise ValueError(f"filter 'every' must be a whole number >= 0 or null, "
                             f"got {every!r}")
        if every in (None, 0, 1):
            self._filters.pop(target, None)
            return
        counter = iter(range(1 << 62))
        n = int(every)
        self._filters[target] = lambda _payload: next(counter) % n == 0

    def _make_report(self, interval_s: float) -> Report:
        with self._stats_lock:
            processed, busy, values = self._processed, self._busy_s, self._values
            self._processed, self._busy_s, self._values = 0, 0.0, {}
        return Report(instance=self.name, component=self.component, site=self.site,
                      ts=time.time(), queue_len=self._inbox.qsize(), processed=processed,
                      throughput=processed / interval_s if interval_s > 0 else 0.0,
                      latency_ms=1000 * busy / processed if processed else None, values=values)

    def peers(self, component: str) -> list[Peer]:
        """The instances of a connected component (for fan-out or custom routing)."""
        return list(self.context.peers.get(component, []))


def _one_line(exc: ValidationError) -> str:
    """A pydantic error as one line: `field: problem; ...`."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'command'}: {e['msg']}"
                     for e in exc.errors())
