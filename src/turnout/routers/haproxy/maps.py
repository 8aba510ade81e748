"""What HAProxy's Lua (`lua/turnout.lua`) reads and prints, computed and parsed in Python,
and the configuration lines that put the Lua in the path of a service's requests.

The Lua routes each request of a service by a plan it compiles from entries of one HAProxy
map (`maps/turnout.map`, exact string keys), and compiles again whenever the service's
version entry differs from the plan's; that entry is the only lookup per request. The
runtime API replaces the entries with `prepare map` / `add map @<ver>` / `commit map
@<ver>`, so a routing change is atomic and needs no reload. Entries of service `svc`
(service names never hold a `/`):

    svc               the version, `<generation>.<digest of the other entries>`
    svc/user          the user key: `h<header>` and/or `c<cookie>`
    svc/pools         `<end>=<backend>` per pool that takes a bucket range, in table order
    svc/preview       the backend the preview listener serves
    svc/rules         the number of match rules
    svc/rule/<i>      `b<backend>`, `h<header>`, `c<cookie>`, `n<chunks>` of rule i
    svc/rule/<i>/<j>  chunk j of rule i's values (`v<value>`) and user keys (`u<key>`)

Items are separated by commas and every free text is percent-encoded (RFC 3986's unreserved
characters stay as they are), so no key or value holds a space, a comma or an `=`; a chunk
stays under `CHUNK` characters, since HAProxy reads map lines and commands into 16 kB
buffers. Entries left out mean none: no pool, no user key, no preview, no rule.

The routing is the builtin router's (`turnout.routers.proxy.balancer.Plan`): pools without
backends or without weight take no bucket range, rules for revisions without backends never
match, and the first matching rule wins.

The Lua works as converters (Lua actions cost HAProxy far more per call): the frontend sets
the request's pool backend from `req.hdrs,lua.turnout_route(<svc>)`, each pool backend
times its answers with `lua.turnout_observe(<backend>)`, and the runtime API command
`turnout latency` prints the histograms, which `parse_stats` reads.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from urllib.parse import quote

from turnout.routers.base import LATENCY_BOUNDS
from turnout.routers.proxy.balancer import bucket_ends
from turnout.routers.table import MatchRule, RoutingTable

MAP_FOLDER = "maps"
MAP_FILE = "turnout.map"
MAP_FILES = (MAP_FILE,)
LUA_FILE = "turnout.lua"
MAP_ENV = "TURNOUT_MAP"  # the map's path, set in the global section before lua-load
BACKEND_VAR = "txn.turnout_backend"  # the pool backend the Lua chose for a request
START_VAR = "txn.turnout_start"  # when the request was routed, µs since the epoch
LATENCY_VAR = "txn.turnout_latency"  # µs from then to the answer's headers
STATS_COMMAND = "turnout latency"  # the runtime API command the Lua registers
CHUNK = 4000  # characters of one entry's value at most (a single item may exceed it)
BOUNDS_US = tuple(round(bound * 1_000_000) for bound in LATENCY_BOUNDS)


def lua_source() -> str:
    """The Lua program, as shipped in this package (the router copies it to its folder)."""
    return resources.files(__package__).joinpath("lua", LUA_FILE).read_text(encoding="utf-8")


def entries(service: str, table: RoutingTable, backends: dict[str, str]) -> dict[str, str]:
    """The map entries that make the Lua route `service` by `table`, each revision that has
    backends served by the pool backend `backends[revision]` (KeyError if it has none)."""
    if not service or any(c in service for c in "/, \t\n"):
        raise ValueError(f"a service name the map cannot hold: {service!r}")
    found: dict[str, str] = {}
    user = [f"h{_text(table.user_key.header.lower())}"] if table.user_key.header else []
    user += [f"c{_text(table.user_key.cookie)}"] if table.user_key.cookie else []
    if user:
        found[f"{service}/user"] = ",".join(user)
    ranged = [p for p in table.pools if p.backends and p.weight > 0]
    ends = bucket_ends([p.weight for p in ranged])
    if ranged:
        found[f"{service}/pools"] = ",".join(
            f"{end}={_text(backends[p.revision])}" for end, p in zip(ends, ranged, strict=True)
        )
    served = {p.revision for p in table.pools if p.backends}
    if table.preview is not None and table.preview in served:
        found[f"{service}/preview"] = _text(backends[table.preview])
    rules = [r for r in table.rules if r.revision in served]
    for index, rule in enumerate(rules):
        found.update(_rule_entries(f"{service}/rule/{index}", rule, backends[rule.revision]))
    if rules:
        found[f"{service}/rules"] = str(len(rules))
    digest = hashlib.sha256(repr(sorted(found.items())).encode()).hexdigest()[:16]
    found[service] = f"{table.generation}.{digest}"
    return found


def _rule_entries(prefix: str, rule: MatchRule, backend: str) -> dict[str, str]:
    items = [f"v{_text(v)}" for v in rule.values] + [f"u{_text(u)}" for u in rule.users]
    chunks: list[list[str]] = []
    size = CHUNK
    for item in items:
        if size + len(item) + 1 > CHUNK:
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += len(item) + 1
    head = [f"b{_text(backend)}"]
    head += [f"h{_text(rule.header.lower())}"] if rule.header else []
    head += [f"c{_text(rule.cookie)}"] if rule.cookie else []
    found = {prefix: ",".join([*head, f"n{len(chunks)}"])}
    found.update({f"{prefix}/{j}": ",".join(chunk) for j, chunk in enumerate(chunks)})
    return found


def _text(value: str) -> str:
    return quote(value.encode(), safe="")


def owned(service: str, key: str) -> bool:
    """Whether a map entry's key belongs to `service`."""
    return key == service or key.startswith(f"{service}/")


