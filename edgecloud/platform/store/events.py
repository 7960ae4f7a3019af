"""Recorded events (node joined / ready / not ready), oldest first."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from sqlalchemy import Engine, select

from edgecloud.platform.store.schema import events


class EventRow(BaseModel):
    id: int
    ts: float
    kind: str
    subject: str
    data: dict[str, Any]


class EventRepository:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def since(self, after_id: int = 0, limit: int = 1000) -> list[EventRow]:
        q = select(events).where(events.c.id > after_id).order_by(events.c.id).limit(limit)
        with self.engine.connect() as c:
            return [EventRow.model_validate(dict(r)) for r in c.execute(q).mappings()]
