"""Router-side feature toggles: the flag settings of a worker, compiled for the data path.

`PUT /flags` on the admin socket sends `{"state": <Unleash client API document>,
"revision": <the flag store's revision of that state>, "evaluate": [flag names], "header":
"X-Turnout-Flags"}`. `parse_settings` validates such a body, `FlagPlan.compile` turns it
into what a request needs, and `save_settings` / `load_settings` keep it in
`DIR/flags.json` so that a new worker starts with it. The revision orders pushes that
race (the CLI, `turnout server` and a deployment all push): the admin API refuses one
older than the settings in effect (`older_than`), and the saved file keeps it across
worker restarts.

Per request (only when some flag is evaluated) `FlagPlan.cohort` answers with a `Cohort`:
one combination of on/off results, with the header line to add upstream and counters per
revision. A request counts into one counters object however many flags are evaluated
(the one of its combination and revision, in place of its revision's); `Metrics.snapshot`
adds them up per revision and per flag cohort.
Results for a user key are cached while they depend on nothing else (no random stickiness,
no client address, no clock: see `key_only`); the cache belongs to one compiled plan, so a
new PUT starts it empty.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from turnout.files import write_atomic
from turnout.flags import FlagState, evaluate
from turnout.routers.proxy.metrics import RevisionCounters
from turnout.statedir import RouterFiles

DEFAULT_HEADER = "X-Turnout-Flags"
CACHE_MAX = 65_536
# a header name (RFC 9110 token) and a flag name that fits `name=on, name=off` unambiguously
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_FLAG_NAME = re.compile(r"^[^\s,=;\"\x00-\x1f\x7f]+$")
# headers the proxy frames itself or reads for routing: never a flags header
_RESERVED = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
    "upgrade", "content-length", "x-forwarded-for", "host", "cookie",
})
# what a result may depend on for it to be cached per user key
_KEY_ONLY_STRATEGIES = frozenset({
    "default", "userWithId", "flexibleRollout", "gradualRolloutUserId",
    "gradualRolloutSessionId", "applicationHostname",
})
_UNCACHEABLE_CONTEXT = frozenset({"currentTime", "remoteAddress"})

log = logging.getLogger("turnout.proxy")


class SettingsError(ValueError):
    """A `PUT /flags` body that cannot be taken; the message says which field."""


def empty_settings() -> dict[str, Any]:
    return {"state": {"version": 2, "features": [], "segments": []}, "revision": 0,
            "evaluate": [], "header": DEFAULT_HEADER}


def _revision(data: Mapping[str, Any], state: Mapping[str, Any], required: bool) -> int:
    """The body's `revision`: a whole number, the same as the state's `meta.revision` if any."""
    if "revision" not in data:
        if required:
            raise SettingsError("revision: required (the flag store's revision of this state)")
        return 0
    revision = data["revision"]
    if isinstance(revision, bool) or not isinstance(revision, int) or revision < 0:
        raise SettingsError(f"revision: must be a whole number >= 0, got {revision!r}")
    meta = state.get("meta")
    stated = meta.get("revision") if isinstance(meta, Mapping) else None
    if stated is not None and stated != revision:
        raise SettingsError(f"revision: {revision} but the state says meta.revision {stated!r}")
    return revision


def older_than(settings: Mapping[str, Any], current: Mapping[str, Any]) -> str | None:
    """Why `settings` must not replace `current` (an older revision), or None.

    An equal revision is taken: the same state pushed again, say with another `evaluate`.
    """
    new, old = int(settings["revision"]), int(current.get("revision", 0))
    if new < old:
        return (f"flag revision {new} is older than revision {old} in effect; "
                "push the flag store's current state")
    return None


def parse_settings(body: bytes, current: Mapping[str, Any], *,
                   revision_required: bool = True) -> tuple[dict[str, Any], FlagState]:
    """The new settings from a PUT body, and their state compiled.

    `evaluate` and `header` left out keep `current`'s. A file saved before revisions
    existed is read with `revision_required=False` (as revision 0).
    """
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SettingsError(f"body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SettingsError("body must be a JSON object")
    unknown = sorted(set(data) - {"state", "revision", "evaluate", "header"})
    if unknown:
        raise SettingsError(f"unknown fields: {', '.join(unknown)}")
    if "state" not in data:
        raise SettingsError("state: required")
    state = data["state"]
    if not isinstance(state, dict) or not isinstance(state.get("features"), list):
        raise SettingsError("state: must be an object with a 'features' list")
    revision = _revision(data, state, revision_required)
    compiled = FlagState.from_json(state)
    problems = compiled.problems
    if problems:
        raise SettingsError(f"state: {'; '.join(problems)}")
    names = data.get("evaluate", current["evaluate"])
    if not isinstance(names, list) or not all(
        isinstance(n, str) and _FLAG_NAME.match(n) for n in names
    ):
        raise SettingsError("evaluate: must be a list of flag names (no spaces, ',', '=' or ';')")
    if len(set(names)) != len(names):
        raise SettingsError("evaluate: names a flag twice")
    header = data.get("header", current["header"])
    if not isinstance(header, str) or not _TOKEN.match(header):
        raise SettingsError("header: must be an HTTP header name")
    if header.lower() in _RESERVED:
        raise SettingsError(f"header: {header} is used by the proxy itself")
    return {"state": state, "revision": revision, "evaluate": list(names),
            "header": header}, compiled


def key_only(state: Mapping[str, Any], names: Iterable[str]) -> bool:
    """True if the named flags' results depend on the user key alone (and the state).

    The proxy's context holds `userId` = `sessionId` = the key and `remoteAddress`; with a
    key present, strategies hashing or listing user/session ids are fixed per key, and
    constraints are too unless they read the clock or the address. Anything else (random
    stickiness, address strategies, strategies this list does not know) is not cached.
    """
    features = {f.get("name"): f for f in state.get("features", []) if isinstance(f, Mapping)}
    segments = {s.get("id"): s for s in state.get("segments") or [] if isinstance(s, Mapping)}
    todo: list[object] = list(names)
    seen: set[object] = set()
    while todo:
        name = todo.pop()
        feature = features.get(name)
        if name in seen or feature is None:
            continue
        seen.add(name)
        for dependency in feature.get("dependencies") or []:
            if isinstance(dependency, Mapping):
                todo.append(dependency.get("feature"))
        for strategy in feature.get("strategies") or []:
            if not _strategy_key_only(strategy, segments):
                return False
    return True


def _strategy_key_only(strategy: Any, segments: Mapping[Any, Any]) -> bool:
    if not isinstance(strategy, Mapping) or strategy.get("name") not in _KEY_ONLY_STRATEGIES:
        return False
    params = strategy.get("parameters") or {}
    if isinstance(params, Mapping) and params.get("stickiness") == "random":
        return False
    constraints = list(strategy.get("constraints") or [])
    for segment_id in strategy.get("segments") or []:
        segment = segments.get(segment_id)
        if isinstance(segment, Mapping):
            constraints += segment.get("constraints") or []
    return all(
        isinstance(c, Mapping) and c.get("contextName") not in _UNCACHEABLE_CONTEXT
        for c in constraints
    )


CountersOf = Callable[[tuple[str, ...], str], RevisionCounters]


class Cohort:
    """One combination of flag results: the upstream header line and counters per revision."""

    __slots__ = ("by_revision", "keys", "line", "source")

    def __init__(self, line: bytes, keys: tuple[str, ...], source: CountersOf) -> None:
        self.line = line
        self.keys = keys
        self.source = source
        self.by_revision: dict[str, RevisionCounters] = {}

    def counters(self, revision: str) -> RevisionCounters:
        """The counters of this combination's requests to `revision` ("" for no pool)."""
        found = self.by_revision.get(revision)
        if found is None:
            found = self.by_revision[revision] = self.source(self.keys, revision)
        return found


