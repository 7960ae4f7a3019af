"""The platform's SQL store: infrastructure, sites, nodes, join tokens, events.

SQLAlchemy Core with portable types only (JSON, Float epoch seconds), so the same code
runs on SQLite (embedded) and PostgreSQL (scale-out). Tokens are stored as hashes only.
All methods are synchronous and thread-safe (one connection per call from the pool);
async callers run them in a worker thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Engine,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection, RowMapping

metadata = MetaData()

infrastructure = Table(
    "infrastructure", metadata,
    Column("name", String(63), primary_key=True),
    Column("spec", JSON, nullable=False),
    Column("updated_at", Float, nullable=False),
)

sites = Table(
    "sites", metadata,
    Column("name", String(63), primary_key=True),
    Column("kind", String(8), nullable=False),
    Column("broker", String(255), nullable=False),
    Column("files", String(255), nullable=False),
    Column("platform", String(255), nullable=False),
)

nodes = Table(
    "nodes", metadata,
    Column("id", String(200), primary_key=True),  # <infra>/<site>/<node>
    Column("site", String(63), ForeignKey("sites.name"), nullable=False),
    Column("name", String(63), nullable=False, unique=True),
    Column("declared", Boolean, nullable=False, default=False),
    Column("labels", JSON, nullable=False),
    Column("resources", JSON, nullable=False),
    Column("speed", Float, nullable=False, default=1.0),
    Column("state", String(16), nullable=False, default="NotReady"),
    Column("token_hash", String(64), unique=True, nullable=True),
    Column("joined_at", Float, nullable=True),
    Column("agent_version", String(64), nullable=True),
    Column("hostname", String(255), nullable=True),
    Column("last_heartbeat", Float, nullable=True),
    Column("heartbeat_interval_s", Float, nullable=True),
    Column("heartbeats", Integer, nullable=False, default=0),
    Column("metrics", JSON, nullable=False),
    Column("instance_status", JSON, nullable=False),
    # Desired instance set of the node and its revision (set by the controller).
    Column("assignment", JSON, nullable=False),
    Column("assignment_revision", Integer, nullable=False, default=0),
    UniqueConstraint("site", "name"),
)

join_tokens = Table(
    "join_tokens", metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("site", String(63), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("used_at", Float, nullable=True),
    Column("used_by", String(200), nullable=True),
)

events = Table(
    "events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("subject", String(200), nullable=False),
    Column("data", JSON, nullable=False),
)

apps = Table(
    "apps", metadata,
    Column("name", String(63), primary_key=True),
    Column("spec", JSON, nullable=False),  # the topology, as the file says (by alias)
    Column("bundle", JSON, nullable=True),  # FileRef of the code bundle in the cloud store
    Column("source_dir", String(1024), nullable=True),
    Column("revision", Integer, nullable=False, default=1),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

app_instances = Table(
    "app_instances", metadata,
    Column("app", String(63), ForeignKey("apps.name", ondelete="CASCADE"), primary_key=True),
    Column("name", String(200), primary_key=True),
    Column("component", String(63), nullable=False),
    Column("site", String(63), nullable=False),
    Column("node", String(63), nullable=False),
    Column("spec", JSON, nullable=False),  # the InstanceSpec sent to the node
)

instance_logs = Table(
    "instance_logs", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("app", String(63), nullable=False, index=True),
    Column("instance", String(200), nullable=False),
    Column("node", String(63), nullable=False),
    Column("ts", Float, nullable=False),
    Column("text", Text, nullable=False),
)

LOG_CHUNKS_KEPT_PER_APP = 5000


@dataclass
class JoinTokenCheck:
    """Why a join token cannot be used, or the site it is bound to."""

    site: str | None
    problem: str | None  # None = usable


class Store:
    """Typed access to the platform tables."""

    def __init__(self, db_url: str) -> None:
        connect_args: dict[str, Any] = {}
        if db_url.startswith("sqlite"):
            # Worker threads share the pool; wait for locks instead of failing at once.
            connect_args = {"check_same_thread": False, "timeout": 30}
        self.engine: Engine = create_engine(db_url, connect_args=connect_args,
                                            pool_pre_ping=True)
        if db_url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        metadata.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    # -- infrastructure ------------------------------------------------------------------
    def current_infra(self) -> tuple[str, dict[str, Any]] | None:
        with self.engine.connect() as c:
            row = c.execute(select(infrastructure)).mappings().first()
        return (row["name"], row["spec"]) if row else None

    def put_infrastructure(self, name: str, spec: dict[str, Any],
                           site_rows: list[dict[str, Any]],
                           node_rows: list[dict[str, Any]]) -> None:
        """Upsert the infrastructure, its sites and declared nodes in one transaction.

        Nodes that already joined keep their token, state and metrics; declared nodes
        that were dropped from the file and never joined are removed.
        """
        now = time.time()
        with self.engine.begin() as c:
            c.execute(delete(infrastructure).where(infrastructure.c.name != name))
            _upsert(c, infrastructure, {"name": name},
                    {"spec": spec, "updated_at": now})
            for s in site_rows:
                _upsert(c, sites, {"name": s["name"]}, s)
            declared_ids = {n["id"] for n in node_rows}
            for n in node_rows:
                found = c.execute(select(nodes.c.id).where(nodes.c.id == n["id"])).first()
                if found:
                    c.execute(update(nodes).where(nodes.c.id == n["id"]).values(
                        declared=True, labels=n["labels"], resources=n["resources"],
                        speed=n["speed"]))
                else:
                    c.execute(insert(nodes).values(**_new_node(n, declared=True)))
            stale = select(nodes.c.id).where(nodes.c.declared.is_(True),
                                             nodes.c.joined_at.is_(None))
            for (node_id,) in c.execute(stale).all():
                if node_id not in declared_ids:
                    c.execute(delete(nodes).where(nodes.c.id == node_id))

    def sites(self) -> list[RowMapping]:
        with self.engine.connect() as c:
            return list(c.execute(select(sites).order_by(sites.c.name)).mappings())

    def site(self, name: str) -> RowMapping | None:
        with self.engine.connect() as c:
            return c.execute(select(sites).where(sites.c.name == name)).mappings().first()

    # -- nodes ---------------------------------------------------------------------------
    def nodes(self, site: str | None = None) -> list[RowMapping]:
        q = select(nodes).order_by(nodes.c.site, nodes.c.name)
        if site is not None:
            q = q.where(nodes.c.site == site)
        with self.engine.connect() as c:
            return list(c.execute(q).mappings())

    def node(self, site: str, name: str) -> RowMapping | None:
        q = select(nodes).where(nodes.c.site == site, nodes.c.name == name)
        with self.engine.connect() as c:
            return c.execute(q).mappings().first()

    def node_by_name(self, name: str) -> RowMapping | None:
        with self.engine.connect() as c:
            return c.execute(select(nodes).where(nodes.c.name == name)).mappings().first()

    def node_by_token(self, token_hash: str) -> RowMapping | None:
        q = select(nodes.c.id, nodes.c.site, nodes.c.name).where(
            nodes.c.token_hash == token_hash)
        with self.engine.connect() as c:
            return c.execute(q).mappings().first()

    def delete_node(self, node_id: str) -> bool:
        with self.engine.begin() as c:
            return c.execute(delete(nodes).where(nodes.c.id == node_id)).rowcount > 0

    def join_node(self, token_hash: str, node: dict[str, Any], node_token_hash: str) -> bool:
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
                c.execute(insert(nodes).values(**{**_new_node(node, declared=False), **joined}))
            _event(c, "node.joined", node["id"], {"hostname": node["hostname"]})
        return True

    def record_heartbeat(self, node_id: str, metrics: dict[str, Any],
                         instances: list[dict[str, Any]],
                         interval_s: float | None) -> tuple[str, int]:
        """Store a heartbeat; returns (previous state, assignment revision)."""
        now = time.time()
        with self.engine.begin() as c:
            row = c.execute(select(nodes.c.state, nodes.c.assignment_revision)
                            .where(nodes.c.id == node_id)).first()
            if row is None:
                raise KeyError(node_id)
            c.execute(update(nodes).where(nodes.c.id == node_id).values(
                last_heartbeat=now, metrics=metrics, instance_status=instances,
                heartbeat_interval_s=interval_s, heartbeats=nodes.c.heartbeats + 1,
                state="Ready"))
            if row.state != "Ready":
                _event(c, "node.ready", node_id, {})
        return row.state, row.assignment_revision

    def mark_not_ready(self, node_id: str, reason: str) -> bool:
        """Ready -> NotReady; False if it was not Ready (someone else got there first)."""
        with self.engine.begin() as c:
            changed = c.execute(update(nodes).where(
                nodes.c.id == node_id, nodes.c.state == "Ready").values(state="NotReady"))
            if changed.rowcount != 1:
                return False
            _event(c, "node.not_ready", node_id, {"reason": reason})
        return True

    def heartbeat_ages(self) -> list[RowMapping]:
        """id, last_heartbeat and interval of every Ready node (for the readiness check)."""
        q = select(nodes.c.id, nodes.c.last_heartbeat, nodes.c.heartbeat_interval_s).where(
            nodes.c.state == "Ready")
        with self.engine.connect() as c:
            return list(c.execute(q).mappings())

    # -- assignments ---------------------------------------------------------------------
    def assignment(self, node_id: str) -> tuple[int, list[dict[str, Any]]] | None:
        q = select(nodes.c.assignment_revision, nodes.c.assignment).where(nodes.c.id == node_id)
        with self.engine.connect() as c:
            row = c.execute(q).first()
        return (row[0], row[1]) if row else None

    def set_assignment(self, node_id: str, instances: list[dict[str, Any]]) -> int:
        """Replace a node's desired instance list; returns the new revision."""
        with self.engine.begin() as c:
            res = c.execute(update(nodes).where(nodes.c.id == node_id).values(
                assignment=instances, assignment_revision=nodes.c.assignment_revision + 1))
            if res.rowcount != 1:
                raise KeyError(node_id)
            rev = c.execute(select(nodes.c.assignment_revision)
                            .where(nodes.c.id == node_id)).scalar_one()
        return int(rev)

    # -- join tokens ---------------------------------------------------------------------
    def add_join_token(self, token_hash: str, site: str, expires_at: float) -> None:
        with self.engine.begin() as c:
            c.execute(insert(join_tokens).values(token_hash=token_hash, site=site,
                                                 created_at=time.time(),
                                                 expires_at=expires_at))

    def check_join_token(self, token_hash: str) -> JoinTokenCheck:
        q = select(join_tokens).where(join_tokens.c.token_hash == token_hash)
        with self.engine.connect() as c:
            row = c.execute(q).mappings().first()
        if row is None:
            return JoinTokenCheck(None, "unknown join token")
        if row["used_at"] is not None:
            return JoinTokenCheck(row["site"], f"join token already used (by {row['used_by']}); "
                                               "join tokens are one-time, create a new one")
        if row["expires_at"] <= time.time():
            return JoinTokenCheck(row["site"], "join token expired; create a new one with "
                                               "`edgecloud token create`")
        return JoinTokenCheck(row["site"], None)

    # -- applications -------------------------------------------------------------------
    def apps(self) -> list[RowMapping]:
        with self.engine.connect() as c:
            return list(c.execute(select(apps).order_by(apps.c.name)).mappings())

    def app(self, name: str) -> RowMapping | None:
        with self.engine.connect() as c:
            return c.execute(select(apps).where(apps.c.name == name)).mappings().first()

    def save_app(self, name: str, spec: dict[str, Any], bundle: dict[str, Any] | None,
                 source_dir: str | None, instances: list[dict[str, Any]]) -> int:
        """Create or replace an app and its instances in one transaction; returns revision."""
        now = time.time()
        with self.engine.begin() as c:
            row = c.execute(select(apps.c.revision).where(apps.c.name == name)).first()
            revision = (row.revision + 1) if row else 1
            values = {"spec": spec, "bundle": bundle, "source_dir": source_dir,
                      "revision": revision, "updated_at": now}
            if row:
                c.execute(update(apps).where(apps.c.name == name).values(**values))
            else:
                c.execute(insert(apps).values(name=name, created_at=now, **values))
            self._replace_instances(c, name, instances)
        return revision

    def set_instances(self, app: str, instances: list[dict[str, Any]]) -> None:
        with self.engine.begin() as c:
            self._replace_instances(c, app, instances)

    @staticmethod
    def _replace_instances(c: Connection, app: str, rows: list[dict[str, Any]]) -> None:
        c.execute(delete(app_instances).where(app_instances.c.app == app))
        if rows:
            c.execute(insert(app_instances), [{**r, "app": app} for r in rows])

    def delete_app(self, name: str) -> bool:
        with self.engine.begin() as c:
            c.execute(delete(app_instances).where(app_instances.c.app == name))
            c.execute(delete(instance_logs).where(instance_logs.c.app == name))
            return c.execute(delete(apps).where(apps.c.name == name)).rowcount > 0

    def instances(self, app: str | None = None) -> list[RowMapping]:
        q = select(app_instances).order_by(app_instances.c.app, app_instances.c.name)
        if app is not None:
            q = q.where(app_instances.c.app == app)
        with self.engine.connect() as c:
            return list(c.execute(q).mappings())

    # -- instance logs ---------------------------------------------------------------------
    def append_logs(self, node: str, chunks: dict[str, str]) -> None:
        """Store output chunks keyed `<app>/<instance>` from a node's heartbeat."""
        if not chunks:
            return
        now = time.time()
        rows = [{"app": k.partition("/")[0], "instance": k.partition("/")[2], "node": node,
                 "ts": now, "text": text} for k, text in chunks.items()]
        with self.engine.begin() as c:
            c.execute(insert(instance_logs), rows)
            for app in {r["app"] for r in rows}:
                # Keep the newest chunks per app; older output lives on the node only.
                cutoff = c.execute(
                    select(instance_logs.c.id).where(instance_logs.c.app == app)
                    .order_by(instance_logs.c.id.desc()).offset(LOG_CHUNKS_KEPT_PER_APP)
                    .limit(1)).scalar()
                if cutoff is not None:
                    c.execute(delete(instance_logs).where(instance_logs.c.app == app,
                                                          instance_logs.c.id <= cutoff))

    def logs(self, app: str, instances: list[str] | None = None, after_id: int = 0,
             limit: int = 1000) -> list[RowMapping]:
        q = select(instance_logs).where(instance_logs.c.app == app,
                                        instance_logs.c.id > after_id)
        if instances is not None:
            q = q.where(instance_logs.c.instance.in_(instances))
        with self.engine.connect() as c:
            return list(c.execute(q.order_by(instance_logs.c.id).limit(limit)).mappings())

    # -- events --------------------------------------------------------------------------
    def events(self, after_id: int = 0, limit: int = 1000) -> list[RowMapping]:
        q = select(events).where(events.c.id > after_id).order_by(events.c.id).limit(limit)
        with self.engine.connect() as c:
            return list(c.execute(q).mappings())


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the readiness checker read while a heartbeat writes.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _upsert(c: Connection, table: Table, key: dict[str, Any], values: dict[str, Any]) -> None:
    # Portable select-then-write; PUT /infrastructure is rare and runs in one transaction.
    where = [table.c[k] == v for k, v in key.items()]
    if c.execute(select(*[table.c[k] for k in key]).where(*where)).first():
        c.execute(update(table).where(*where).values(**values))
    else:
        c.execute(insert(table).values(**{**key, **values}))


def _new_node(n: dict[str, Any], declared: bool) -> dict[str, Any]:
    return {"id": n["id"], "site": n["site"], "name": n["name"], "declared": declared,
            "labels": n["labels"], "resources": n["resources"], "speed": n["speed"],
            "state": "NotReady", "heartbeats": 0, "metrics": {}, "instance_status": [],
            "assignment": [], "assignment_revision": 0}


def _event(c: Connection, kind: str, subject: str, data: dict[str, Any]) -> None:
    c.execute(insert(events).values(ts=time.time(), kind=kind, subject=subject, data=data))
