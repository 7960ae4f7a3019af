"""The platform store on a database made by an older edgecloud: a `down` + `up` on an
existing home must keep working after an upgrade that added columns."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from edgecloud.platform.store import Store
from edgecloud.platform.store.schema import make_engine


def test_store_adds_the_columns_an_older_database_lacks(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'platform.db'}"
    old = make_engine(url)
    with old.begin() as c:  # the schema before issue 11 had none of these
        for table, column in (("nodes", "problems"), ("nodes", "fetched_revision"),
                              ("apps", "bundle_python_path")):
            c.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
        c.execute(text("INSERT INTO sites (name, kind, broker, files, platform) VALUES "
                       "('cloud', 'cloud', 'mqtt://h:1', 'http://h:2', 'http://h:3')"))
    old.dispose()
    store = Store(url)  # fails on the old code at the first query of a new column
    try:
        assert store.nodes.all() == []
        assert [s.name for s in store.infra.sites()] == ["cloud"]
        assert store.apps.all() == []
    finally:
        store.close()
