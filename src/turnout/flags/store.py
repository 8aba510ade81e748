"""The flag store: flags, segments, their audit trail, API tokens and one revision counter.

A synchronous API on the same database (and the same migrations) as ``turnout.store.db``.
Every change is one write transaction that validates the new definition, bumps the
flag's own version and the global revision, and appends an audit record, so a reader
either sees all of a change or none of it. The revision is what servers poll to notice
changes made by another process (the CLI beside a running ``turnout server``); reading
it is one primary-key lookup. A change that would leave the definition as it was is not
a change: nothing is written and the record comes back as it was.

Definitions are checked by ``turnout.flags.definition``; what needs the database
(segments and parent flags that must exist) is checked here, inside the transaction.
Database errors leave this module only as ``StoreError``.
"""

from __future__ import annotations

import copy
import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from turnout.errors import ConflictError, StoreError, UserError
from turnout.flags.definition import FlagError, validate_flag, validate_segment
from turnout.store import schema as t
from turnout.store.base import Database, converted

__all__ = ["AuditRecord", "FlagError", "FlagExists", "FlagNotFound", "FlagRecord", "FlagStore",
           "Token", "TokenRecord", "VersionConflict", "validate_flag"]

R = TypeVar("R")
TokenKind = Literal["client", "admin"]
STATE_FORMAT_VERSION = 2
STATE_READ_ATTEMPTS = 20


class FlagNotFound(UserError):
    """No flag of that name (or it is archived)."""


class FlagExists(ConflictError):
    """A flag of that name already exists; nothing was changed (exit 2, like bad input)."""

    exit_code = 2


class VersionConflict(ConflictError):
    """The flag changed since the version the caller read."""


@dataclass(frozen=True)
class FlagRecord:
    name: str
    definition: dict[str, Any]
    version: int
    archived: bool
    updated_at: float


@dataclass(frozen=True)
class AuditRecord:
    flag: str
    version: int
    at: float
    who: str
    action: str
    change: dict[str, Any]


@dataclass(frozen=True)
class Token:
    name: str
    kind: TokenKind


@dataclass(frozen=True)
class TokenRecord:
    """A token as `turnout flags token list` shows it."""

    name: str
    kind: str
    created_at: float
    revoked_at: float | None


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _record(row: sa.Row[Any]) -> FlagRecord:
    return FlagRecord(name=row.name, definition=row.definition, version=row.version,
                      archived=bool(row.archived), updated_at=row.updated_at)


