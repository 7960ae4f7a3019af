"""Join tokens (stored as hashes only): one-time, bound to a site, with an expiry."""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import Engine, insert, select

from edgecloud.platform.store.schema import join_tokens


@dataclass(frozen=True)
class JoinTokenCheck:
    """Why a join token cannot be used, or the site it is bound to."""

    site: str | None
    problem: str | None  # None = usable


class TokenRepository:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add(self, token_hash: str, site: str, expires_at: float) -> None:
        with self.engine.begin() as c:
            c.execute(insert(join_tokens).values(token_hash=token_hash, site=site,
                                                 created_at=time.time(),
                                                 expires_at=expires_at))

    def check(self, token_hash: str) -> JoinTokenCheck:
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
