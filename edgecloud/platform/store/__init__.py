"""The platform's SQL store, one repository per aggregate behind one `Store` facade.

    store.infra    the infrastructure and its sites       (infra.py)
    store.nodes    nodes: identity, liveness, assignment   (nodes.py)
    store.tokens   one-time join tokens                    (tokens.py)
    store.apps     applications and planned instances      (apps.py)
    store.events   recorded events                         (events.py)
    store.logs     instance output                         (logs.py)

Every result is a typed row. All methods are synchronous and thread-safe (one connection
per call from the pool); async callers run them in a worker thread. Tokens are stored as
hashes only. The tables are in schema.py.
"""

from __future__ import annotations

from edgecloud.platform.store.apps import AppRepository, AppRow, InstanceRow
from edgecloud.platform.store.events import EventRepository, EventRow
from edgecloud.platform.store.infra import InfraRepository, InfraRow
from edgecloud.platform.store.logs import LogRepository, LogRow
from edgecloud.platform.store.nodes import HeartbeatAge, NodeRef, NodeRepository, NodeRow
from edgecloud.platform.store.schema import make_engine
from edgecloud.platform.store.tokens import JoinTokenCheck, TokenRepository


class Store:
    """The platform tables, by aggregate; see the module docstring."""

    def __init__(self, db_url: str) -> None:
        self.engine = make_engine(db_url)
        self.infra = InfraRepository(self.engine)
        self.nodes = NodeRepository(self.engine)
        self.tokens = TokenRepository(self.engine)
        self.apps = AppRepository(self.engine)
        self.events = EventRepository(self.engine)
        self.logs = LogRepository(self.engine)

    def close(self) -> None:
        self.engine.dispose()


__all__ = ["AppRow", "EventRow", "HeartbeatAge", "InfraRow", "InstanceRow", "JoinTokenCheck",
           "LogRow", "NodeRef", "NodeRow", "Store"]
