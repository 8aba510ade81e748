"""`FlagStore`: flags, their audit trail and the revision counter, plus segments and tokens.

The flag methods live here; segments (`turnout.flags.store.segments`) and API tokens
(`turnout.flags.store.tokens`) are mixins on the same database, so callers keep one
object. Every change is one write transaction that validates the new definition,
bumps the flag's own version and the global revision, and appends an audit record;
the checks that need the database run inside that transaction
(`turnout.flags.store.queries`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from turnout.errors import ConflictError, StoreError
from turnout.flags.definition import FlagError, validate_flag
from turnout.flags.store.queries import (
    NOT_FOUND,
    audit,
    check_references,
    each_of,
    find,
    live,
    plain_strategy,
    record_of,
    served_segment,
)
from turnout.flags.store.records import (
    AuditRecord,
    FlagExists,
    FlagNotFound,
    FlagRecord,
    VersionConflict,
)
from turnout.flags.store.segments import SegmentStore
from turnout.flags.store.tokens import TokenStore
from turnout.store import schema as t
from turnout.store.base import converted

STATE_FORMAT_VERSION = 2
STATE_READ_ATTEMPTS = 20


class FlagStore(SegmentStore, TokenStore):
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
                        "segments": [served_segment(s) for s in segments],
                        "meta": {"revision": int(before or 0)}}
        raise StoreError(f"state database {self.name}: the flags changed during each of "
                         f"{STATE_READ_ATTEMPTS} reads; try again")

    @converted
    def flags(self, *, archived: bool = False) -> list[FlagRecord]:
        """Live flags by name (or, with ``archived=True``, the archived ones)."""
        query = sa.select(t.flags).where(t.flags.c.archived.is_(archived)).order_by(t.flags.c.name)
        with self._read() as conn:
            return [record_of(row) for row in conn.execute(query)]

    @converted
    def flag(self, name: str) -> FlagRecord | None:
        """The flag called ``name``, live or archived, or None."""
        with self._read() as conn:
            row = conn.execute(sa.select(t.flags).where(t.flags.c.name == name)).first()
        return None if row is None else record_of(row)

    @converted
    def require(self, name: str) -> FlagRecord:
        """Flag ``name``, archived or not; FlagNotFound if there never was one."""
        with self._read() as conn:
            found = find(conn, name)
        if found is None:
            raise FlagNotFound(NOT_FOUND.format(name=name))
        return found

    @converted
    def history(self, name: str) -> list[AuditRecord]:
        """Every recorded change of flag ``name`` (or ``segment:<id>``), oldest first."""
        query = (sa.select(t.flag_audit).where(t.flag_audit.c.flag == name)
                 .order_by(t.flag_audit.c.id))
        with self._read() as conn:
            return [AuditRecord(flag=r.flag, version=r.version, at=r.at, who=r.who,
                                action=r.action, change=r.change) for r in conn.execute(query)]

    # -- changing flags ------------------------------------------------------------------
    def create(self, definition: object, *, who: str) -> FlagRecord:
        """Add a flag; an archived flag of the same name is brought back with it."""
        return self.create_many([definition], who=who)[0]

    @converted
    def create_many(self, definitions: list[object], *, who: str) -> list[FlagRecord]:
        """Add several flags in one transaction: all of them, or (on any error) none.

        A flag may depend on one created before it in the same list.
        """
        news = each_of(definitions, validate_flag)
        names = [new["name"] for new in news]
        if len(set(names)) != len(names):
            raise FlagError([f"name: flag {n!r} is given twice" for n in dict.fromkeys(names)
                             if names.count(n) > 1])
        try:
            with self._write() as conn:
                return each_of(news, lambda new: self._create(conn, new, who))
        except IntegrityError as exc:  # another process created one of them first
            raise FlagExists(f"flag(s) {', '.join(names)} already exist; use update") from exc

    def _create(self, conn: sa.Connection, new: dict[str, Any], who: str) -> FlagRecord:
        old = find(conn, new["name"])
        if old is not None and not old.archived:
            raise FlagExists(f"flag {new['name']!r} already exists; use update")
        check_references(conn, new)
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
            old = live(conn, name)
            if expected_version is not None and old.version != expected_version:
                raise VersionConflict(f"flag {name!r} is at version {old.version}, not "
                                      f"{expected_version}; read it again and retry")
            check_references(conn, new)
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
            strategy = plain_strategy(definition, "flexibleRollout")
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
            strategy = plain_strategy(definition, "userWithId")
            params = strategy.setdefault("parameters", {})
            known = [u for u in str(params.get("userIds", "")).split(",") if u]
            known.extend(u.strip() for u in users if u.strip() not in known)
            params["userIds"] = ",".join(dict.fromkeys(known))

        return self._modify(name, change, who=who, action="target")

    @converted
    def archive(self, name: str, *, who: str) -> FlagRecord:
        """Take a flag out of the state SDKs see; its history is kept."""
        with self._write() as conn:
            old = live(conn, name)
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
            old = live(conn, name)
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
        audit(conn, new["name"], version=version, now=now, who=who, action=action, change=change)
        return FlagRecord(new["name"], new, version, archived, now)
