"""The tables of the platform store and the helpers the repositories share.

SQLAlchemy Core with portable types only (JSON, Float epoch seconds), so the same code
runs on SQLite (embedded) and PostgreSQL (scale-out).
"""

from __future__ import annotations

import json
import time
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
    event,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection

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
    # The newest revision the node's agent fetched, and what it last could not do.
    Column("fetched_revision", Integer, nullable=False, default=0),
    Column("problems", JSON, nullable=False, default=list),
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
    Column("bundle_python_path", JSON, nullable=False, default=list),
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


def make_engine(db_url: str) -> Engine:
    """An engine on `db_url` with every table created."""
    connect_args: dict[str, Any] = {}
    if db_url.startswith("sqlite"):
        # Worker threads share the pool; wait for locks instead of failing at once.
        connect_args = {"check_same_thread": False, "timeout": 30}
    engine = create_engine(db_url, connect_args=connect_args, pool_pre_ping=True)
    if db_url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
    metadata.create_all(engine)
    add_missing_columns(engine)
    return engine


def add_missing_columns(engine: Engine) -> list[str]:
    """Bring a database made by an older edgecloud up to this schema; returns what was added.

    Schema changes so far only add columns, each with a default, so an `ALTER TABLE ... ADD
    COLUMN ... DEFAULT` per missing column is the whole migration (a `down` + `up` on an
    existing home keeps its applications, users and tokens). Anything else would need a
    real migration tool and fails loudly at the first query instead of silently.
    """
    present = {t: {c["name"] for c in inspect(engine).get_columns(t)}
               for t in metadata.tables}
    added = []
    with engine.begin() as c:
        for table in metadata.sorted_tables:
            for col in table.columns:
                if col.name in present[table.name]:
                    continue
                ddl = (f"ALTER TABLE {table.name} ADD COLUMN {col.name} "
                       f"{col.type.compile(engine.dialect)}")
                default = _default_literal(col)
                if default is not None:
                    ddl += f" DEFAULT {default}"
                if not col.nullable and default is not None:
                    ddl += " NOT NULL"
                c.execute(text(ddl))
                added.append(f"{table.name}.{col.name}")
    return added


def _default_literal(col: Column[Any]) -> str | None:
    """The SQL literal of a column's Python-side default (lists and dicts as JSON text)."""
    default = col.default
    if default is None or not (default.is_scalar or default.is_callable):
        return None
    value = default.arg(None) if default.is_callable else default.arg  # type: ignore[attr-defined]
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | dict):
        value = json.dumps(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return None


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the readiness checker read while a heartbeat writes.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def upsert(c: Connection, table: Table, key: dict[str, Any], values: dict[str, Any]) -> None:
    # Portable select-then-write; PUT /infrastructure is rare and runs in one transaction.
    where = [table.c[k] == v for k, v in key.items()]
    if c.execute(select(*[table.c[k] for k in key]).where(*where)).first():
        c.execute(update(table).where(*where).values(**values))
    else:
        c.execute(insert(table).values(**{**key, **values}))


def new_node(n: dict[str, Any], declared: bool) -> dict[str, Any]:
    return {"id": n["id"], "site": n["site"], "name": n["name"], "declared": declared,
            "labels": n["labels"], "resources": n["resources"], "speed": n["speed"],
            "state": "NotReady", "heartbeats": 0, "metrics": {}, "instance_status": [],
            "assignment": [], "assignment_revision": 0, "fetched_revision": 0,
            "problems": []}


def record_event(c: Connection, kind: str, subject: str, data: dict[str, Any]) -> None:
    c.execute(insert(events).values(ts=time.time(), kind=kind, subject=subject, data=data))
