"""The deployment lock in the state database: one lease row per service (`deploy_locks`).

A control plane holds a service's lock while the row carries its token and has not
expired; it renews the row while it works. Another may take the row over once the lease
has expired, or at once when the caller's `gone` says the recorded holder provably died
(`turnout.service.lock` decides that from the process table of its own machine). Each
decision reads and writes the row in one write transaction (the row locked with
FOR UPDATE on PostgreSQL; SQLite runs one writer at a time), so two claimers never both
win: a second insert of the row fails on its primary key and the claim looks again.

Time is the database's own on PostgreSQL (`clock_timestamp()`), so control planes on
machines whose clocks disagree still agree on when a lease ends; an SQLite file lives on
one machine, and the store's `now` (that machine's clock) serves.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from turnout.errors import StoreError
from turnout.store import schema as t
from turnout.store.base import Database, converted

CLAIM_ATTEMPTS = 5


@dataclass(frozen=True)
class Claimant:
    """Who holds or asks for a lease: a text for people, and what names its process.

    `pid_space` says where `pid` means something (a boot and a pid namespace); `pid_start`
    is the process's start time in clock ticks, so a reused pid is not taken for it.
    """

    holder: str
    host: str
    pid_space: str
    pid: int
    pid_start: int | None


@dataclass(frozen=True)
class Lease:
    """A service's lease as the database has it, read at `read_at` (the database's time)."""

    service: str
    token: str
    who: Claimant
    acquired_at: float
    expires_at: float
    read_at: float

    @property
    def expired(self) -> bool:
        return self.expires_at <= self.read_at


class LeaseStore(Database):
    """The lease methods of `turnout.store.Store`."""

    @converted
    def claim_lease(
        self, service: str, who: Claimant, *, seconds: float, gone: Callable[[Lease], bool]
    ) -> tuple[bool, Lease]:
        """Take the service's lease for `seconds` if it is free, expired or its holder is
        `gone`. Returns whether it was taken, and the lease as it now stands (ours if so)."""
        for _ in range(CLAIM_ATTEMPTS):
            try:
                with self._write() as conn:
                    return self._claim(conn, service, who, seconds, gone)
            except IntegrityError:  # another claimer inserted the row first: look again
                continue
        raise StoreError(f"state database {self.name}: the deployment lock of {service} changed "
                         f"hands during each of {CLAIM_ATTEMPTS} attempts to take it; try again")

    def _claim(self, conn: sa.Connection, service: str, who: Claimant, seconds: float,
               gone: Callable[[Lease], bool]) -> tuple[bool, Lease]:
        now = self._clock(conn)
        row = conn.execute(
            sa.select(t.deploy_locks).where(t.deploy_locks.c.service == service).with_for_update()
        ).first()
        current = None if row is None else _lease(row, now)
        if current is not None and not (current.expired or gone(current)):
            return False, current
        mine = Lease(service, secrets.token_hex(16), who, now, now + seconds, now)
        values = _values(mine)
        if current is None:
            conn.execute(t.deploy_locks.insert().values(service=service, **values))
        else:
            conn.execute(t.deploy_locks.update().where(t.deploy_locks.c.service == service)
                         .values(**values))
        return True, mine

    @converted
    def renew_lease(self, service: str, token: str, *, seconds: float) -> Lease | None:
        """Extend our lease (`token`) to `seconds` from now. Returns the lease as it now
        stands: ours, renewed; another's, when ours was taken over; None when there is none."""
        where = sa.and_(t.deploy_locks.c.service == service, t.deploy_locks.c.token == token)
        with self._write() as conn:
            now = self._clock(conn)
            conn.execute(t.deploy_locks.update().where(where).values(expires_at=now + seconds))
            row = conn.execute(
                sa.select(t.deploy_locks).where(t.deploy_locks.c.service == service)
            ).first()
        return None if row is None else _lease(row, now)

    @converted
    def release_lease(self, service: str, token: str) -> None:
        """Give our lease (`token`) up; one that is no longer ours is left alone."""
        with self._write() as conn:
            conn.execute(t.deploy_locks.delete().where(
                t.deploy_locks.c.service == service, t.deploy_locks.c.token == token))

    @converted
    def lease(self, service: str) -> Lease | None:
        """The service's lease row, live or expired; None when nobody took it."""
        with self._read() as conn:
            now = self._clock(conn)
            row = conn.execute(
                sa.select(t.deploy_locks).where(t.deploy_locks.c.service == service)
            ).first()
        return None if row is None else _lease(row, now)

    def _clock(self, conn: sa.Connection) -> float:
        if conn.dialect.name == "postgresql":
            return float(conn.scalar(sa.text("SELECT extract(epoch FROM clock_timestamp())")))
        return self._now()


def _values(lease: Lease) -> dict[str, Any]:
    who = lease.who
    return {"token": lease.token, "holder": who.holder[:300], "host": who.host[:255],
            "pid_space": who.pid_space[:128], "pid": who.pid, "pid_start": who.pid_start,
            "acquired_at": lease.acquired_at, "expires_at": lease.expires_at}


def _lease(row: sa.Row[Any], now: float) -> Lease:
    who = Claimant(holder=row.holder, host=row.host, pid_space=row.pid_space, pid=row.pid,
                   pid_start=row.pid_start)
    return Lease(service=row.service, token=row.token, who=who, acquired_at=row.acquired_at,
                 expires_at=row.expires_at, read_at=now)
