"""haproxy.cfg for turnout's services, rendered as text from what the router holds.

`render(Layout)` is pure and byte-stable: the same layout always gives the same bytes, so the
router can write the file after every change and compare what is written with what it holds.

Each service gets a frontend on its listen address (and one on its preview address) and
`POOLS` pool backends `<service>_p0..`, each with the same number of pre-declared server
slots `s0..`: HAProxy 2.6 is steered only through its runtime API (`set server ... addr`
and `state`), never by adding or deleting servers. A slot's address and state are written
here too, so a reload or a restart serves what the runtime API last set; an empty slot is
`disabled` at a placeholder address. A draining slot is written `disabled` as well: the
workers of a reload take no new request there, while the old ones finish theirs.

How requests pick a pool (the Lua and its map, `turnout.routers.haproxy.maps`) comes in as
lines: `Layout.global_lines`, `Service.frontend_lines` / `preview_lines` and `Pool.lines`. Without them a
frontend sends everything to its `default_pool` (or answers 503 when it has none).

Frontends keep idle keep-alive connections open through a reload (`option
idle-close-on-response`): the old worker closes each after answering its next request with
`Connection: close`, so no client loses a request it sent just as HAProxy closed an idle
connection. An old worker may thus stay until its last idle client comes back or times out.

The global section runs HAProxy in master-worker mode with a runtime API socket readable by
its owner only, and a server-state file that `turnout.routers.haproxy.process` fills just
before each reload. Defaults come from the routing table's timeouts and limits.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from turnout.addresses import join_host_port, split_host_port
from turnout.routers.haproxy.runtime import ServerAdmin
from turnout.routers.table import Limits, Timeouts

POOLS = 4
ADMIN_SOCKET = "admin.sock"
STATE_FILE = "server-state"
PLACEHOLDER = "127.0.0.1:1"  # where an empty slot points: nothing is sent there (disabled)
MAXREWRITE = 1024  # HAProxy's default tune.maxrewrite: room kept in the buffer for added headers
RETRIES = 3


@dataclass(frozen=True, slots=True)
class Slot:
    """One pre-declared server of a pool backend."""

    address: str | None = None  # host:port of the instance it carries; None: empty
    state: ServerAdmin = "maint"


@dataclass(frozen=True, slots=True)
class Pool:
    """A pool backend: the slots of one revision (or none); `revision` and `weight` are
    written as a comment, for whoever reads the file."""

    slots: tuple[Slot, ...]
    revision: str | None = None
    weight: int = 0
    lines: tuple[str, ...] = ()  # more lines of the backend (the Lua's latency timing)


@dataclass(frozen=True, slots=True)
class Health:
    """The health check of every slot: GET `path`, any 2xx is healthy (the spec's `health`)."""

    path: str = "/healthz"
    interval: float = 1.0
    timeout: float = 2.0
    fall: int = 3  # failed checks in a row that take a slot out
    rise: int = 2  # passed checks in a row that bring it back


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    listen: str
    pools: tuple[Pool, ...]
    preview_listen: str | None = None
    health: Health = Health()
    default_pool: int | None = None  # where requests go when no frontend lines route them
    preview_pool: int | None = None
    frontend_lines: tuple[str, ...] = ()
    preview_lines: tuple[str, ...] = ()

    def backend(self, pool: int) -> str:
        return backend_name(self.name, pool)


@dataclass(frozen=True, slots=True)
class Layout:
    """Everything haproxy.cfg says: the router's folder (sockets, state file), the routing
    table's limits and timeouts, and the services."""

    folder: Path
    services: tuple[Service, ...]
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: Limits = field(default_factory=Limits)
    buffer_requests: int | None = None
    trust_forwarded: bool = True
    global_lines: tuple[str, ...] = ()


def backend_name(service: str, pool: int) -> str:
    return f"{service}_p{pool}"


def slot_name(index: int) -> str:
    return f"s{index}"


def render(layout: Layout) -> str:
    """The whole haproxy.cfg; ValueError for what it cannot hold (a line break in a name)."""
    sections = [_global(layout), _defaults(layout)]
    for service in layout.services:
        sections.append(_frontend(layout, service, preview=False))
        if service.preview_listen is not None:
            sections.append(_frontend(layout, service, preview=True))
        sections += [_backend(service, index, pool) for index, pool in enumerate(service.pools)]
    return "".join(_section(head, lines) for head, lines in sections)


def _section(head: str, lines: Iterable[str]) -> str:
    body = "".join(f"    {_line(line)}\n" for line in lines)
    return f"{_line(head)}\n{body}\n"


def _line(text: str) -> str:
    if any(c in text for c in "\r\n\0"):
        raise ValueError(f"an HAProxy configuration line cannot hold a line break: {text!r}")
    return text


def _global(layout: Layout) -> tuple[str, list[str]]:
    limits, folder = layout.limits, layout.folder
    lines = [
        "master-worker",
        f"stats socket {word(str(folder / ADMIN_SOCKET))} mode 600 level admin",
        "stats timeout 30s",
        f"server-state-file {word(str(folder / STATE_FILE))}",
        f"maxconn {limits.max_connections}",
        f"tune.bufsize {max(16384, int(limits.max_header_size) + MAXREWRITE)}",
        f"tune.http.maxhdr {min(limits.max_headers, 32767)}",
        f"hard-stop-after {_ms(max(_all_timeouts(layout.timeouts)))}",
        *layout.global_lines,
    ]
    return "global", lines


def _all_timeouts(timeouts: Timeouts) -> list[float]:
    return [float(getattr(timeouts, name)) for name in Timeouts.model_fields]


def _defaults(layout: Layout) -> tuple[str, list[str]]:
    t = layout.timeouts
    lines = [
        "mode http",
        "option forwardfor",
        "option redispatch",
        "option idle-close-on-response",
        f"retries {RETRIES}",
        "retry-on conn-failure empty-response",
        "load-server-state-from-file global",
        f"timeout http-request {_ms(t.header)}",
        f"timeout http-keep-alive {_ms(t.idle)}",
        f"timeout client {_ms(max(t.body, t.send))}",
        f"timeout connect {_ms(t.connect)}",
        f"timeout queue {_ms(t.connect)}",
        f"timeout server {_ms(t.response)}",
        f"timeout tunnel {_ms(t.tunnel)}",
    ]
    if layout.buffer_requests is not None:
        lines.append("option http-buffer-request")
    return "defaults", lines


def _frontend(layout: Layout, service: Service, *, preview: bool) -> tuple[str, list[str]]:
    name = f"{service.name}_preview" if preview else service.name
    listen = service.preview_listen if preview else service.listen
    assert listen is not None
    lines = [f"bind {_bind(listen)}", f"maxconn {layout.limits.max_connections}"]
    lines += _forwarded(layout.trust_forwarded)
    routing = service.preview_lines if preview else service.frontend_lines
    pool = service.preview_pool if preview else service.default_pool
    lines += routing
    if not routing and pool is not None:
        lines.append(f"default_backend {service.backend(pool)}")
    return f"frontend {name}", lines


def _forwarded(trusted: bool) -> list[str]:
    """X-Forwarded-Proto and -Host as the builtin router sends them: a client's own are kept
    only when the table trusts them (X-Forwarded-For comes from `option forwardfor`)."""
    proto = "http-request set-header X-Forwarded-Proto http"
    host = "http-request set-header X-Forwarded-Host %[req.hdr(host)]"
    if not trusted:
        return [proto, host]
    return [f"{proto} unless {{ req.hdr(x-forwarded-proto) -m found }}",
            f"{host} unless {{ req.hdr(x-forwarded-host) -m found }}"]


def _backend(service: Service, index: int, pool: Pool) -> tuple[str, list[str]]:
    health = service.health
    lines = []
    if pool.revision is not None:
        lines.append(f"# revision {_comment(pool.revision)}, weight {pool.weight}")
    lines += [
        "balance roundrobin",
        "option httpchk",
        f"http-check send meth GET uri {word(health.path)}",
        "http-check expect rstatus ^2[0-9][0-9]$",
        f"timeout check {_ms(health.timeout)}",
        f"default-server check inter {_ms(health.interval)} fall {health.fall} rise {health.rise}",
    ]
    lines += pool.lines
    lines += [_server(i, slot) for i, slot in enumerate(pool.slots)]
    return f"backend {service.backend(index)}", lines


def _server(index: int, slot: Slot) -> str:
    address = PLACEHOLDER if slot.address is None else _address(slot.address)
    serving = slot.address is not None and slot.state == "ready"
    return f"server {slot_name(index)} {address}" + ("" if serving else " disabled")


def _address(text: str) -> str:
    host, port = split_host_port(text)
    return join_host_port(host, port)


def _bind(text: str) -> str:
    host, port = split_host_port(text)
    return join_host_port(host, port)


def _comment(text: str) -> str:
    return " ".join(text.split())


def _ms(seconds: float) -> str:
    return f"{max(1, round(float(seconds) * 1000))}ms"


def word(text: str) -> str:
    """`text` as one word of the configuration, as it is (single quotes: no escapes, no
    variables); ValueError for what single quotes cannot hold."""
    if "'" in text or any(c in text for c in "\r\n\0"):
        raise ValueError(f"an HAProxy configuration word cannot hold {text!r}")
    return f"'{text}'"
