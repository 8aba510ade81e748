"""`HostLink` against a real SSH server on 127.0.0.1 (asyncssh's own, started by the test):
one connection reused, a connection lost under a command opened again, host keys checked,
an unreachable host said so (and answered from memory for a moment), a hung command cut."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
import pytest

from turnout.errors import PlatformError
from turnout.platforms.base import HostUnreachable
from turnout.platforms.ssh_link import HostLink, Login


@dataclass
class Server:
    port: int
    key: asyncssh.SSHKey
    connections: int = 0
    commands: list[str] = field(default_factory=list)
    drop_next: bool = False  # abort the connection under the next command
    hang: bool = False
    deaf: bool = False  # end every command at once with exit 1, its input unread


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key.write_private_key(str(tmp_path / "id"))
    (tmp_path / "id").chmod(0o600)
    state = Server(port=0, key=host_key)

    class Counting(asyncssh.SSHServer):
        def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
            state.connections += 1

    async def handle(process: asyncssh.SSHServerProcess[str]) -> None:
        state.commands.append(str(process.command))
        if state.drop_next:
            state.drop_next = False
            process.channel.get_connection().abort()
            return
        if state.hang:
            await asyncio.sleep(30)
        if state.deaf:
            process.exit(1)
            return
        process.stdout.write(f"ran {process.command}\n")
        process.exit(0)

    listener = await asyncssh.create_server(
        Counting, "127.0.0.1", 0, server_host_keys=[host_key],
        authorized_client_keys=asyncssh.import_authorized_keys(client_key.export_public_key().decode()),
        process_factory=handle,
    )
    state.port = listener.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        listener.close()
        await listener.wait_closed()


def login(tmp_path: Path, server: Server, *, known: asyncssh.SSHKey | None = None) -> Login:
    known_hosts = tmp_path / "known_hosts"
    key = (known or server.key).export_public_key().decode().strip()
    known_hosts.write_text(f"[127.0.0.1]:{server.port} {key}\n")
    return Login(user="deploy", identity=tmp_path / "id", known_hosts=known_hosts,
                 connect_timeout=3, command_timeout=2, parallel=4)


async def test_commands_share_one_connection_and_are_quoted_by_the_link(
    tmp_path: Path, server: Server,
) -> None:
    link = HostLink("web1", "127.0.0.1", server.port, login(tmp_path, server))
    try:
        outs = await asyncio.gather(*(link.run(["echo", f"it's $HOME {i}"]) for i in range(5)))
    finally:
        await link.aclose()
    assert all(o.ok for o in outs)
    assert server.connections == 1
    assert sorted(server.commands) == sorted(f"echo 'it'\"'\"'s $HOME {i}'" for i in range(5))


async def test_a_connection_lost_under_a_command_is_opened_again_once(
    tmp_path: Path, server: Server,
) -> None:
    link = HostLink("web1", "127.0.0.1", server.port, login(tmp_path, server))
    try:
        await link.run(["true"])
        server.drop_next = True
        out = await link.run(["echo", "again"])
        assert out.ok and out.stdout == "ran echo again\n"
        assert server.connections == 2 and server.commands[-2:] == ["echo again", "echo again"]
    finally:
        await link.aclose()


async def test_a_command_that_ends_without_reading_its_input_is_no_lost_connection(
    tmp_path: Path, server: Server,
) -> None:
    server.deaf = True  # as `cmp FILE -` of a FILE that is not there: it exits, input unread
    link = HostLink("web1", "127.0.0.1", server.port, login(tmp_path, server))
    try:
        outs = [await link.run(["cmp", "-s", "missing", "-"], stdin=b"x" * size)
                for size in (0, 10, 100_000, 2_000_000)]
    finally:
        await link.aclose()
    assert [o.status for o in outs] == [1, 1, 1, 1]
    assert server.connections == 1 and len(server.commands) == 4  # none sent again


async def test_an_unknown_host_key_is_refused_naming_the_host(tmp_path: Path, server: Server) -> None:
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    link = HostLink("web1", "127.0.0.1", server.port, login(tmp_path, server, known=stranger))
    with pytest.raises(PlatformError, match="host web1: its host key is not accepted") as caught:
        await link.run(["true"])
    assert not isinstance(caught.value, HostUnreachable)
    assert server.commands == []


@pytest.mark.serial  # answered from memory within 50 ms
async def test_an_unreachable_host_is_said_so_and_remembered_for_a_moment(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(str(tmp_path / "id"))
    link = HostLink("web9", "127.0.0.1", port, login(tmp_path, Server(port=port, key=key)))
    with pytest.raises(HostUnreachable, match="host web9: cannot connect") as first:
        await link.run(["true"])
    assert first.value.hosts == ("127.0.0.1",)
    began = time.monotonic()
    with pytest.raises(HostUnreachable):
        await link.run(["true"])
    assert time.monotonic() - began < 0.05  # answered from memory


async def test_a_command_that_hangs_is_cut_at_its_limit(tmp_path: Path, server: Server) -> None:
    link = HostLink("web1", "127.0.0.1", server.port, login(tmp_path, server))
    try:
        server.hang = True
        with pytest.raises(HostUnreachable, match=r"gave no answer within 0\.5s"):
            await link.run(["sleep", "100"], limit=0.5)
    finally:
        await link.aclose()
