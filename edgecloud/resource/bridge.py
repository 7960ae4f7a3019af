"""The edge <-> cloud bridge of one edge site, with a durable on-disk outbox.

`python -m edgecloud.resource.bridge CONFIG.json` (a `BridgeConfig`); one per edge site.

Routing (site S):
- up: a topic `sites/X/...` published on S's broker with X != S goes to the cloud broker.
  The bridge subscribes on S's broker to `sites/X/#` for each other site X of the
  infrastructure (`BridgeConfig.remote_sites`), so S's own traffic never enters the
  bridge's persistent session;
- down: a topic `sites/S/...` published on the cloud broker comes to S's broker;
- anything else stays on the broker it was published on. Edge-to-edge traffic goes
  through the cloud: S publishes `sites/T/...` locally, S's bridge takes it up, T's bridge
  takes it down from the cloud.

Delivery (QoS 1, at least once, order kept per topic):
1. Both subscriptions use persistent sessions (clean_session=False, stable client ids
   `ecbridge-<site>-edge` / `-cloud`), so a source broker keeps what is published while the
   bridge is away.
2. Received messages are acknowledged manually, and only AFTER their batch is committed
   to the outbox (`edgecloud.resource.outbox`, SQLite WAL). Until then the source broker
   still owns them and redelivers them if the bridge dies.
3. Committed rows are forwarded in outbox order through a large in-flight window, by a
   separate publisher client per target broker (`ecbridge-<site>-edge-pub` / `-cloud-pub`,
   clean sessions); the target's acknowledgements move a delivery mark, committed with
   the next batch. The bridge alone retransmits: its publishers forget what is
   unacknowledged when their connection drops (`OwnerResendClient`), and after
   every (re)connect of a publisher, and at (re)start, every row after the mark is sent
   again in seq order before any newer row. (Letting paho retransmit its in-flight
   messages lost the order: a reconnect during a WAN partition raced new publishes, and a
   broker that takes over a persistent session with two live connections - the old
   one's bytes are still held in the WAN - mixes their streams.)
4. Duplicates are dropped at ingress by envelope id (source brokers redeliver what the
   bridge committed but had not acknowledged when it crashed), with `codec.RecentIds`
   seeded from the outbox. Bodies are never decoded: the subscribers read only the id
   (`codec.peek_id`).

So a message the bridge has accepted survives a WAN partition, a bridge restart (SIGKILL
included) and a restart of either broker (with Mosquitto, whose sessions persist; amqtt
keeps sessions in memory, so what is queued inside an amqtt broker dies with it).

Residual window, honestly: messages that were in flight to the target when the bridge was
killed, or acknowledged by it after the last committed mark, are sent again after the
restart and may reach the target twice. They carry the same envelope id, and edgecloud
receivers (`MqttClient`, a component's inbox) drop them. Payloads that are not edgecloud
envelopes have no id: they are forwarded at least once but cannot be de-duplicated.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from edgecloud.log import get_logger
from edgecloud.resource.codec import RecentIds
from edgecloud.resource.mqtt import BaseClient, Delivery, MqttClient, OwnerResendClient
from edgecloud.resource.outbox import DIRECTIONS, Outbox, Row
from edgecloud.service import Endpoint, run_service, stop_event_on_signals

log = get_logger("bridge")

BATCH_MAX = 2000          # messages per outbox transaction
WINDOW = 2000             # unacknowledged publishes on the wire to a target broker
HANDOFF_MAX = 20_000      # rows handed to a target client (in flight + queued in memory)
SEEN_CAPACITY = 200_000   # envelope ids remembered for duplicate detection
LOG_EVERY_S = 10.0
PRUNE_EVERY_S = 5.0


class BridgeConfig(BaseModel):
    """Configuration of one edge site's bridge."""

    site: str
    local: Endpoint
    cloud: Endpoint
    data_dir: Path
    keepalive_s: float = 5
    remote_sites: list[str] | None = None
    """The other sites of the infrastructure (the cloud and the other edge sites): the
    bridge takes up `sites/<each>/#`. None (unknown): every `sites/+/#`, this site's own
    traffic included, enters the bridge's session and is acknowledged and dropped there."""


def route(site: str, topic: str) -> str | None:
    """Direction a topic seen on `site`'s broker takes: "up" for `sites/X/...` (X != site)."""
    if not topic.startswith("sites/"):
        return None
    target = topic[6:].split("/", 1)[0]
    return "up" if target and target != site else None


