"""`Journal`: starts, stops and applied tables in one order, shared by the fake platform and
router, and `named`, how a fake's set of names picks revisions and instances."""

from __future__ import annotations

from turnout.model import Instance
from turnout.routers.table import RoutingTable


class Journal:
    """Starts, stops and applied tables in the order they happened, shared by the fakes."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str]] = []
        self.stopped_while_routed: list[str] = []
        self._routed: frozenset[str] = frozenset()

    def started(self, instance: Instance) -> None:
        self.entries.append(("start", instance.id))

    def stopped(self, instance: Instance) -> None:
        self.entries.append(("stop", instance.id))
        if instance.id in self._routed:
            self.stopped_while_routed.append(instance.id)

    def applied(self, table: RoutingTable) -> None:
        self._routed = frozenset(table.backend_ids())
        self.entries.append(("apply", ",".join(sorted(self._routed))))


def named(names: set[str], revision: str, version: str, slot: int | None = None) -> bool:
    return revision in names or version in names or f"{revision}-{slot}" in names
