"""Segments in the flag store: named sets of constraints that flag strategies share.

A mixin of `FlagStore` over the same database. A segment change is audited under
``segment:<id>`` and bumps the global revision like a flag change, since every flag
that names the segment is evaluated differently afterwards.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from turnout.flags.definition import validate_segment
from turnout.flags.store.queries import audit
from turnout.store import schema as t
from turnout.store.base import Database, converted


class SegmentStore(Database):
    """Reading and writing segments; see `turnout.flags.store.FlagStore`."""

    @converted
    def segments(self) -> list[dict[str, Any]]:
        with self._read() as conn:
            return list(conn.scalars(sa.select(t.flag_segments.c.definition)
                                     .order_by(t.flag_segments.c.id)))

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
            audit(conn, f"segment:{new['id']}", version=version, now=now, who=who,
                  action="segment" if row is None else "segment-update", change=change)
            return new
