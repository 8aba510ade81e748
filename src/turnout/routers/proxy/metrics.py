"""Traffic counters of the proxy: per revision and flag cohort, in-flight per backend.

Counting is a handful of integer additions and one bisection over the bounds tuple per
request, on a counters object the exchange looked up once; the pydantic
`RouterStats` model is built only when the admin API asks for it. While the proxy
evaluates flags, a request counts into the counters of its (combination of flag results,
revision) pair instead, so it still counts into exactly one object however many flags
there are; the snapshot adds the pairs up per revision and per `<flag>:on|off` cohort.

Counters never go down: every snapshot the admin API hands out is first written to
`counters.json`, and a new worker starts from that file, so a reader comparing two
readings across a worker restart never sees a negative difference (what a crashed worker
counted after its last snapshot is lost, but nobody had seen it).
"""

from __future__ import annotations

import json
import logging
import secrets
from bisect import bisect_left
from pathlib import Path
from typing import Any

from turnout.files import write_atomic
from turnout.routers.base import LATENCY_BOUNDS, Counters, RouterStats, latency_buckets
from turnout.statedir import RouterFiles

# router-made answers that mean the instance could not be reached or heard from
UNREACHED = frozenset({502, 504})

log = logging.getLogger("turnout.proxy")


class RevisionCounters:
    """One revision's counters; exchanges hold a reference and count without lookups.

    `keys` are the flag cohorts of a combination's counters (None for a revision's own), so
    that a request retried on another revision finds its counters there (`Metrics.moved`).
    """

    __slots__ = ("errors", "keys", "latency", "local", "requests", "responses_5xx")

    def __init__(self, keys: tuple[str, ...] | None = None) -> None:
        self.keys = keys
        self.requests = 0
        self.responses_5xx = 0
        self.errors = 0
        self.latency = [0] * (len(LATENCY_BOUNDS) + 1)
        self.local: dict[int, int] = {}  # status -> answers the router made itself

    def response(self, status: int, seconds: float) -> None:
        """An answer from an instance."""
        if status >= 500:
            self.responses_5xx += 1
        self.latency[bisect_left(LATENCY_BOUNDS, seconds)] += 1

    def answered(self, status: int) -> None:
        """An answer the router made itself (see `Counters` for what each one counts as)."""
        self.local[status] = self.local.get(status, 0) + 1
        if status in UNREACHED:
            self.errors += 1
        elif status >= 500:
            self.responses_5xx += 1

    def add(self, other: RevisionCounters) -> None:
        self.requests += other.requests
        self.responses_5xx += other.responses_5xx
        self.errors += other.errors
        self.latency = [a + b for a, b in zip(self.latency, other.latency, strict=True)]
        for status, count in other.local.items():
            self.local[status] = self.local.get(status, 0) + count

    def counters(self) -> Counters:
        return Counters(
            requests=self.requests, responses_5xx=self.responses_5xx, connection_errors=self.errors,
            latency=list(self.latency), router_responses={str(k): v for k, v in sorted(self.local.items())},
        )

    def dump(self) -> list[Any]:
        return [self.requests, self.responses_5xx, self.errors, self.latency,
                {str(k): v for k, v in self.local.items()}]

    @classmethod
    def load(cls, data: list[Any]) -> RevisionCounters:
        counters = cls()
        requests, responses_5xx, errors, latency, local = data
        counters.requests, counters.responses_5xx = int(requests), int(responses_5xx)
        counters.errors = int(errors)
        counters.latency = latency_buckets([int(n) for n in latency])
        counters.local = {int(k): int(v) for k, v in local.items()}
        return counters


