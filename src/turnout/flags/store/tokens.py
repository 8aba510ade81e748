"""API tokens in the flag store: created, checked, listed and revoked; only hashes are kept.

A mixin of `FlagStore` over the same database. A secret is shown once, when created;
the table keeps its SHA-256, so a copy of the database lets nobody call the API.
Token changes do not touch the flags' revision: servers notice revocations through
`token_revocations` instead (see ``turnout.api.tokens``).
"""

from __future__ import annotations

import hashlib
import secrets

import sqlalchemy as sa

from turnout.errors import UserError
from turnout.flags.store.records import Token, TokenKind, TokenRecord
from turnout.store import schema as t
from turnout.store.base import Database, converted


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class TokenStore(Database):
    """The token methods of `turnout.flags.store.FlagStore`."""

    @converted
    def create_token(self, name: str, kind: TokenKind) -> str:
        """A new API token; the secret is returned once and only its SHA-256 is kept."""
        if kind not in ("client", "admin"):
            raise UserError(f"token kind: expected client or admin, got {kind!r}")
        if not name.strip() or len(name) > 100:
            raise UserError("token name: expected 1 to 100 characters")
        secret = f"{kind}:{secrets.token_urlsafe(32)}"
        with self._write() as conn:
            conn.execute(t.tokens.insert().values(name=name, kind=kind, secret_sha256=_hash(secret),
                                                  created_at=self._now()))
        return secret

    @converted
    def check_token(self, secret: str) -> Token | None:
        """The token ``secret`` belongs to, or None when it is unknown or revoked."""
        query = sa.select(t.tokens.c.name, t.tokens.c.kind).where(
            t.tokens.c.secret_sha256 == _hash(secret), t.tokens.c.revoked_at.is_(None))
        with self._read() as conn:
            row = conn.execute(query).first()
        if row is None or row.kind not in ("client", "admin"):
            return None
        return Token(name=row.name, kind=row.kind)

    @converted
    def tokens(self) -> list[TokenRecord]:
        """Every token, valid or revoked, oldest first (secrets are never kept)."""
        query = sa.select(t.tokens).order_by(t.tokens.c.id)
        with self._read() as conn:
            return [TokenRecord(name=r.name, kind=r.kind, created_at=r.created_at,
                                revoked_at=r.revoked_at) for r in conn.execute(query)]

    @converted
    def revoke_token(self, name: str) -> int:
        """Revoke every valid token called ``name``; how many. UserError if there is none."""
        valid = sa.and_(t.tokens.c.name == name, t.tokens.c.revoked_at.is_(None))
        with self._write() as conn:
            count = conn.execute(t.tokens.update().where(valid).values(revoked_at=self._now()))
            if count.rowcount == 0:
                raise UserError(f"token name: no valid token called {name!r} "
                                "(`turnout flags token list` shows them)")
            return int(count.rowcount)

    @converted
    def token_revocations(self) -> tuple[int, float]:
        """A mark that moves whenever a token is revoked: (how many, when the last one was).

        Servers poll it to forget the tokens they cached (see ``turnout.api.tokens``).
        """
        query = sa.select(sa.func.count(t.tokens.c.revoked_at), sa.func.max(t.tokens.c.revoked_at))
        with self._read() as conn:
            row = conn.execute(query).one()
        return int(row[0] or 0), float(row[1] or 0.0)
