"""The node aggregate: identity and token, liveness, reported state, assignment."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Engine, delete, insert, select, update

from edgecloud.platform.store.schema import join_tokens, new_node, nodes, record_event
from edgecloud.resource.infra import Resources
from edgecloud.resource.protocol import Assignment, NodeInfo, NodeState
from edgecloud.resource.runtime import InstanceStatus


class NodeRow(BaseModel):
    """A node as stored (its assignment is read separately: `NodeRepository.assignment`)."""

    id: str
    site: str
    name: str
    declared: bool
    labels: dict[str, str]
    resources: Resources
    speed: float
    state: NodeState
    joined_at: float | None
    agent_version: str | None
    hostname: str | None
    last_heartbeat: float | None
    heartbeat_interval_s: float | None
    heartbeats: int
    metrics: dict[str, Any]
    instance_status: list[InstanceStatus]
    assignment_revision: int
    fetched_revision: int = 0
    problems: list[str] = []

    def info(self) -> NodeInfo:
        """The public view (`GET /nodes`)."""
        return NodeInfo(name=self.name, id=self.id, site=self.site, state=self.state,
                        declared=self.declared, joined=self.joined_at is not None,
                        labels=self.labels, resources=self.resources, speed=self.speed,
                        last_heartbeat=_ts(self.last_heartbeat), metrics=self.metrics,
                        agent_version=self.agent_version, hostname=self.hostname,
                        assignment_revision=self.assignment_revision)

    def status_of(self, app: str, name: str) -> InstanceStatus | None:
        return next((s for s in self.instance_status if s.app == app and s.name == name),
                    None)


class NodeRef(BaseModel):
    id: str
    site: str
    name: str


class HeartbeatAge(BaseModel):
    id: str
    last_heartbeat: float | None
    heartbeat_interval_s: float | None


_ROW_COLUMNS = [nodes.c[k] for k in NodeRow.model_fields]


def _ts(epoch: float | None) -> datetime | None:
    return datetime.fromtimestamp(epoch, UTC) if epoch is not None else None


class NodeRepository:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def all(self, site: str | None = None) -> list[NodeRow]:
        q = select(*_ROW_COLUMNS).order_by(nodes.c.site, nodes.c.name)
        if site is not None:
            q = q.where(nodes.c.site == site)
        with self.engine.connect() as c:
            return [NodeRow.model_validate(dict(r)) for r in c.execute(q).mappings()]

    def get(self, site: str, name: str) -> NodeRow | None:
        return self._one(select(*_ROW_COLUMNS).where(nodes.c.site == site,
                                                     nodes.c.name == name))

    def by_name(self, name: str) -> NodeRow | None:
        return self._one(select(*_ROW_COLUMNS).where(nodes.c.name == name))

    def _one(self, q: Any) -> NodeRow | None:
        with self.engine.connect() as c:
            row = c.execute(q).mappings().first()
        return NodeRow.model_validate(dict(row)) if row else None

    def by_token(self, token_hash: str) -> NodeRef | None:
        q = select(nodes.c.id, nodes.c.site, nodes.c.name).where(
            nodes.c.token_hash == token_hash)
        with self.engine.connect() as c:
            row = c.execute(q).mappings().first()
        return NodeRef.model_validate(dict(row)) if row else None

    def delete(self, node_id: str) -> bool:
        with self.engine.begin() as c:
            return c.execute(delete(nodes).where(nodes.c.id == node_id)).rowcount > 0

    def join(self, token_hash: str, node: dict[str, Any], node_token_hash: str) -> bool:
        """Consume the join token and create or re-join the node, atomically.

        Returns False if the token was used or expired meanwhile (a concurrent join).
        A re-join replaces the node's token, which revokes the old one.
        """
        now = time.time()
        with self.engine.begin() as c:
            consumed = c.execute(update(join_tokens).where(
                join_tokens.c.token_hash == token_hash, join_tokens.c.used_at.is_(None),
                join_tokens.c.expires_at > now).values(used_at=now, used_by=node["id"]))
            if consumed.rowcount != 1:
                return False
            joined = {"token_hash": node_token_hash, "joined_at": now,
                      "agent_version": node["agent_version"], "hostname": node["hostname"],
                      "labels": node["labels"], "resources": node["resources"],
                      "speed": node["speed"]}
            found = c.execute(select(nodes.c.id).where(nodes.c.id == node["id"])).first()
            if found:
                c.execute(update(nodes).where(nodes.c.id == node["id"]).values(**joined))
            else:
                c.execute(insert(nodes).values(**{**new_node(node, declared=False), **joined}))
            record_event(c, "node.joined", node["id"], {"hostname": node["hostname"]})
        return True

    def record_heartbeat(self, node_id: str, metrics: dict[str, Any],
                         instances: list[InstanceStatus], interval_s: float | None,
                         problems: list[str]) -> tuple[NodeState, int]:
        """Store a heartbeat; returns (previous state, assignment revision)."""
        now = time.time()
        with self.engine.begin() as c:
            row = c.execute(select(nodes.c.state, nodes.c.assignment_revision)
                            .where(nodes.c.id == node_id)).first()
            if row is None:
                raise KeyError(node_id)
            c.execute(update(nodes).where(nodes.c.id == node_id).values(
                last_heartbeat=now, metrics=metrics,
                instance_status=[s.model_dump(mode="json") for s in instances],
                heartbeat_interval_s=interval_s, heartbeats=nodes.c.heartbeats + 1,
                state="Ready", problems=list(problems)))
            if row.state != "Ready":
                record_event(c, "node.ready", node_id, {})
        return row.state, row.assignment_revision

    def mark_not_ready(self, node_id: str, reason: str) -> bool:
        """Ready -> NotReady; False if it was not Ready (someone else got there first)."""
        with self.engine.begin() as c:
            changed = c.execute(update(nodes).where(
                nodes.c.id == node_id, nodes.c.state == "Ready").values(state="NotReady"))
            if changed.rowcount != 1:
                return False
            record_event(c, "node.not_ready", node_id, {"reason": reason})
        return True

    def heartbeat_ages(self) -> list[HeartbeatAge]:
        """id, last heartbeat and interval of every Ready node (for the readiness check)."""
        q = select(nodes.c.id, nodes.c.last_heartbeat, nodes.c.heartbeat_interval_s).where(
            nodes.c.state == "Ready")
        with self.engine.connect() as c:
            return [HeartbeatAge.model_validate(dict(r)) for r in c.execute(q).mappings()]

    # -- assignments ---------------------------------------------------------------------
    def assignment(self, node_id: str) -> Assignment | None:
        q = select(nodes.c.assignment_revision, nodes.c.assignment).where(nodes.c.id == node_id)
        with self.engine.connect() as c:
            row = c.execute(q).first()
        return Assignment(revision=row[0], instances=row[1]) if row else None

    def assignments(self) -> dict[str, Assignment]:
        """Every node's current assignment, by node id."""
        q = select(nodes.c.id, nodes.c.assignment_revision, nodes.c.assignment)
        with self.engine.connect() as c:
            return {r[0]: Assignment(revision=r[1], instances=r[2]) for r in c.execute(q)}

    def set_assignment(self, node_id: str, assignment: list[dict[str, Any]]) -> int:
        """Replace a node's desired instance list (InstanceSpec JSON); returns the new
        revision."""
        with self.engine.begin() as c:
            res = c.execute(update(nodes).where(nodes.c.id == node_id).values(
                assignment=assignment, assignment_revision=nodes.c.assignment_revision + 1))
            if res.rowcount != 1:
                raise KeyError(node_id)
            rev = c.execute(select(nodes.c.assignment_revision)
                            .where(nodes.c.id == node_id)).scalar_one()
        return int(rev)

    def mark_fetched(self, node_id: str, revision: int) -> None:
        """The node's agent received assignment `revision` (kept monotonic)."""
        with self.engine.begin() as c:
            c.execute(update(nodes).where(nodes.c.id == node_id,
                                          nodes.c.fetched_revision < revision)
                      .values(fetched_revision=revision))