class Metrics:
    """Counters of the proxy; `worker` is a random id per worker start."""

    def __init__(self) -> None:
        self.worker = secrets.token_hex(6)
        self.revisions: dict[str, RevisionCounters] = {}  # read directly per request
        self.in_flight: dict[str, int] = {}
        # (cohort keys such as ("a:on", "b:off"), revision or "" without a pool) -> counters
        self.combos: dict[tuple[tuple[str, ...], str], RevisionCounters] = {}
        self.unrouted = RevisionCounters()

    def revision(self, revision: str) -> RevisionCounters:
        """The counters of `revision`, created on first use."""
        counters = self.revisions.get(revision)
        if counters is None:
            counters = self.revisions[revision] = RevisionCounters()
        return counters

    def combo(self, cohorts: tuple[str, ...], revision: str) -> RevisionCounters:
        """The counters of requests to `revision` in every one of `cohorts` (`<flag>:on|off`)."""
        counters = self.combos.get((cohorts, revision))
        if counters is None:
            counters = self.combos[cohorts, revision] = RevisionCounters(cohorts)
        return counters

    def moved(self, counters: RevisionCounters, revision: str) -> RevisionCounters:
        """The counters a request counting into `counters` counts into once it goes to
        `revision`: that revision's, or its flag combination's for that revision."""
        keys = counters.keys
        return self.revision(revision) if keys is None else self.combo(keys, revision)

    def begin(self, backend_id: str) -> None:
        self.in_flight[backend_id] = self.in_flight.get(backend_id, 0) + 1

    def end(self, backend_id: str) -> None:
        self.in_flight[backend_id] = self.in_flight.get(backend_id, 1) - 1

    def snapshot(
        self, generation: int, current_ids: set[str], flags: tuple[str, ...] = ()
    ) -> RouterStats:
        """Stats for the admin API; removed backends stay listed while requests are in flight.

        Both cohorts of every flag in `flags` (those evaluated now) are listed, if only as 0.
        """
        for backend_id in [k for k, v in self.in_flight.items() if v <= 0]:
            if backend_id not in current_ids:
                del self.in_flight[backend_id]
        in_flight = {backend_id: 0 for backend_id in current_ids}
        in_flight.update(self.in_flight)
        revisions = {name: RevisionCounters() for name in self.revisions}
        for name, c in self.revisions.items():
            revisions[name].add(c)
        cohorts = {f"{name}:{side}": RevisionCounters() for name in flags for side in ("on", "off")}
        for (keys, revision), c in self.combos.items():
            if revision:
                revisions.setdefault(revision, RevisionCounters()).add(c)
            for key in keys:
                cohorts.setdefault(key, RevisionCounters()).add(c)
        return RouterStats(
            worker=self.worker, generation=generation,
            revisions={k: v.counters() for k, v in revisions.items()}, in_flight=in_flight,
            cohorts={k: v.counters() for k, v in cohorts.items()}, unrouted=self.unrouted.counters(),
        )

    # --- persistence
    def save(self, state_dir: Path) -> None:
        """Write the counters beside the table (a crash leaves the old file or the new)."""
        data = {
            "revisions": {k: v.dump() for k, v in self.revisions.items()},
            "combos": [[list(keys), revision, c.dump()] for (keys, revision), c in self.combos.items()],
            "unrouted": self.unrouted.dump(),
        }
        write_atomic(RouterFiles(state_dir).counters, json.dumps(data).encode(), durable=False)

    def load(self, state_dir: Path) -> None:
        """Start from the counters a previous worker saved (nothing if there are none)."""
        path = RouterFiles(state_dir).counters
        try:
            data = json.loads(path.read_bytes())
            revisions = {str(k): RevisionCounters.load(v) for k, v in data["revisions"].items()}
            combos = {(tuple(str(k) for k in keys), str(revision)): RevisionCounters.load(c)
                      for keys, revision, c in data["combos"]}
            for (keys, _), c in combos.items():
                c.keys = keys
            unrouted = RevisionCounters.load(data["unrouted"])
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.error("ignoring unreadable %s: %s", path, exc)
            return
        self.revisions, self.combos, self.unrouted = revisions, combos, unrouted
