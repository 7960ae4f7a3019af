"""The application aggregate: an app's topology, bundle and planned instances.

Topologies and instance specs are parsed when read, so callers get typed objects.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Connection, Engine, delete, insert, select, update

from edgecloud.application.topology import Application
from edgecloud.platform.store.schema import app_instances, apps, instance_logs
from edgecloud.resource.files import FileRef
from edgecloud.resource.runtime import InstanceSpec


class AppRow(BaseModel):
    name: str
    topology: Application
    bundle: FileRef | None
    source_dir: str | None
    bundle_python_path: list[str]
    revision: int
    created_at: float
    updated_at: float


class InstanceRow(BaseModel):
    """A planned instance: where it runs and the spec its node was sent."""

    app: str
    name: str
    component: str
    site: str
    node: str
    spec: InstanceSpec


def _app_row(r: Any) -> AppRow:
    return AppRow(name=r["name"], topology=Application.model_validate(r["spec"]),
                  bundle=r["bundle"], source_dir=r["source_dir"],
                  bundle_python_path=r["bundle_python_path"] or [], revision=r["revision"],
                  created_at=r["created_at"], updated_at=r["updated_at"])


class AppRepository:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def all(self) -> list[AppRow]:
        with self.engine.connect() as c:
            return [_app_row(r) for r in c.execute(select(apps).order_by(apps.c.name)).mappings()]

    def get(self, name: str) -> AppRow | None:
        with self.engine.connect() as c:
            row = c.execute(select(apps).where(apps.c.name == name)).mappings().first()
        return _app_row(row) if row else None

    def exists(self, name: str) -> bool:
        with self.engine.connect() as c:
            return c.execute(select(apps.c.name).where(apps.c.name == name)).first() is not None

    def save(self, topology: Application, bundle: FileRef | None, source_dir: str | None,
             bundle_python_path: list[str], instances: list[InstanceRow]) -> int:
        """Create or replace an app and its instances in one transaction (so a replaced
        app is never missing); returns its revision."""
        now = time.time()
        name = topology.metadata.name
        with self.engine.begin() as c:
            row = c.execute(select(apps.c.revision).where(apps.c.name == name)).first()
            revision = (row.revision + 1) if row else 1
            values = {"spec": topology.model_dump(mode="json", by_alias=True),
                      "bundle": bundle.model_dump(mode="json") if bundle else None,
                      "source_dir": source_dir, "bundle_python_path": bundle_python_path,
                      "revision": revision, "updated_at": now}
            if row:
                c.execute(update(apps).where(apps.c.name == name).values(**values))
            else:
                c.execute(insert(apps).values(name=name, created_at=now, **values))
            _replace_instances(c, name, instances)
        return revision

    def set_instances(self, app: str, instances: list[InstanceRow]) -> None:
        with self.engine.begin() as c:
            _replace_instances(c, app, instances)

    def delete(self, name: str) -> bool:
        with self.engine.begin() as c:
            c.execute(delete(app_instances).where(app_instances.c.app == name))
            c.execute(delete(instance_logs).where(instance_logs.c.app == name))
            return c.execute(delete(apps).where(apps.c.name == name)).rowcount > 0

    def instances(self, app: str | None = None) -> list[InstanceRow]:
        q = select(app_instances).order_by(app_instances.c.app, app_instances.c.name)
        if app is not None:
            q = q.where(app_instances.c.app == app)
        with self.engine.connect() as c:
            return [InstanceRow.model_validate(dict(r)) for r in c.execute(q).mappings()]


def _replace_instances(c: Connection, app: str, rows: list[InstanceRow]) -> None:
    c.execute(delete(app_instances).where(app_instances.c.app == app))
    if rows:
        c.execute(insert(app_instances), [{**r.model_dump(mode="json"), "app": app}
                                          for r in rows])