class Bridge:
    """The bridge engine; `run(stop)` blocks. See the module docstring."""

    def __init__(self, config: BridgeConfig) -> None:
        self.config = config
        self.site = config.site
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.outbox = Outbox(config.data_dir / "outbox.db")
        keepalive = max(1, round(config.keepalive_s))
        src = f"bridge-{self.site}"
        urls = {"edge": config.local.url("mqtt"), "cloud": config.cloud.url("mqtt")}
        # Subscribers (persistent sessions, manual acks) and publishers (clean sessions; the
        # bridge, not paho, resends what a dropped connection left unacknowledged).
        subs = {side: MqttClient(url, f"ecbridge-{self.site}-{side}", clean_session=False,
                                 src=src, keepalive=keepalive, manual_ack=True, dedup=False,
                                 decode_bodies=False)
                for side, url in urls.items()}
        pubs = {side: OwnerResendClient(url, f"ecbridge-{self.site}-{side}-pub", src=src,
                                        keepalive=keepalive, max_inflight=WINDOW, dedup=False,
                                        on_delivered=self._on_delivered,
                                        on_reconnect=partial(self._on_reconnect, d))
                for side, url, d in (("edge", urls["edge"], "down"),
                                     ("cloud", urls["cloud"], "up"))}
        self.edge, self.cloud = subs["edge"], subs["cloud"]
        self.source = {"up": self.edge, "down": self.cloud}
        self.target = {"up": pubs["cloud"], "down": pubs["edge"]}
        # Ingress: filled by the two network threads, drained by the pump (run()).
        self._ingress: deque[tuple[str, Delivery]] = deque()
        self._delivered: deque[tuple[str, int]] = deque()
        self._wake = threading.Event()
        self._resync: dict[str, bool] = {d: False for d in DIRECTIONS}  # target reconnected
        # Per direction: seqs handed to the target in order, acks not yet contiguous,
        # highest seq handed to the target client.
        self._inflight: dict[str, deque[int]] = {d: deque() for d in DIRECTIONS}
        self._acked: dict[str, set[int]] = {d: set() for d in DIRECTIONS}
        self._handed: dict[str, int] = dict(self.outbox.marks)
        self._new_marks: dict[str, int] = dict(self.outbox.marks)
        self._mark_dirty = False
        self._seen = RecentIds(SEEN_CAPACITY, self.outbox.recent_ids())
        self.stats: dict[str, int] = {"up_in": 0, "down_in": 0, "up_out": 0, "down_out": 0,
                                      "duplicates_dropped": 0, "local_dropped": 0}

    # -- network-thread callbacks (keep them short) --------------------------------------
    def _on_edge_message(self, msg: Delivery) -> None:
        if route(self.site, msg.topic) == "up":
            self._ingress.append(("up", msg))
            self._wake.set()
        else:
            # This site's own traffic: only with remote_sites unknown (`sites/+/#`).
            self.stats["local_dropped"] += 1
            self.edge.ack(msg)

    def edge_patterns(self) -> list[str]:
        """What the bridge subscribes to on its site's broker: what crosses sites."""
        remote = self.config.remote_sites
        if remote is None:
            return ["sites/+/#"]
        return [f"sites/{s}/#" for s in sorted(set(remote) - {self.site})]

    def _on_cloud_message(self, msg: Delivery) -> None:
        self._ingress.append(("down", msg))
        self._wake.set()

    def _on_delivered(self, token: Any) -> None:
        self._delivered.append(token)
        self._wake.set()

    def _on_reconnect(self, direction: str) -> None:
        self._resync[direction] = True
        self._wake.set()

    # -- the pump ----------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Connect, forward until `stop` is set, then shut down cleanly."""
        backlog = {d: self.outbox.depth(d) for d in DIRECTIONS}
        log.info("bridge starting", site=self.site, edge=self.edge.url, cloud=self.cloud.url,
                 outbox=str(self.outbox.path), resend_up=backlog["up"],
                 resend_down=backlog["down"])
        for pattern in self.edge_patterns():
            self.edge.subscribe(pattern, self._on_edge_message, qos=1, ack="manual")
        self.cloud.subscribe(f"sites/{self.site}/#", self._on_cloud_message, qos=1,
                             ack="manual")
        for client in self._clients():
            client.start()
        next_log = time.monotonic() + LOG_EVERY_S
        next_prune = time.monotonic() + PRUNE_EVERY_S
        try:
            while not stop.is_set():
                self._wake.wait(0.5)
                self._wake.clear()
                self._pump_once()
                now = time.monotonic()
                if now >= next_prune:
                    next_prune = now + PRUNE_EVERY_S
                    self.outbox.prune()
                if now >= next_log:
                    next_log = now + LOG_EVERY_S
                    self._log_progress()
        finally:
            self._shutdown()

    def _pump_once(self) -> None:
        # Several rounds while the ingress keeps filling: batches grow under load, and a
        # lone message is committed at once.
        for _ in range(100):
            self._resync_targets()
            batch = self._take_batch()
            acks = self._take_acks()
            if not batch and not acks and not self._refill_needed():
                return
            self._commit_and_forward(batch)
            self._refill()

    def _clients(self) -> list[BaseClient]:
        return [self.edge, self.cloud, self.target["down"], self.target["up"]]

    def _resync_targets(self) -> None:
        """After a target publisher (re)connected: send every row after the delivery mark
        again, in seq order, before any newer row (`_refill` does, from the outbox)."""
        for d in DIRECTIONS:
            if not self._resync[d]:
                continue
            self._resync[d] = False
            self._take_acks()  # acknowledgements from the old connection
            self._inflight[d].clear()
            self._acked[d].clear()
            self._handed[d] = self._new_marks[d]
            self.target[d].resume()  # False if it dropped again: another resync follows
            log.info("target connected, resending", site=self.site, direction=d,
                     rows=self.outbox.last_seq[d] - self._handed[d])

    def _take_batch(self) -> list[tuple[str, Delivery]]:
        ingress = self._ingress
        batch: list[tuple[str, Delivery]] = []
        while ingress and len(batch) < BATCH_MAX:
            batch.append(ingress.popleft())
        return batch

    def _take_acks(self) -> bool:
        """Apply target acknowledgements; True if a delivery mark moved."""
        moved_any = False
        delivered = self._delivered
        while delivered:
            d, seq = delivered.popleft()
            self.stats[f"{d}_out"] += 1
            acked, inflight = self._acked[d], self._inflight[d]
            acked.add(seq)
            moved = False
            while inflight and inflight[0] in acked:
                acked.discard(inflight.popleft())
                moved = True
            if moved:
                # Every row before the oldest unacknowledged one is delivered.
                self._new_marks[d] = inflight[0] - 1 if inflight else self._handed[d]
                moved_any = True
        self._mark_dirty |= moved_any
        return moved_any

    def _commit_and_forward(self, batch: list[tuple[str, Delivery]]) -> None:
        seen = self._seen
        rows: dict[str, list[Row]] = {"up": [], "down": []}
        accepted: list[tuple[str, Delivery]] = []
        duplicates: list[tuple[str, Delivery]] = []
        for d, msg in batch:
            mid = msg.id
            if mid and seen.check_and_add(mid):
                duplicates.append((d, msg))
                continue
            rows[d].append((msg.topic, msg.raw, int(msg.retain), mid))
            accepted.append((d, msg))
        marks = dict(self._new_marks) if self._mark_dirty else {}
        if accepted or marks:
            backlog = {d: self._handed[d] < self.outbox.last_seq[d] for d in DIRECTIONS}
            first = self.outbox.write(rows, marks)
            self._mark_dirty = False
        else:
            backlog, first = {}, {}
        # Committed: now the source brokers may forget them (the clients send the PUBACKs
        # in receive order, whatever the order of these calls).
        for d, msg in accepted:
            self.source[d].ack(msg)
            self.stats[f"{d}_in"] += 1
        for d, msg in duplicates:
            self.source[d].ack(msg)
            self.stats["duplicates_dropped"] += 1
        for d, start in first.items():
            target = self.target[d]
            if backlog[d] or not target.accepting or target.outstanding >= HANDOFF_MAX:
                continue  # older rows still wait in the outbox; _refill keeps the order
            inflight = self._inflight[d]
            for i, (topic, payload, retain, _) in enumerate(rows[d]):
                seq = start + i
                inflight.append(seq)
                target.publish_raw(topic, payload, 1, bool(retain), (d, seq))
            self._handed[d] = start + len(rows[d]) - 1

    def _refill_needed(self) -> bool:
        return any(self._handed[d] < self.outbox.last_seq[d] and self.target[d].accepting
                   and self.target[d].outstanding < HANDOFF_MAX // 2 for d in DIRECTIONS)

    def _refill(self) -> None:
        """Hand rows waiting in the outbox (restart, long outage) to the target, in order."""
        for d in DIRECTIONS:
            target = self.target[d]
            while self._handed[d] < self.outbox.last_seq[d] and target.accepting:
                room = HANDOFF_MAX - target.outstanding
                if room < HANDOFF_MAX // 2:
                    break
                rows = self.outbox.read(d, self._handed[d], room)
                if not rows:
                    break
                inflight = self._inflight[d]
                for seq, topic, payload, retain in rows:
                    inflight.append(seq)
                    target.publish_raw(topic, payload, 1, bool(retain), (d, seq))
                self._handed[d] = rows[-1][0]

    def _log_progress(self) -> None:
        s = self.stats
        log.info("progress", site=self.site, up_in=s["up_in"], up_out=s["up_out"],
                 down_in=s["down_in"], down_out=s["down_out"],
                 outbox_up=self.outbox.depth("up"), outbox_down=self.outbox.depth("down"),
                 duplicates=s["duplicates_dropped"], local_dropped=s["local_dropped"],
                 edge="up" if self.edge.connected and self.target["down"].connected else "down",
                 cloud="up" if self.cloud.connected and self.target["up"].connected else "down")

    def _shutdown(self) -> None:
        # Give in-flight publishes a moment so the marks advance; what is still
        # unacknowledged is resent at the next start.
        for target in (self.target["up"], self.target["down"]):
            if target.connected:
                target.flush(2.0)
        self._take_acks()
        self._commit_and_forward([])
        self._log_progress()
        # Unacknowledged ingress (not committed) stays with the source brokers.
        for client in self._clients():
            client.close(flush_timeout=0)
        self.outbox.close()
        log.info("bridge stopped", site=self.site)


def serve(config: BridgeConfig) -> None:
    """Run the bridge of `config.site` until SIGTERM/SIGINT."""
    stop = stop_event_on_signals()
    Bridge(config).run(stop)


if __name__ == "__main__":
    run_service(BridgeConfig, serve)
