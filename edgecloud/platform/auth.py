"""Bearer-token authentication of the platform API.

Three kinds of token: the admin token (read from a file at start), one-time join tokens
bound to a site (created by the admin), and node tokens (issued at join, bound to one
node). Only SHA-256 hashes are stored: tokens are 256-bit random strings, so a plain hash
is enough (no salt or slow hash needed, unlike passwords).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from edgecloud.errors import UserError
from edgecloud.platform.store import Store

_bearer = HTTPBearer(auto_error=False, description="admin, join or node token")


def new_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def read_admin_token_hash(path: Path) -> str:
    """Hash of the admin token in `path` (written by the supervisor before start)."""
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise UserError(f"{path}: cannot read the admin token ({exc.strerror})") from None
    if len(token) < 16:
        raise UserError(f"{path}: the admin token must be at least 16 characters")
    return hash_token(token)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the admin, a node (with its id), or the holder of a join token."""

    kind: Literal["admin", "node", "join"]
    token_hash: str
    node_id: str | None = None
    site: str | None = None
    name: str | None = None


class Authenticator:
    """Resolves a bearer token to a Principal."""

    def __init__(self, store: Store, admin_token_hash: str) -> None:
        self.store = store
        self.admin_hash = admin_token_hash

    def resolve(self, token: str) -> Principal | None:
        h = hash_token(token)
        if hmac.compare_digest(h, self.admin_hash):
            return Principal("admin", h)
        node = self.store.nodes.by_token(h)
        if node is not None:
            return Principal("node", h, node.id, node.site, node.name)
        check = self.store.tokens.check(h)
        if check.site is not None:
            return Principal("join", h, site=check.site)
        return None


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def principal(request: Request,
              cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
              ) -> Principal:
    """Dependency: the authenticated caller, or 401."""
    if cred is None:
        raise unauthorized("missing bearer token (header `Authorization: Bearer <token>`)")
    auth: Authenticator = request.app.state.platform.auth
    who = auth.resolve(cred.credentials)
    if who is None:
        raise unauthorized("invalid token (unknown, revoked, or the node was removed)")
    return who


def require_admin(who: Annotated[Principal, Depends(principal)]) -> Principal:
    """Dependency: only the admin token."""
    if who.kind != "admin":
        raise HTTPException(403, f"this call needs the admin token, not a {who.kind} token")
    return who


def require_node(site: str, name: str,
                 who: Annotated[Principal, Depends(principal)]) -> Principal:
    """Dependency: the token of the node named in the path (`/nodes/{site}/{name}/...`)."""
    if who.kind != "node":
        raise HTTPException(403, f"this call needs the node's own token, not a {who.kind} "
                                 "token")
    if (who.site, who.name) != (site, name):
        raise HTTPException(403, f"the token of node {who.site}/{who.name} cannot act for "
                                 f"node {site}/{name}")
    return who


def require_join(who: Annotated[Principal, Depends(principal)]) -> Principal:
    """Dependency: a join token (usability is checked by the join itself)."""
    if who.kind != "join":
        raise HTTPException(403, f"joining needs a join token (`edgecloud token create`), "
                                 f"not a {who.kind} token")
    return who


AdminDep = Annotated[Principal, Depends(require_admin)]
NodeDep = Annotated[Principal, Depends(require_node)]
JoinDep = Annotated[Principal, Depends(require_join)]
