"""Instance output shipped by agents with their heartbeats (the newest chunks per app)."""

from __future__ import annotations

import time

from pydantic import BaseModel
from sqlalchemy import Engine, delete, insert, select

from edgecloud.platform.store.schema import LOG_CHUNKS_KEPT_PER_APP, instance_logs


class LogRow(BaseModel):
    id: int
    app: str
    instance: str
    node: str
    ts: float
    text: str


class LogRepository:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def append(self, node: str, chunks: dict[str, str]) -> None:
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

    def read(self, app: str, instances: list[str] | None = None, after_id: int = 0,
             limit: int = 1000) -> list[LogRow]:
        q = select(instance_logs).where(instance_logs.c.app == app,
                                        instance_logs.c.id > after_id)
        if instances is not None:
            q = q.where(instance_logs.c.instance.in_(instances))
        with self.engine.connect() as c:
            rows = c.execute(q.order_by(instance_logs.c.id).limit(limit)).mappings()
            return [LogRow.model_validate(dict(r)) for r in rows]
