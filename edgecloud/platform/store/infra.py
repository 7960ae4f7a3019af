"""The infrastructure aggregate: the registered infrastructure, its sites, declared nodes."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Engine, delete, insert, select, update

from edgecloud.platform.store.schema import infrastructure, new_node, nodes, sites, upsert
from edgecloud.resource.protocol import SiteInfo


class InfraRow(BaseModel):
    name: str
    spec: dict[str, Any]
    """The infrastructure file as JSON (by alias)."""


class InfraRepository:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def current(self) -> InfraRow | None:
        with self.engine.connect() as c:
            row = c.execute(select(infrastructure)).mappings().first()
        return InfraRow(name=row["name"], spec=row["spec"]) if row else None

    def put(self, name: str, spec: dict[str, Any], site_rows: list[SiteInfo],
            node_rows: list[dict[str, Any]]) -> None:
        """Upsert the infrastructure, its sites and declared nodes in one transaction.

        Nodes that already joined keep their token, state and metrics; declared nodes
        that were dropped from the file and never joined are removed.
        """
        now = time.time()
        with self.engine.begin() as c:
            c.execute(delete(infrastructure).where(infrastructure.c.name != name))
            upsert(c, infrastructure, {"name": name}, {"spec": spec, "updated_at": now})
            for s in site_rows:
                upsert(c, sites, {"name": s.name}, s.model_dump())
            declared_ids = {n["id"] for n in node_rows}
            for n in node_rows:
                found = c.execute(select(nodes.c.id).where(nodes.c.id == n["id"])).first()
                if found:
                    c.execute(update(nodes).where(nodes.c.id == n["id"]).values(
                        declared=True, labels=n["labels"], resources=n["resources"],
                        speed=n["speed"]))
                else:
                    c.execute(insert(nodes).values(**new_node(n, declared=True)))
            stale = select(nodes.c.id).where(nodes.c.declared.is_(True),
                                             nodes.c.joined_at.is_(None))
            for (node_id,) in c.execute(stale).all():
                if node_id not in declared_ids:
                    c.execute(delete(nodes).where(nodes.c.id == node_id))

    def sites(self) -> list[SiteInfo]:
        with self.engine.connect() as c:
            rows = c.execute(select(sites).order_by(sites.c.name)).mappings()
            return [SiteInfo.model_validate(dict(r)) for r in rows]

    def site(self, name: str) -> SiteInfo | None:
        with self.engine.connect() as c:
            row = c.execute(select(sites).where(sites.c.name == name)).mappings().first()
        return SiteInfo.model_validate(dict(row)) if row else None

    def cloud_site(self) -> SiteInfo | None:
        return next((s for s in self.sites() if s.kind == "cloud"), None)
