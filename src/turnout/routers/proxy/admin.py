"""The admin API on the unix socket, and the table file a new worker starts from.

A tiny HTTP/1.1 handler on httptools (no framework):
`PUT /table` validates a `RoutingTable`, refuses (409) one older than the table in effect,
writes `table.json` durably (temp file, fsync, rename, fsync of the directory), swaps it in
and only then answers 200 with the table; `GET /table`, `GET /stats`, `GET /healthz`.
`PUT /flags` does the same for the flag settings (`flags.json`, see `proxy.flags`): 400 and
no change on a bad body, 409 for a flag revision older than the one in effect, else saved,
compiled, swapped in, and answered with the settings;
`GET /flags` answers the settings in effect.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import cast

from httptools import HttpParserError, HttpRequestParser
from pydantic import ValidationError

from turnout.files import write_atomic
from turnout.routers.proxy.flags import SettingsError, older_than, parse_settings, save_settings
from turnout.routers.proxy.state import Proxy
from turnout.routers.table import RoutingTable
from turnout.statedir import RouterFiles

MAX_BODY = 8 * 1024 * 1024
REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed",
           409: b"Conflict", 413: b"Content Too Large", 500: b"Internal Server Error"}

log = logging.getLogger("turnout.proxy")


def save_table(state_dir: Path, table: RoutingTable) -> None:
    """Write the table so that a crash leaves either the old or the new file, never half."""
    write_atomic(RouterFiles(state_dir).table, table.model_dump_json(indent=2).encode())


def load_table(state_dir: Path) -> RoutingTable:
    """The persisted table, or an empty one when there is none (or it cannot be read)."""
    path = RouterFiles(state_dir).table
    try:
        return RoutingTable.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return RoutingTable()
    except (OSError, ValidationError) as exc:
        log.error("ignoring unreadable %s: %s", path, exc)
        return RoutingTable()


class AdminConn(asyncio.Protocol):
    def __init__(self, proxy: Proxy, state_dir: Path) -> None:
        self.proxy = proxy
        self.state_dir = state_dir
        self.parser = HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []
        self.size = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except HttpParserError:
            self._respond(400, {"error": "malformed HTTP request"}, close=True)

    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []
        self.size = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size <= MAX_BODY:
            self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode()
        path = self.url.split(b"?", 1)[0].decode("latin-1")
        status: int
        payload: object
        if self.size > MAX_BODY:
            status, payload = 413, {"error": "body too large"}
        else:
            try:
                status, payload = self._handle(method, path, b"".join(self.body))
            except Exception as exc:
                log.exception("admin request failed")
                status, payload = 500, {"error": str(exc)}
        self._respond(status, payload, close=not self.parser.should_keep_alive())

    def _handle(self, method: str, path: str, body: bytes) -> tuple[int, object]:
        proxy = self.proxy
        if path == "/healthz":
            worker = proxy.metrics.worker
            return 200, {"ok": True, "worker": worker, "pid": os.getpid(), **proxy.addresses}
        if path == "/stats" and method == "GET":
            table = proxy.plan.table
            stats = proxy.metrics.snapshot(table.generation, table.backend_ids(), proxy.flags.names)
            proxy.metrics.save(self.state_dir)  # what anyone saw, a new worker starts from
            return 200, stats.model_dump(mode="json")
        if path == "/table" and method == "GET":
            return 200, proxy.plan.table.model_dump(mode="json")
        if path == "/table" and method == "PUT":
            return self._put_table(body)
        if path == "/flags" and method == "GET":
            return 200, proxy.flags.settings
        if path == "/flags" and method == "PUT":
            return self._put_flags(body)
        if path in ("/healthz", "/stats", "/table", "/flags"):
            return 405, {"error": f"{method} not allowed on {path}"}
        return 404, {"error": f"no such resource {path}"}

    def _put_table(self, body: bytes) -> tuple[int, object]:
        try:
            table = RoutingTable.model_validate_json(body)
        except ValidationError as exc:
            return 400, {"error": f"invalid routing table: {exc}"}
        current = self.proxy.plan.table.generation
        if table.generation < current:
            return 409, {"error": f"generation {table.generation} is older than {current}"}
        save_table(self.state_dir, table)
        self.proxy.swap(table)
        return 200, table.model_dump(mode="json")

    def _put_flags(self, body: bytes) -> tuple[int, object]:
        current = self.proxy.flags.settings
        try:
            settings, state = parse_settings(body, current)
        except SettingsError as exc:
            return 400, {"error": f"invalid flag settings: {exc}"}
        stale = older_than(settings, current)
        if stale is not None:
            return 409, {"error": stale, "revision": current.get("revision", 0)}
        save_settings(self.state_dir, settings)
        self.proxy.set_flags(settings, state)
        return 200, settings

    def _respond(self, status: int, payload: object, *, close: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        body = json.dumps(payload).encode()
        head = b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n" % (
            status,
            REASONS.get(status, b"Unknown"),
            len(body),
        )
        if close:
            head += b"Connection: close\r\n"
        self.transport.write(head + b"\r\n" + body)
        if close:
            self.transport.close()
