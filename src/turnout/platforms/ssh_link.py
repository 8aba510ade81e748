"""One SSH connection per host, opened on first use and kept for the whole command.

A `HostLink` runs argv lists on its host: the remote side of SSH takes one command line,
so each argument is quoted with `shlex.join` (the library does the quoting; no spec value is
ever pasted into a command string). Host keys are always checked against the spec's
`known_hosts` file: an unknown or changed key is refused, never accepted. At most
`parallel` commands run on one host at once. A connection lost under a command is opened
again and the command run once more (every command the platform sends is safe to repeat);
a second loss, a timeout or a refusal is a `PlatformError` that names the host.

asyncssh is imported when a host is first reached, not with this module: every command
imports the platforms, and most never open a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from turnout.errors import PlatformError
from turnout.platforms.base import HostUnreachable

if TYPE_CHECKING:
    import asyncssh

UNREACHABLE_FOR = 3.0  # seconds a failed connect is answered from memory, without trying again


@dataclass(frozen=True, slots=True)
class Output:
    """What a command printed and how it ended."""

    status: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.status == 0

    def reason(self) -> str:
        """The command's own words about a failure: its last line of stderr (else stdout)."""
        lines = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return lines[-1] if lines else f"exit status {self.status}"


@dataclass(frozen=True, slots=True)
class Login:
    """How to log in on every host of a spec."""

    user: str
    identity: Path | None  # None: the ssh-agent and the default keys
    known_hosts: Path
    connect_timeout: float
    command_timeout: float
    parallel: int


class HostLink:
    """The connection to one host (see the module docstring)."""

    def __init__(self, name: str, host: str, port: int, login: Login) -> None:
        self.name = name  # as the spec writes it: what errors show
        self.host = host
        self.port = port
        self.login = login
        self._conn: asyncssh.SSHClientConnection | None = None
        self._connecting = asyncio.Lock()
        self._slots = asyncio.Semaphore(login.parallel)
        self._failed: tuple[float, HostUnreachable] | None = None  # the last failed connect

    async def run(
        self, argv: Sequence[str], *, stdin: bytes | None = None, limit: float | None = None
    ) -> Output:
        """Run `argv` on the host and return its output, whatever its exit status."""
        import asyncssh
        command = shlex.join(argv)
        limit = self.login.command_timeout if limit is None else limit
        async with self._slots:
            for attempt in (1, 2):
                conn = await self._connection()
                try:
                    result = await asyncio.wait_for(_run(conn, command, stdin), limit)
                except TimeoutError:
                    self._forget(conn)
                    raise self._lost(
                        f"`{shlex.join(argv[:2])}` gave no answer within {limit:g}s") from None
                except (asyncssh.Error, OSError) as exc:
                    self._forget(conn)
                    if attempt == 2:
                        raise self._lost(f"connection lost: {_said(exc)}") from exc
                    continue
                if result.exit_status is None and result.exit_signal is None:
                    # The channel closed with no word of how the command ended: the
                    # connection went under it (asyncssh returns rather than raises here).
                    self._forget(conn)
                    if attempt == 2:
                        raise self._lost("connection lost under a command")
                    continue
                return Output(
                    status=result.exit_status if result.exit_status is not None else -1,
                    stdout=_text(result.stdout),
                    stderr=_text(result.stderr),
                )
        raise AssertionError("unreachable")  # pragma: no cover

    async def check(self, argv: Sequence[str], *, what: str, stdin: bytes | None = None,
                    limit: float | None = None) -> str:
        """Run `argv`; its stdout, or a PlatformError naming the host, `what` and the reason."""
        out = await self.run(argv, stdin=stdin, limit=limit)
        if not out.ok:
            raise PlatformError(f"host {self.name}: cannot {what}: {out.reason()}")
        return out.stdout

    async def connection(self) -> asyncssh.SSHClientConnection:
        """The open connection (opened again if it went down), for what is not a command:
        a forwarded socket, say. HostUnreachable or PlatformError as for a command."""
        return await self._connection()

    async def aclose(self) -> None:
        import asyncssh
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()
            with contextlib.suppress(TimeoutError, asyncssh.Error, OSError):
                await asyncio.wait_for(conn.wait_closed(), 2.0)

    # -- connecting ------------------------------------------------------------------
    async def _connection(self) -> asyncssh.SSHClientConnection:
        async with self._connecting:
            if self._conn is not None and self._conn.is_closed():
                self._conn = None  # went down between commands (keepalives gave up, say)
            if self._conn is None:
                loop = asyncio.get_running_loop()
                if self._failed is not None and loop.time() - self._failed[0] < UNREACHABLE_FOR:
                    raise self._failed[1]
                try:
                    self._conn = await self._connect()
                except HostUnreachable as exc:
                    self._failed = (loop.time(), exc)
                    raise
                self._failed = None
            return self._conn

    def _lost(self, why: str) -> HostUnreachable:
        return HostUnreachable(f"host {self.name}: {why}", hosts=(self.host,))

    def _forget(self, conn: asyncssh.SSHClientConnection) -> None:
        if self._conn is conn:
            self._conn = None
        conn.abort()

    async def _connect(self) -> asyncssh.SSHClientConnection:
        import asyncssh
        login = self.login
        keys: dict[str, object] = {}
        if login.identity is not None:  # this key alone; else the agent and the default keys
            keys = {"client_keys": [str(login.identity)], "agent_path": None}
        try:
            return await asyncio.wait_for(
                asyncssh.connect(
                    self.host, self.port, username=login.user,
                    known_hosts=str(login.known_hosts),
                    keepalive_interval=5, keepalive_count_max=3,
                    **keys,
                ),
                login.connect_timeout,
            )
        except TimeoutError:
            raise self._lost(f"no SSH connection within {login.connect_timeout:g}s") from None
        except asyncssh.HostKeyNotVerifiable as exc:
            raise PlatformError(
                f"host {self.name}: its host key is not accepted ({_said(exc)}): it is unknown to "
                f"or differs from {login.known_hosts}; check the key with the host's owner, "
                "then add it there"
            ) from exc
        except asyncssh.PermissionDenied as exc:
            how = f"the key {login.identity}" if login.identity else "the ssh-agent's keys"
            raise PlatformError(
                f"host {self.name}: {login.user} was refused with {how}"
            ) from exc
        except (asyncssh.Error, OSError) as exc:
            raise self._lost(f"cannot connect: {_said(exc)}") from exc
        except ValueError as exc:  # a key file asyncssh cannot read, say
            raise PlatformError(f"host {self.name}: cannot connect: {_said(exc)}") from exc


async def _run(conn: asyncssh.SSHClientConnection, command: str,
               stdin: bytes | None) -> asyncssh.SSHCompletedProcess:
    """`command` with `stdin` as its input, to its end. A command may end before it has read
    all its input (`cmp` of a file that is not there): the channel is then closed to what is
    left of it, which is no lost connection; its exit status says how it went."""
    process = await conn.create_process(command, encoding=None)
    if stdin is not None:
        with contextlib.suppress(BrokenPipeError):  # "Channel not open for sending"
            process.stdin.write(stdin)
            process.stdin.write_eof()
    return await process.wait(check=False)


def _said(exc: BaseException) -> str:
    text = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
    return str(text).strip() or type(exc).__name__


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)
