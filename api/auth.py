"""Bearer tokens with a role: `reader` may read, `writer` may also write.

Tokens come from LBCP_API_TOKENS (`role:token,role:token`) and/or a file given by
LBCP_API_TOKENS_FILE (one `role token` per line, `#` comments). Only their SHA-256 digests
are kept, compared in constant time; a token is never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from fastapi import Request

from api.problems import ApiError


class Role(StrEnum):
    READER = "reader"
    WRITER = "writer"


_RANK = {Role.READER: 1, Role.WRITER: 2}


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class Tokens:
    """The configured tokens; empty means dev mode (allowed only on loopback)."""

    entries: tuple[tuple[bytes, Role], ...] = ()

    @classmethod
    def parse(cls, env_value: str | None = None, file: str | Path | None = None) -> Tokens:
        pairs: list[tuple[str, str]] = []
        for item in (env_value or "").split(","):
            item = item.strip()
            if not item:
                continue
            role, sep, token = item.partition(":")
            if not sep:
                raise ValueError("LBCP_API_TOKENS entries look like 'writer:TOKEN'")
            pairs.append((role.strip(), token.strip()))
        if file:
            for n, line in enumerate(Path(file).read_text().splitlines(), 1):
                line = line.split("#", 1)[0].strip()
                if not line:
                    continue
                fields = line.split()
                if len(fields) != 2:
                    raise ValueError(f"{file}:{n}: expected 'ROLE TOKEN'")
                pairs.append((fields[0], fields[1]))
        entries = []
        for role, token in pairs:
            if role not in Role.__members__.values():
                raise ValueError(f"unknown role {role!r}: use reader or writer")
            if len(token) < 16:
                raise ValueError("tokens must be at least 16 characters")
            entries.append((_digest(token), Role(role)))
        return cls(tuple(entries))

    @classmethod
    def from_env(cls) -> Tokens:
        return cls.parse(os.environ.get("LBCP_API_TOKENS"), os.environ.get("LBCP_API_TOKENS_FILE") or None)

    @property
    def enabled(self) -> bool:
        return bool(self.entries)

    def role_of(self, token: str) -> Role | None:
        d = _digest(token)
        found: Role | None = None
        for digest, role in self.entries:  # no early exit: time does not depend on which matched
            if hmac.compare_digest(d, digest):
                found = role
        return found


def is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require(role: Role) -> Callable[[Request], Awaitable[Role]]:
    """A FastAPI dependency that lets a request through only with at least `role`."""

    async def _check(request: Request) -> Role:
        tokens: Tokens = request.app.state.tokens
        if not tokens.enabled:
            return Role.WRITER
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "unauthenticated", "Unauthenticated", "send 'Authorization: Bearer <token>'")
        have = tokens.role_of(token.strip())
        if have is None:
            raise ApiError(401, "unauthenticated", "Unauthenticated", "the bearer token is not valid")
        if _RANK[have] < _RANK[role]:
            raise ApiError(403, "forbidden", "Forbidden", f"this needs the {role} role; the token has {have}")
        return have

    return _check
