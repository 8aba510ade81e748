"""What the demo app answers: its behaviour, fixed at start from DEMO_* variables, and `DemoApp`.

`Behaviour.from_env` reads the variables that make the app misbehave on purpose (see
`turnout.demo.app`); `DemoApp.answer` decides each request's status, body, delay and
version (the new code path of a feature toggle answers as `<version>+<flag>`), whether
it is never answered (a hang) and whether the process dies once it is sent (a crash),
and `render` writes it as HTTP/1.1. The faults that show in answers (`Faults`) are read
twice: `DEMO_*` for every request, `DEMO_FEATURE_*` for the new code path only.
Whether a request takes the new code path is the router's word (`X-Turnout-Flags`), or,
when `DemoApp` is given a `FlagEvaluator` (the process's flag client), the app's own
local evaluation of the flag for the request's `X-User-Id`, the header then ignored.
`DemoApp` also keeps the open connections, so a stop can drain them. No sockets here:
the connection protocol is `turnout.demo.app_connection`.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol
from urllib.parse import parse_qs

from turnout.demo.app_metrics import CHECKOUT_PATH, METRICS_PATH, AppMetrics

if TYPE_CHECKING:
    from turnout.demo.app_connection import AppConnection

FAIL_MODES = ("", "start", "health", "errors", "refuse", "hang")
FEATURE_FAIL_MODES = ("", "errors", "hang")  # also 1/true/yes (errors) and 0/false/no (none)
MAX_SLOW_MS = 60_000
_REASONS = {200: "OK", 400: "Bad Request", 500: "Internal Server Error"}


class FlagEvaluator(Protocol):
    """Evaluates a flag locally and at once (`turnout.flags.client.FlagClient` is one)."""

    def is_enabled(self, name: str, context: Mapping[str, str] | None = None, /) -> bool: ...


@dataclass(frozen=True, slots=True)
class Faults:
    """The faults of one code path that show in its answers."""

    fail: str = ""  # "errors": every answer 500; "hang": never answered
    error_rate: float = 0.0
    latency_s: float = 0.0
    crash_after: int = 0  # the process exits 1 after answering this many (0: never)

    @classmethod
    def from_env(cls, env: Mapping[str, str], prefix: str, fail: str = "") -> Faults:
        """Read `<prefix>ERROR_RATE`, `LATENCY_MS` and `CRASH_AFTER`; ValueError names a bad one."""
        return cls(fail, _rate(env, f"{prefix}ERROR_RATE"), _number(env, f"{prefix}LATENCY_MS") / 1000.0,
                   _count(env, f"{prefix}CRASH_AFTER"))


@dataclass(frozen=True, slots=True)
class Behaviour:
    """What this process answers, fixed at start from the environment."""

    version: str
    fail: str = ""
    error_rate: float = 0.0
    latency_s: float = 0.0
    startup_s: float = 0.0
    feature: str = ""  # a flag whose `on` (X-Turnout-Flags, or the app's evaluator) takes the new code path
    feature_faults: Faults = Faults()  # the new code path's own (DEMO_FEATURE_*)
    crash_after: int = 0  # exit 1 once this many requests other than /healthz were answered

    @property
    def faults(self) -> Faults:
        """The faults of every request (other than /healthz)."""
        fail = self.fail if self.fail in ("errors", "hang") else ""
        return Faults(fail, self.error_rate, self.latency_s, self.crash_after)

    @classmethod
    def from_env(cls, env: Mapping[str, str], version: str | None = None) -> Behaviour:
        """Read the DEMO_* variables; raises ValueError naming the bad variable."""
        fail = env.get("DEMO_FAIL", "").strip().lower()
        if fail not in FAIL_MODES:
            raise ValueError(f"DEMO_FAIL must be one of {', '.join(FAIL_MODES[1:])}; got {fail!r}")
        feature = env.get("DEMO_FEATURE", "").strip()
        feature_faults = Faults.from_env(env, "DEMO_FEATURE_", _feature_fail(env))
        if feature_faults != Faults() and not feature:
            raise ValueError("DEMO_FEATURE_FAIL, _ERROR_RATE, _LATENCY_MS and _CRASH_AFTER need "
                             "DEMO_FEATURE, the flag whose new code path they break")
        return cls(
            version=version or env.get("TURNOUT_VERSION") or "dev",
            fail=fail,
            error_rate=_rate(env, "DEMO_ERROR_RATE"),
            latency_s=_number(env, "DEMO_LATENCY_MS") / 1000.0,
            startup_s=_number(env, "DEMO_STARTUP_MS") / 1000.0,
            feature=feature,
            feature_faults=feature_faults,
            crash_after=_count(env, "DEMO_CRASH_AFTER"),
        )


def _feature_fail(env: Mapping[str, str]) -> str:
    raw = env.get("DEMO_FEATURE_FAIL", "").strip().lower()
    mode = {"1": "errors", "true": "errors", "yes": "errors", "0": "", "false": "", "no": ""}.get(raw, raw)
    if mode not in FEATURE_FAIL_MODES:
        raise ValueError(f"DEMO_FEATURE_FAIL must be one of {', '.join(FEATURE_FAIL_MODES[1:])} "
                         f"(or 1, true, yes for errors); got {raw!r}")
    return mode


def _rate(env: Mapping[str, str], name: str) -> float:
    rate = _number(env, name)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1; got {rate}")
    return rate


def _count(env: Mapping[str, str], name: str) -> int:
    """A whole number of requests, 1 or more; 0 when the variable is unset or empty."""
    raw = env.get(name, "").strip()
    if not raw:
        return 0
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{name} must be a whole number of requests, 1 or more; got {raw!r}")
    return int(raw)


def _number(env: Mapping[str, str], name: str) -> float:
    raw = env.get(name, "").strip()
    try:
        value = float(raw) if raw else 0.0
    except ValueError:
        raise ValueError(f"{name} must be a number; got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{name} must not be negative; got {raw!r}")
    return value


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: bytes
    user: str | None
    body_len: int
    keep_alive: bool
    flags: str = ""  # X-Turnout-Flags as the router sent it


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    delay_s: float = 0.0
    content_type: bytes = b"application/json"
    version: bytes = b""  # X-Version when it differs from the process's (the new code path)
    hang: bool = False  # never sent, nor anything after it on its connection
    crash: bool = False  # the process exits 1 once this answer is sent


class DemoApp:
    """Decides answers and tracks open connections for a graceful stop."""

    def __init__(
        self, behaviour: Behaviour, *, rng: random.Random | None = None,
        crash: Callable[[], object] | None = None, flags: FlagEvaluator | None = None,
    ) -> None:
        self.behaviour = behaviour
        self.crash = crash or _exit_now  # called once the answer that reached DEMO_CRASH_AFTER is sent
        self.answered = [0, 0]  # answers counted for DEMO_CRASH_AFTER, DEMO_FEATURE_CRASH_AFTER
        self.connections: set[AppConnection] = set()
        self.closing = False
        self.served = 0
        self.drained = asyncio.Event()  # set once closing and no connection is left
        self.refusing = asyncio.Event()  # DEMO_FAIL=refuse: set by the first passed health check
        self._rng = rng or random.Random()
        self._version_header = b"X-Version: " + behaviour.version.encode("latin-1") + b"\r\n"
        self.flags = flags  # given: it, not X-Turnout-Flags, says who takes the new code path
        # the process's own metrics also read DEMO_CHECKOUT_FAIL_RATE
        self.metrics = AppMetrics(behaviour.version, feature=behaviour.feature)

    def answer(self, request: Request) -> Answer:
        """The answer to `request`, counted in the app's metrics, which `/metrics` answers
        (neither it nor /healthz counts; nor an answer never sent, status 0)."""
        path = request.target.partition(b"?")[0]
        if path == METRICS_PATH:
            body, kind = self.metrics.exposition()
            return Answer(200, body, content_type=kind)
        new_path = path != b"/healthz" and self._takes_new_path(request)
        answer = self._decide(request, new_path)
        if path != b"/healthz" and answer.status:
            self.metrics.observe(answer.status, answer.delay_s, new_path)
            if path == CHECKOUT_PATH:
                answer = replace(answer, body=self.metrics.checkout(answer.status, answer.body))
        return answer

    def _takes_new_path(self, request: Request) -> bool:
        """Whether the feature is on for `request`: by the evaluator if the app has one (for
        the request's X-User-Id), else by the router's X-Turnout-Flags."""
        feature = self.behaviour.feature
        if not feature:
            return False
        if self.flags is not None:
            return self.flags.is_enabled(feature, {"userId": request.user} if request.user else {})
        return f"{feature}=on" in request.flags.replace(" ", "").split(",")

    def _decide(self, request: Request, new_path: bool) -> Answer:
        b = self.behaviour
        path, _, query = request.target.partition(b"?")
        if path == b"/healthz":
            if b.fail == "health":
                return Answer(500, b"unhealthy", content_type=b"text/plain")
            if b.fail == "refuse":
                self.refusing.set()  # this answer is the last one: serve() closes the listener
            return Answer(200, b"ok", content_type=b"text/plain")
        delay = 0.0
        if path == b"/slow":
            try:
                ms = float(parse_qs(query.decode("latin-1")).get("ms", ["0"])[0])
            except ValueError:
                return Answer(400, b'{"error": "ms must be a number"}')
            delay += min(max(ms, 0.0), MAX_SLOW_MS) / 1000.0
        version = b.version
        paths = [(0, b.faults, b'{"error": "injected failure"}')]
        if new_path:
            version = f"{b.version}+{b.feature}"  # the new code path says so in X-Version
            paths.insert(0, (1, b.feature_faults, b'{"error": "new code path failed"}'))
        if any(faults.fail == "hang" for _, faults, _ in paths):
            return Answer(0, b"", hang=True)
        delay += sum(faults.latency_s for _, faults, _ in paths)
        override = version.encode() if version != b.version else b""
        crash = any([self._crashes(faults, index) for index, faults, _ in paths])  # every path counts
        for _, faults, failure in paths:
            if faults.fail == "errors" or (faults.error_rate and self._rng.random() < faults.error_rate):
                return Answer(500, failure, delay, version=override, crash=crash)
        doc: dict[str, object] = {
            "version": version,
            "path": path.decode("latin-1"),
            "user": request.user,
        }
        if request.method not in ("GET", "HEAD"):
            doc["received"] = request.body_len
        return Answer(200, json.dumps(doc).encode(), delay, version=override, crash=crash)

    def render(self, request: Request, answer: Answer, *, close: bool) -> bytes:
        reason = _REASONS.get(answer.status, "Unknown")
        head = (
            f"HTTP/1.1 {answer.status} {reason}\r\nContent-Length: {len(answer.body)}\r\n".encode()
            + b"Content-Type: "
            + answer.content_type
            + b"\r\n"
            + (b"X-Version: " + answer.version + b"\r\n" if answer.version else self._version_header)
            + (b"Connection: close\r\n\r\n" if close else b"Connection: keep-alive\r\n\r\n")
        )
        return head if request.method == "HEAD" else head + answer.body

    def _crashes(self, faults: Faults, path: int) -> bool:
        """Count one answer on code path `path` (0: every request, 1: the new code path); True
        when it is the one its DEMO_*CRASH_AFTER names."""
        if not faults.crash_after:
            return False
        self.answered[path] += 1
        return self.answered[path] == faults.crash_after

    def sent(self, answer: Answer) -> None:
        """Called once `answer` was written: counts it, and dies after the one DEMO_CRASH_AFTER names."""
        self.served += 1
        if answer.crash:
            self.crash()

    def begin_shutdown(self) -> None:
        self.closing = True
        for conn in list(self.connections):
            conn.shutdown()
        self._check_drained()

    def forget(self, conn: AppConnection) -> None:
        self.connections.discard(conn)
        self._check_drained()

    def _check_drained(self) -> None:
        if self.closing and not self.connections:
            self.drained.set()


def _exit_now() -> None:
    """A crash: the process ends at once with status 1, connections cut, nothing drained."""
    print(f"turnout-demo-app pid={os.getpid()} crashing (DEMO_CRASH_AFTER reached)", flush=True)
    os._exit(1)