def merge(current: dict[str, str], service: str, new: dict[str, str]) -> dict[str, str]:
    """The whole map once `service`'s entries are `new`: other services' entries stay."""
    kept = {k: v for k, v in current.items() if not owned(service, k)}
    return {**kept, **new}


def map_text(found: dict[str, str]) -> str:
    """A map file holding `found`, one `key value` line each, sorted (byte-stable)."""
    return "".join(f"{key} {found[key]}\n" for key in sorted(found))


def lua_global_lines(folder: str) -> list[str]:
    """The global-section lines that load the Lua from `folder` (the router's state folder,
    holding `turnout.lua` and `maps/turnout.map`)."""
    base = folder.rstrip("/")
    return [
        f"setenv {MAP_ENV} {_config_word(f'{base}/{MAP_FOLDER}/{MAP_FILE}')}",
        f"lua-load {_config_word(f'{base}/{LUA_FILE}')}",
    ]


def frontend_lines(service: str, *, preview: bool = False) -> list[str]:
    """The lines of `service`'s frontend that route each request by the Lua; with `preview`,
    those of the frontend serving the preview listener instead.

    The request's pool backend lands in `BACKEND_VAR` (unset when no pool takes it: with no
    default_backend, HAProxy then answers 503), the time it was routed in `START_VAR`.
    """
    converter = "turnout_preview" if preview else "turnout_route"
    pick = f"{'str(-)' if preview else 'req.hdrs'},lua.{converter}({service})"
    return [
        f"http-request set-var({BACKEND_VAR}) {pick}",
        f"http-request set-var({START_VAR}) date(0,us)",
        f"use_backend %[var({BACKEND_VAR})]",
    ]


def backend_lines(backend: str) -> list[str]:
    """The line of pool backend `backend` that times each answer, from its request's routing
    to its headers, into the backend's latency histogram (and `LATENCY_VAR`, in µs).

    In the backend rather than the frontend, so that the Lua gets the backend's name as a
    constant instead of parsing it out of a string on every answer."""
    return [
        f"http-response set-var({LATENCY_VAR}) date(0,us),sub({START_VAR}),lua.turnout_observe({backend})",
    ]


def _config_word(text: str) -> str:
    """`text` as one word of HAProxy's configuration (single quotes keep it as it is)."""
    if "'" in text or "\n" in text:
        raise ValueError(f"a path HAProxy's configuration cannot hold: {text!r}")
    return f"'{text}'"


def parse_stats(text: str) -> dict[str, list[int]]:
    """The latency histograms per pool backend that `turnout latency` printed (counts in the
    buckets of LATENCY_BOUNDS, the last one above them). ValueError if the text is not that
    command's answer, or comes from a Lua with other bounds (an older turnout.lua)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or not lines[0].startswith("# turnout latency bounds_us "):
        raise ValueError(f"not an answer of {STATS_COMMAND!r}: {text[:200]!r}")
    bounds = tuple(int(word) for word in lines[0].split()[4:])
    if bounds != BOUNDS_US:
        raise ValueError(f"the Lua's latency bounds {bounds} are not turnout's {BOUNDS_US}")
    histograms: dict[str, list[int]] = {}
    for line in lines[1:]:
        name, *counts = line.split()
        if len(counts) != len(BOUNDS_US) + 1 or not all(c.isdigit() for c in counts):
            raise ValueError(f"a histogram line of {STATS_COMMAND!r} that does not parse: {line!r}")
        histograms[name] = [int(c) for c in counts]
    return histograms
