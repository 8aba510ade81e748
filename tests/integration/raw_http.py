"""Raw HTTP over a socket, for tests that need exact bytes: versions, framing, hostile input."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass


@dataclass
class Reply:
    """What came back on one connection: the bytes, and whether the server closed it."""

    data: bytes
    closed: bool

    @property
    def status(self) -> int | None:
        if not self.data.startswith(b"HTTP/"):
            return None
        return int(self.data.split(b" ", 2)[1])

    @property
    def head(self) -> str:
        return self.data.split(b"\r\n\r\n", 1)[0].decode("latin-1")

    @property
    def body(self) -> bytes:
        return self.data.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in self.data else b""

    def header(self, name: str) -> str | None:
        for line in self.head.split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None


async def exchange(port: int, data: bytes, *, wait: float = 2.0, until_close: bool = True) -> Reply:
    """Send `data`, read until the server closes (or `wait` seconds of silence)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        with contextlib.suppress(ConnectionError):  # the server may answer and close before reading all
            await writer.drain()
        return await read_reply(reader, wait=wait, until_close=until_close)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def read_reply(reader: asyncio.StreamReader, *, wait: float, until_close: bool = True) -> Reply:
    """Read what arrives until EOF, or until `wait` seconds pass without a byte."""
    data = b""
    while True:
        try:
            chunk = await asyncio.wait_for(reader.read(65536), wait)
        except TimeoutError:
            return Reply(data, closed=False)
        except ConnectionError:  # reset, or a broken pipe noticed while reading
            return Reply(data, closed=True)
        if not chunk:
            return Reply(data, closed=True)
        data += chunk
        if not until_close and b"\r\n\r\n" in data:
            head = data.split(b"\r\n\r\n", 1)[0].lower()
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.startswith(b"content-length:")), None)
            if length is not None and len(data.split(b"\r\n\r\n", 1)[1]) >= length:
                return Reply(data, closed=False)


async def flood(
    port: int, prefix: bytes, *, most: int, byte: bytes = b"f", wait: float = 3.0
) -> tuple[Reply, int]:
    """Send `prefix`, then `byte` 64 KiB at a time until `most` bytes went out or the server
    stopped taking them (closed, reset, or no room for `wait` seconds); what came back, and
    how many bytes of filler were sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(prefix)
    sent = 0
    try:
        while sent < most:
            writer.write(byte * 65536)
            await asyncio.wait_for(writer.drain(), wait)
            sent += 65536
    except (ConnectionError, TimeoutError):
        pass
    try:
        return await read_reply(reader, wait=wait), sent
    finally:
        writer.close()