class FlagStore(Database):
    """Flags, segments and tokens in the state database. Build it with ``FlagStore.open``."""

    # -- reading -------------------------------------------------------------------------
    @converted
    def revision(self) -> int:
        """The global revision: it grows by one with every change of any flag or segment."""
        with self._read() as conn:
            return int(conn.scalar(sa.select(t.flag_meta.c.revision).where(t.flag_meta.c.id == 1))
                       or 0)

    @converted
    def state(self) -> dict[str, Any]:
        """The document SDKs get: live flags, every segment, and the revision it reflects.

        ``meta.revision`` is exactly the revision of those flags and segments (routers
        order pushes by it). SQLite's read transaction is one snapshot; where each
        statement may see newer commits (PostgreSQL's READ COMMITTED), the revision is
        read before and after and the read is retried if a change landed in between:
        every change bumps the revision in its own transaction.
        """
        revision_now = sa.select(t.flag_meta.c.revision).where(t.flag_meta.c.id == 1)
        for _ in range(STATE_READ_ATTEMPTS):
            with self._read() as conn:
                before = conn.scalar(revision_now)
                features = conn.scalars(sa.select(t.flags.c.definition)
                                        .where(t.flags.c.archived.is_(False))
                                        .order_by(t.flags.c.name)).all()
                segments = conn.scalars(sa.select(t.flag_segments.c.definition)
                                        .order_by(t.flag_segments.c.id)).all()
                after = conn.scalar(revision_now)
            if before == after:
                return {"version": STATE_FORMAT_VERSION, "features": list(features),
                        "segments": [_served_segment(s) for s in segments],
                        "meta": {"revision": int(before or 0)}}
        raise StoreError(f"state database {self.name}: the flags changed during each of "
                         f"{STATE_READ_ATTEMPTS} reads; try again")

    @converted
    def flags(self, *, archived: bool = False) -> list[FlagRecord]:
        """Live flags by name (or, with ``archived=True``, the archived ones)."""
        query = sa.select(t.flags).where(t.flags.c.archived.is_(archived)).order_by(t.flags.c.name)
        with self._read() as conn:
            return [_record(row) for row in conn.execute(query)]

    @converted
    def flag(self, name: str) -> FlagRecord | None:
        """The flag called ``name``, live or archived, or None."""
        with self._read() as conn:
            row = conn.execute(sa.select(t.flags).where(t.flags.c.name == name)).first()
        return None if row is None else _record(row)

    @converted
    def require(self, name: str) -> FlagRecord:
        """Flag ``name``, archived or not; FlagNotFound if there never was one."""
        with self._read() as conn:
            found = _find(conn, name)
        if found is None:
            raise FlagNotFound(_NOT_FOUND.format(name=name))
        return found

    @converted
    def history(self, name: str) -> list[AuditRecord]:
        """Every recorded change of flag ``name`` (or ``segment:<id>``), oldest first."""
        query = (sa.select(t.flag_audit).where(t.flag_audit.c.flag == name)
                 .order_by(t.flag_audit.c.id))
        with self._read() as conn:
            return [AuditRecord(flag=r.flag, version=r.version, at=r.at, who=r.who,
                                action=r.action, change=r.change) for r in conn.execute(query)]

    @converted
    def segments(self) -> list[dict[str, Any]]:
        with self._read() as conn:
            return list(conn.scalars(sa.select(t.flag_segments.c.definition)
                                     .order_by(t.flag_segments.c.id)))

    # -- changing flags ------------------------------------------------------------------
    def create(self, definition: object, *, who: str) -> FlagRecord:
        """Add a flag; an archived flag of the same name is brought back with it."""
        return self.create_many([definition], who=who)[0]

    @converted
    def create_many(self, definitions: list[object], *, who: str) -> list[FlagRecord]:
        """Add several flags in one transaction: all of them, or (on any error) none.

        A flag may depend on one created before it in the same list.
        """
        news = _each_of(definitions, validate_flag)
        names = [new["name"] for new in news]
        if len(set(names)) != len(names):
            raise FlagError([f"name: flag {n!r} is given twice" for n in dict.fromkeys(names)
                             if names.count(n) > 1])
        try:
            with self._write() as conn:
                return _each_of(news, lambda new: self._create(conn, new, who))
        except IntegrityError as exc:  # another process created one of them first
            raise FlagExists(f"flag(s) {', '.join(names)} already exist; use update") from exc

    def _create(self, conn: sa.Connection, new: dict[str, Any], who: str) -> FlagRecord:
        old = _find(conn, new["name"])
        if old is not None and not old.archived:
            raise FlagExists(f"flag {new['name']!r} already exists; use update")
        _check_references(conn, new)
        action = "create" if old is None else "revive"
        return self._save(conn, old, new, archived=False, who=who, action=action)

    @converted
    def update(self, name: str, definition: object, *, who: str,
               expected_version: int | None = None) -> FlagRecord:
        """Replace a flag's definition; with ``expected_version``, only if it is still that one."""
        if isinstance(definition, dict) and "name" not in definition:
            definition = {**definition, "name": name}
        new = validate_flag(definition)
        if new["name"] != name:
            raise FlagError([f"name: expected {name!r} (renaming a flag is not supported), "
                             f"got {new['name']!r}"])
        with self._write() as conn:
            old = _live(conn, name)
            if expected_version is not None and old.version != expected_version:
                raise VersionConflict(f"flag {name!r} is at version {old.version}, not "
                                      f"{expected_version}; read it again and retry")
            _check_references(conn, new)
            return self._save(conn, old, new, archived=False, who=who, action="update")

    def set_enabled(self, name: str, enabled: bool, *, who: str) -> FlagRecord:
        """Switch a flag on or off everywhere."""

        def change(definition: dict[str, Any]) -> None:
            definition["enabled"] = enabled

        return self._modify(name, change, who=who, action="enable" if enabled else "disable")

    def set_rollout(self, name: str, percent: int, *, who: str,
                    stickiness: str | None = None) -> FlagRecord:
        """Set the percentage of the flag's plain flexibleRollout strategy (added if missing).

        The strategy keeps its stickiness and groupId, so every user it had stays in when
        the percentage grows (Unleash's rule). Only ``stickiness`` given explicitly
        changes it; a new strategy gets ``default`` and the flag's name as its group.
        """
        if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
            raise FlagError([f"percent: expected a whole number 0..100, got {percent!r}"])
        if stickiness is not None and not stickiness.strip():
            raise FlagError(["stickiness: expected a context field name"])

        def change(definition: dict[str, Any]) -> None:
            strategy = _plain_strategy(definition, "flexibleRollout")
            params = strategy.setdefault("parameters", {})
            params["rollout"] = str(percent)
            if stickiness is not None:
                params["stickiness"] = stickiness

        return self._modify(name, change, who=who, action="rollout")

    def add_users(self, name: str, users: list[str], *, who: str) -> FlagRecord:
        """Add user ids to the flag's plain userWithId strategy (added if missing)."""
        bad = [f"users.{i}: expected a user id without commas, got {u!r}" for i, u in enumerate(users)
               if not isinstance(u, str) or not u.strip() or "," in u]
        if bad or not users:
            raise FlagError(bad or ["users: expected at least one user id"])

        def change(definition: dict[str, Any]) -> None:
            strategy = _plain_strategy(definition, "userWithId")
            params = strategy.setdefault("parameters", {})
            known = [u for u in str(params.get("userIds", "")).split(",") if u]
            known.extend(u.strip() for u in users if u.strip() not in known)
            params["userIds"] = ",".join(dict.fromkeys(known))

        return self._modify(name, change, who=who, action="target")

    @converted
    def archive(self, name: str, *, who: str) -> FlagRecord:
        """Take a flag out of the state SDKs see; its history is kept."""
        with self._write() as conn:
            old = _live(conn, name)
            children = [row.name for row in conn.execute(
                sa.select(t.flags.c.name, t.flags.c.definition).where(t.flags.c.archived.is_(False)))
                if any(d.get("feature") == name for d in row.definition.get("dependencies", []))]
            if children:
                raise ConflictError(f"flag {name!r} cannot be archived: {', '.join(children)} "
                                    "depend(s) on it")
            return self._save(conn, old, old.definition, archived=True, who=who, action="archive")

    @converted
    def _modify(self, name: str, change: Callable[[dict[str, Any]], None], *, who: str,
                action: str) -> FlagRecord:
        with self._write() as conn:
            old = _live(conn, name)
            draft = copy.deepcopy(old.definition)
            change(draft)
            new = validate_flag(draft)
            return self._save(conn, old, new, archived=False, who=who, action=action)

    def _save(self, conn: sa.Connection, old: FlagRecord | None, new: dict[str, Any], *,
              archived: bool, who: str, action: str) -> FlagRecord:
        if old is not None and old.definition == new and old.archived == archived:
            return old
        now = self._now()
        version = 1 if old is None else old.version + 1
        values = {"definition": new, "version": version, "archived": archived, "updated_at": now}
        if old is None:
            conn.execute(t.flags.insert().values(name=new["name"], created_at=now, **values))
        else:
            conn.execute(t.flags.update().where(t.flags.c.name == old.name).values(**values))
        change = {"before": None if old is None else old.definition, "after": new}
        _audit(conn, new["name"], version=version, now=now, who=who, action=action, change=change)
        return FlagRecord(new["name"], new, version, archived, now)


    # -- segments ------------------------------------------------------------------------
    @converted
    def put_segment(self, segment: object, *, who: str) -> dict[str, Any]:
        """Create a segment (no ``id``: the next free one) or replace the one with its ``id``."""
        new = validate_segment(segment)
        with self._write() as conn:
            if "id" not in new:
                top = conn.scalar(sa.select(sa.func.max(t.flag_segments.c.id)))
                new = {"id": int(top or 0) + 1, **new}
            row = conn.execute(sa.select(t.flag_segments)
                               .where(t.flag_segments.c.id == new["id"])).first()
            if row is not None and row.definition == new:
                return new
            version, now = (1 if row is None else row.version + 1), self._now()
            values = {"name": new["name"], "definition": new, "version": version, "updated_at": now}
            if row is None:
                conn.execute(t.flag_segments.insert().values(id=new["id"], **values))
            else:
                conn.execute(t.flag_segments.update()
                             .where(t.flag_segments.c.id == new["id"]).values(**values))
            change = {"before": None if row is None else row.definition, "after": new}
            _audit(conn, f"segment:{new['id']}", version=version, now=now, who=who,
                   action="segment" if row is None else "segment-update", change=change)
            return new

    # -- tokens --------------------------------------------------------------------------
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


