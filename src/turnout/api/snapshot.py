"""The state document of one revision, rendered once into every response that serves it.

`GET /api/client/features` is the hot path: SDKs poll it every few seconds, many at a
time. So when the revision changes, the document is encoded to JSON once, gzipped
once, and the complete 200 (plain and gzip) and 304 responses are built as bytes;
serving a request is then a header comparison and one `transport.write`. The same
snapshot gives the server-sent event that carries the state to streams.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from typing import Any

from turnout.api.http import render

_JSON = b"Content-Type: application/json\r\n"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Pre-rendered answers for one revision of the state document."""

    revision: int
    etag: bytes
    body: bytes
    plain: bytes  # 200, identity encoding, keep-alive
    gzipped: bytes  # 200, gzip encoding, keep-alive
    not_modified: bytes  # 304, keep-alive
    event: bytes  # one server-sent event "state"

    @classmethod
    def build(cls, state: dict[str, Any]) -> Snapshot:
        revision = int(state.get("meta", {}).get("revision", 0))
        etag = b'"%d"' % revision
        body = json.dumps(state, separators=(",", ":"), ensure_ascii=False).encode()
        packed = gzip.compress(body, compresslevel=6, mtime=0)
        common = b"ETag: " + etag + b"\r\nCache-Control: no-cache\r\nVary: Accept-Encoding\r\n"
        return cls(
            revision=revision,
            etag=etag,
            body=body,
            plain=render(200, body, _JSON + common),
            gzipped=render(200, packed, _JSON + b"Content-Encoding: gzip\r\n" + common),
            not_modified=b"HTTP/1.1 304 Not Modified\r\n" + common + b"Connection: keep-alive\r\n\r\n",
            event=b"event: state\ndata: " + body + b"\n\n",
        )

    def matches(self, if_none_match: bytes) -> bool:
        """Whether an If-None-Match header names this revision (weak tags and lists too)."""
        if if_none_match == self.etag or if_none_match.strip() == b"*":
            return True
        tags = (raw.strip() for raw in if_none_match.split(b","))
        return any(tag.removeprefix(b"W/") == self.etag for tag in tags)

    def answer(self, if_none_match: bytes | None, accept_gzip: bool) -> bytes:
        """The keep-alive response bytes for a GET with these headers."""
        if if_none_match is not None and self.matches(if_none_match):
            return self.not_modified
        return self.gzipped if accept_gzip else self.plain
