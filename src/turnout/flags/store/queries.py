"""The queries and checks behind `FlagStore`'s changes, one function each.

Each takes an open connection inside the transaction its caller began (or only plain
values), so a check and the write it guards see the same snapshot. `audit` is the one
place the global revision grows: flags and segments alike record their change through it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa

from turnout.flags.definition import FlagError
from turnout.flags.store.records import FlagNotFound, FlagRecord
from turnout.store import schema as t

R = TypeVar("R")
NOT_FOUND = "no flag named {name!r} (`turnout flags list` shows them)"


def record_of(row: sa.Row[Any]) -> FlagRecord:
    return FlagRecord(name=row.name, definition=row.definition, version=row.version,
                      archived=bool(row.archived), updated_at=row.updated_at)


def audit(conn: sa.Connection, flag: str, *, version: int, now: float, who: str, action: str,
          change: dict[str, Any]) -> None:
    """Bump the global revision and record who changed what, in the caller's transaction."""
    conn.execute(t.flag_meta.update().where(t.flag_meta.c.id == 1)
                 .values(revision=t.flag_meta.c.revision + 1))
    conn.execute(t.flag_audit.insert().values(flag=flag, version=version, at=now, who=who,
                                              action=action, change=change))


def each_of(items: list[Any], work: Callable[[Any], R]) -> list[R]:
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


def find(conn: sa.Connection, name: str) -> FlagRecord | None:
    row = conn.execute(sa.select(t.flags).where(t.flags.c.name == name)).first()
    return None if row is None else record_of(row)


def live(conn: sa.Connection, name: str) -> FlagRecord:
    found = find(conn, name)
    if found is None:
        raise FlagNotFound(NOT_FOUND.format(name=name))
    if found.archived:
        raise FlagNotFound(f"flag {name!r} is archived; create it again to bring it back")
    return found


def plain_strategy(definition: dict[str, Any], kind: str) -> dict[str, Any]:
    """The flag's first ``kind`` strategy without constraints or segments, appended if none."""
    strategies: list[dict[str, Any]] = definition.setdefault("strategies", [])
    for strategy in strategies:
        if (strategy.get("name") == kind and not strategy.get("constraints")
                and not strategy.get("segments")):
            return strategy
    strategies.append({"name": kind, "parameters": {}})
    return strategies[-1]


def check_references(conn: sa.Connection, definition: dict[str, Any]) -> None:
    """Segments and parent flags a definition names must exist (and parents be live)."""
    ids = set(conn.scalars(sa.select(t.flag_segments.c.id)))
    problems = [f"strategies.{i}.segments.{j}: no segment with id {ident}"
                for i, strategy in enumerate(definition["strategies"])
                for j, ident in enumerate(strategy["segments"]) if ident not in ids]
    for i, dependency in enumerate(definition["dependencies"]):
        parent = find(conn, dependency["feature"])
        if parent is None or parent.archived:
            problems.append(f"dependencies.{i}.feature: no flag named {dependency['feature']!r}")
        elif parent.definition.get("dependencies"):
            problems.append(f"dependencies.{i}.feature: {dependency['feature']!r} depends on "
                            "another flag itself; Unleash allows one level only")
    if problems:
        raise FlagError(problems)


def served_segment(definition: dict[str, Any]) -> dict[str, Any]:
    """A segment as the state document carries it: id, name and constraints only."""
    return {"id": definition["id"], "name": definition["name"],
            "constraints": definition.get("constraints", [])}
