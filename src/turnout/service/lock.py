"""The per-service deployment lock: an flock beside a local database, a lease in a shared one.

`DeployLock` is what a session holds while a command changes a service. Two kinds:

- `FileLock`: an flock on `.turnout/deploy.lock`, for the SQLite file beside the spec.
  Only control planes on this machine share that database, and the kernel drops the
  lock the moment its holder dies, so a deployment killed with SIGKILL resumes at once.
  The holder writes who it is into the file, for the messages of those who wait.
- `LeaseLock`: a lease row in the state database (`turnout.store.lease`), for a database
  other control planes may share from other machines (`TURNOUT_DATABASE_URL`). Its holder
  renews it every `renew` seconds for `lease` seconds; another takes it over once it
  expired, or at once when the holder ran on this same machine (same boot and pid
  namespace) and its process (pid and start time) is gone.

`keep` runs beside the work while the lock is held and calls `lost` once if the lock
slips away (a lease taken over, or not renewed before it ended), so the work can stop.
"""

from __future__ import annotations

import asyncio
import fcntl
import getpass
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from turnout import procs
from turnout.errors import StoreError
from turnout.statedir import StateDir
from turnout.store.db import Store
from turnout.store.lease import Claimant, Lease

LEASE = 15.0  # seconds a lease lasts unless renewed
RENEW = 5.0  # how often its holder renews it


class DeployLock(Protocol):
    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it; False when another does."""
        ...

    def release(self) -> None:
        """Give the lock up (nothing when not held). May raise StoreError."""
        ...

    def holder(self) -> str | None:
        """Who holds the lock, for people ("deploy@ci-2 pid 4242 until 12:03:11"); None if free."""
        ...

    async def keep(self, lost: Callable[[str], None]) -> None:
        """While held: keep the lock; call `lost` with the reason, once, if it slips away."""
        ...


def this_process() -> Claimant:
    """This process as a lock holder: user@host pid N, and what identifies it on this machine."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid
        user = str(os.getuid())
    host, pid = socket.gethostname(), os.getpid()
    return Claimant(holder=f"{user}@{host} pid {pid}", host=host, pid_space=pid_space(), pid=pid,
                    pid_start=procs.start_ticks(pid))


def pid_space() -> str:
    """Where a pid names one process: this boot and this pid namespace ('' if unknown).

    Containers on one machine share the boot id but not their pids, hence the namespace.
    """
    boot = procs.boot_id()
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    return f"{boot} {namespace}" if boot else ""


def for_state(state: StateDir, store: Store, service: str, *, who: Claimant | None = None) -> DeployLock:
    """The flock when the database is the SQLite file in `state`, else a lease in the database."""
    who = who or this_process()
    if state.owns_database:
        return FileLock(state.deploy_lock, who)
    return LeaseLock(store, service, who)


class FileLock:
    """An flock on a file; see the module docstring."""

    def __init__(self, path: Path, who: Claimant) -> None:
        self.path, self.who = path, who
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        if not _flock(fd):
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, self.who.holder.encode(), 0)
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def holder(self) -> str | None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if _flock(fd):
                return None
            return os.pread(fd, 300, 0).decode(errors="replace").strip() or "another process"
        finally:
            os.close(fd)  # releases the lock if this call took it

    async def keep(self, lost: Callable[[str], None]) -> None:
        return  # the kernel keeps an flock for as long as its holder lives


class LeaseLock:
    """A lease row in the state database; see the module docstring."""

    def __init__(self, store: Store, service: str, who: Claimant, *, lease: float = LEASE,
                 renew: float = RENEW) -> None:
        if not 0 < renew < lease:
            raise ValueError(f"renew every {renew}s must be shorter than the lease of {lease}s")
        self.store, self.service, self.who = store, service, who
        self.lease, self.renew = lease, renew
        self._token: str | None = None
        self._confirmed = 0.0  # monotonic time before the last successful claim or renewal

    def try_acquire(self) -> bool:
        asked = time.monotonic()
        won, lease = self.store.claim_lease(self.service, self.who, seconds=self.lease,
                                            gone=self._gone)
        if won:
            self._token, self._confirmed = lease.token, asked
        return won

    def release(self) -> None:
        token, self._token = self._token, None
        if token is not None:
            self.store.release_lease(self.service, token)

    def holder(self) -> str | None:
        lease = self.store.lease(self.service)
        if lease is None or lease.expired or self._gone(lease):
            return None
        return describe(lease)

    async def keep(self, lost: Callable[[str], None]) -> None:
        while self._token is not None:
            await asyncio.sleep(self.renew)
            why = await asyncio.to_thread(self.renew_once)
            if why is not None:
                lost(why)
                return

    def renew_once(self) -> str | None:
        """Renew the lease now; why it is lost, or None while it is still ours."""
        token = self._token
        if token is None:
            return "the lock was released"
        asked = time.monotonic()
        try:
            lease = self.store.renew_lease(self.service, token, seconds=self.lease)
        except StoreError as exc:
            if time.monotonic() + self.renew < self._confirmed + self.lease:
                return None  # the lease still runs: try again next time
            return (f"the lease could not be renewed for {time.monotonic() - self._confirmed:.0f}s "
                    f"({exc}); another control plane may take it over")
        if lease is not None and lease.token == token:
            self._confirmed = asked
            return None
        self._token = None
        if lease is None:
            return "the lease was removed from the database"
        return f"the lease ended and was taken over by {describe(lease)}"

    def _gone(self, lease: Lease) -> bool:
        """True when the holder ran in this pid space and that very process is gone."""
        space = self.who.pid_space
        return (lease.token != self._token and bool(space) and lease.who.pid_space == space
                and not procs.is_running(lease.who.pid, lease.who.pid_start))


def describe(lease: Lease) -> str:
    """The lease's holder and the local time its lease ends: user@host pid N until HH:MM:SS."""
    return f"{lease.who.holder} until {time.strftime('%H:%M:%S', time.localtime(lease.expires_at))}"


def _flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
