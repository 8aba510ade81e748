"""A fast benchmark upstream: uvloop + httptools, one static keep-alive response
(and 16 MiB for a path starting with /big, for tests of clients that do not read).

Usage: python bench/upstream.py [--port 0]   (prints the bound port on its first line)
"""

from __future__ import annotations

import argparse
import asyncio

import uvloop
from httptools import HttpParserError, HttpRequestParser

BODY = b"hello from the benchmark upstream\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
    % (len(BODY), BODY)
)

BIG = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (16 * 2**20, b"b" * 16 * 2**20)


class Static(asyncio.Protocol):
    def __init__(self) -> None:
        self.big = False
        self.parser = HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.big = url.startswith(b"/big")

    def on_message_complete(self) -> None:
        assert self.transport is not None
        self.transport.write(BIG if self.big else RESPONSE)
        if not self.parser.should_keep_alive():
            self.transport.close()


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Static, "127.0.0.1", port, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    uvloop.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