def _audit(conn: sa.Connection, flag: str, *, version: int, now: float, who: str, action: str,
           change: dict[str, Any]) -> None:
    """Bump the global revision and record who changed what, in the caller's transaction."""
    conn.execute(t.flag_meta.update().where(t.flag_meta.c.id == 1)
                 .values(revision=t.flag_meta.c.revision + 1))
    conn.execute(t.flag_audit.insert().values(flag=flag, version=version, at=now, who=who,
                                              action=action, change=change))


def _each_of(items: list[Any], work: Callable[[Any], R]) -> list[R]:
    """``work`` on each item; a FlagError names the item by its index when there are several."""
    out: list[R] = []
    for i, item in enumerate(items):
        try:
            out.append(work(item))
        except FlagError as exc:
            if len(items) == 1:
                raise
            raise FlagError([f"{i}.{problem}" for problem in exc.problems]) from None
    return out


_NOT_FOUND = "no flag named {name!r} (`turnout flags list` shows them)"


def _find(conn: sa.Connection, name: str) -> FlagRecord | None:
    row = conn.execute(sa.select(t.flags).where(t.flags.c.name == name)).first()
    return None if row is None else _record(row)


def _live(conn: sa.Connection, name: str) -> FlagRecord:
    found = _find(conn, name)
    if found is None:
        raise FlagNotFound(_NOT_FOUND.format(name=name))
    if found.archived:
        raise FlagNotFound(f"flag {name!r} is archived; create it again to bring it back")
    return found