class FlagPlan:
    """Compiled flag settings; `cohort` runs per request (only if `names` is not empty)."""

    def __init__(
        self, settings: Mapping[str, Any], state: FlagState,
        counters: CountersOf,
    ) -> None:
        """`state` is `settings["state"]` compiled; `counters` gives a combination's counters
        for one revision (`Metrics.combo`)."""
        self.settings = settings
        self.state = state
        self.names: tuple[str, ...] = tuple(settings["evaluate"])
        self.header = str(settings["header"]).encode("ascii")
        self.lheader = self.header.lower()
        self.counters = counters
        self.cache: dict[bytes, Cohort] | None = (
            {} if key_only(settings["state"], self.names) else None
        )
        self.combos: dict[int, Cohort] = {}

    def cohort(self, key: bytes | None, peer: bytes) -> Cohort:
        """The results for a request with user key `key` from client address `peer`."""
        cache = self.cache
        if key is not None and cache is not None:
            found = cache.get(key)
            if found is not None:
                return found
        context: dict[str, Any] = {"remoteAddress": peer.decode("latin-1")}
        if key is not None:
            user = key.decode("utf-8", "replace")
            context["userId"] = context["sessionId"] = user
        state = self.state
        mask = 0
        for i, name in enumerate(self.names):
            if evaluate(state, name, context).enabled:
                mask |= 1 << i
        cohort = self.combos.get(mask) or self._combo(mask)
        if key is not None and cache is not None:
            if len(cache) >= CACHE_MAX:
                cache.clear()
            cache[key] = cohort
        return cohort

    def _combo(self, mask: int) -> Cohort:
        states = [(n, "on" if mask >> i & 1 else "off") for i, n in enumerate(self.names)]
        value = ", ".join(f"{n}={s}" for n, s in states)
        line = b"%s: %s\r\n" % (self.header, value.encode("utf-8"))
        keys = tuple(f"{n}:{s}" for n, s in states)
        cohort = self.combos[mask] = Cohort(line, keys, self.counters)
        return cohort


def save_settings(state_dir: Path, settings: Mapping[str, Any]) -> None:
    write_atomic(RouterFiles(state_dir).flags, json.dumps(settings).encode())


def load_settings(state_dir: Path) -> tuple[dict[str, Any], FlagState]:
    """The persisted settings, or empty ones when there are none (or they cannot be read)."""
    path = RouterFiles(state_dir).flags
    empty = empty_settings()
    try:
        return parse_settings(path.read_bytes(), empty, revision_required=False)
    except FileNotFoundError:
        pass
    except (OSError, SettingsError) as exc:
        log.error("ignoring unreadable %s: %s", path, exc)
    return empty, FlagState.from_json(empty["state"])
