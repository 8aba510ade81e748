"""How requests reach instances: the router chosen, user keys, and what the router holds
clients to (limits, timeouts, request buffering, forwarded headers, flags it evaluates).

The limits and timeouts are the router's own models (`turnout.routers.table`), so the spec
and the table the router reads cannot disagree about a field.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, Field, WithJsonSchema, field_validator

from turnout.routers.table import MIB, Limits, Timeouts
from turnout.spec.values import Strict, kind_schema, kind_shorthand
from turnout.units import Duration, parse_size

SOCKET_PATH_BYTES = 107  # what an AF_UNIX address holds on Linux


class Adopt(Strict):
    """An HAProxy the user already runs, of which turnout steers one backend (and nothing else)."""

    socket: str = Field(description="absolute path of its runtime API socket (`stats socket ... "
                        "level admin`)")
    backend: str = Field(description="the backend turnout owns: its servers are turnout's slots")
    config: str | None = Field(
        default=None, description="absolute path of its configuration file, whose `server` lines "
        "in that backend turnout keeps in step with the runtime changes (so a reload keeps the "
        "routing); default: only the running HAProxy changes",
    )

    @field_validator("socket", "config")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError(f"must be an absolute path, not {value!r}")
        return value

    @field_validator("socket")
    @classmethod
    def _fits(cls, value: str) -> str:
        if len(value.encode()) > SOCKET_PATH_BYTES:
            raise ValueError(f"a UNIX socket path holds at most {SOCKET_PATH_BYTES} bytes")
        return value

    @field_validator("backend")
    @classmethod
    def _name(cls, value: str) -> str:
        if not value or any(c.isspace() or c in "#'\"\\" for c in value):
            raise ValueError(f"not an HAProxy backend name: {value!r}")
        return value


class RouterChoice(Strict):
    """Which router carries users' requests. The kinds are those `turnout.wiring` knows; it
    refuses an unknown one, and a spec that needs what the chosen router cannot do."""

    kind: str = Field(default="builtin", description="builtin: turnout's own proxy process; "
                      "haproxy: an HAProxy that turnout configures, starts and steers (or, with "
                      "`adopt`, one the user runs)")
    host: str | None = Field(
        default=None, description="one of `platform.hosts` to run the router on, reached over "
        "SSH like them (`listen` is then an address of that host); default: this machine",
    )
    adopt: Adopt | None = Field(
        default=None, description="haproxy: steer one backend of an HAProxy already running "
        "(`{socket: ..., backend: ..., config: ...}`) instead of starting one",
    )


RouterField = Annotated[RouterChoice, BeforeValidator(kind_shorthand),
                        kind_schema("builtin: turnout's own proxy process; haproxy: an HAProxy "
                                    "that turnout configures, starts and steers")]


class UserKey(Strict):
    """How a request names its user: a header and/or a cookie (stickiness and targeting)."""

    header: str | None = Field(
        default="X-User-Id", description="request header holding the user key"
    )
    cookie: str | None = Field(default=None, description="cookie holding the user key")


DEFAULT_BUFFER = 8 * MIB


def parse_buffering(value: object) -> int | None:
    """`routing.buffer_requests`: false (stream bodies), true (up to 8 MiB) or a size."""
    if value is None or value is False:
        return None
    if value is True:
        return DEFAULT_BUFFER
    return parse_size(value)


BufferSize = Annotated[
    int | None,
    BeforeValidator(parse_buffering),
    WithJsonSchema(
        {"anyOf": [{"type": "boolean"}, {"type": "integer", "minimum": 0},
                   {"type": "string", "pattern": r"^\s*\d+\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$"}],
         "examples": [True, "16MiB"]},
        mode="validation",
    ),
]


class Routing(Strict):
    """How the router picks an instance for a request, and what it holds clients to."""

    user_key: UserKey = Field(default_factory=UserKey)
    preview_listen: str | None = Field(
        default=None,
        description="where blue-green tests reach the green fleet; default: listen port + 1",
    )
    flags: list[str] = Field(
        default_factory=list,
        description="flags the router evaluates for each request's user key and forwards to the app",
    )
    flags_header: str = Field(
        default="X-Turnout-Flags", description="the header that carries `name=on, other=off` to the app"
    )
    drain_timeout: Duration = Field(
        default=30.0, description="how long a removed instance may finish its in-flight requests"
    )
    limits: Limits = Field(default_factory=Limits, description="header size and count, connections")
    timeouts: Timeouts = Field(default_factory=Timeouts, description="clients, instances and tunnels")
    buffer_requests: BufferSize = Field(
        default=None,
        description="read whole request bodies before calling the instance (true: up to 8MiB, or a size; "
        "larger bodies get 413), for apps with few sync workers; default: stream them",
    )
    trust_forwarded: bool = Field(
        default=True,
        description="keep X-Forwarded-Proto and X-Forwarded-Host a client sent (a TLS terminator in front); "
        "false replaces them",
    )