def _plain_strategy(definition: dict[str, Any], kind: str) -> dict[str, Any]:
    """The flag's first ``kind`` strategy without constraints or segments, appended if none."""
    strategies: list[dict[str, Any]] = definition.setdefault("strategies", [])
    for strategy in strategies:
        if (strategy.get("name") == kind and not strategy.get("constraints")
                and not strategy.get("segments")):
            return strategy
    strategies.append({"name": kind, "parameters": {}})
    return strategies[-1]


def _check_references(conn: sa.Connection, definition: dict[str, Any]) -> None:
    """Segments and parent flags a definition names must exist (and parents be live)."""
    ids = set(conn.scalars(sa.select(t.flag_segments.c.id)))
    problems = [f"strategies.{i}.segments.{j}: no segment with id {ident}"
                for i, strategy in enumerate(definition["strategies"])
                for j, ident in enumerate(strategy["segments"]) if ident not in ids]
    for i, dependency in enumerate(definition["dependencies"]):
        parent = _find(conn, dependency["feature"])
        if parent is None or parent.archived:
            problems.append(f"dependencies.{i}.feature: no flag named {dependency['feature']!r}")
        elif parent.definition.get("dependencies"):
            problems.append(f"dependencies.{i}.feature: {dependency['feature']!r} depends on "
                            "another flag itself; Unleash allows one level only")
    if problems:
        raise FlagError(problems)


def _served_segment(definition: dict[str, Any]) -> dict[str, Any]:
    return {"id": definition["id"], "name": definition["name"],
            "constraints": definition.get("constraints", [])}
