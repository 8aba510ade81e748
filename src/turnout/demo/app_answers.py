"""What the demo app answers: its behaviour, fixed at start from DEMO_* variables, and `DemoApp`.

`Behaviour.from_env` reads the variables that make the app misbehave on purpose (see
`turnout.demo.app`); `DemoApp.answer` decides each request's status, body, delay and
version (the new code path of a feature toggle answers as `<version>+<flag>`), and
`render` writes it as HTTP/1.1. `DemoApp` also keeps the open connections, so a stop can
drain them. No sockets here: the connection protocol is
`turnout.demo.app_connection`.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from turnout.demo.app_metrics import CHECKOUT_PATH, METRICS_PATH, AppMetrics

if TYPE_CHECKING:
    from turnout.demo.app_connection import AppConnection

FAIL_MODES = ("", "start", "health", "errors", "refuse")
MAX_SLOW_MS = 60_000
_REASONS = {200: "OK", 400: "Bad Request", 500: "Internal Server Error"}


@dataclass(frozen=True, slots=True)
class Behaviour:
    """What this process answers, fixed at start from the environment."""

    version: str
    fail: str = ""
    error_rate: float = 0.0
    latency_s: float = 0.0
    startup_s: float = 0.0
    feature: str = ""  # a flag whose `on` (X-Turnout-Flags from the router) takes the new code path
    feature_fail: bool = False  # the new code path answers 500

    @classmethod
    def from_env(cls, env: Mapping[str, str], version: str | None = None) -> Behaviour:
        """Read the DEMO_* variables; raises ValueError naming the bad variable."""
        fail = env.get("DEMO_FAIL", "").strip().lower()
        if fail not in FAIL_MODES:
            raise ValueError(f"DEMO_FAIL must be one of {', '.join(FAIL_MODES[1:])}; got {fail!r}")
        rate = _number(env, "DEMO_ERROR_RATE")
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"DEMO_ERROR_RATE must be between 0 and 1; got {rate}")
        return cls(
            version=version or env.get("TURNOUT_VERSION") or "dev",
            fail=fail,
            error_rate=rate,
            latency_s=_number(env, "DEMO_LATENCY_MS") / 1000.0,
            startup_s=_number(env, "DEMO_STARTUP_MS") / 1000.0,
            feature=env.get("DEMO_FEATURE", "").strip(),
            feature_fail=env.get("DEMO_FEATURE_FAIL", "").strip() in ("1", "true", "yes"),
        )


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


class DemoApp:
    """Decides answers and tracks open connections for a graceful stop."""

    def __init__(self, behaviour: Behaviour, *, rng: random.Random | None = None) -> None:
        self.behaviour = behaviour
        self.connections: set[AppConnection] = set()
        self.closing = False
        self.served = 0
        self.drained = asyncio.Event()  # set once closing and no connection is left
        self.refusing = asyncio.Event()  # DEMO_FAIL=refuse: set by the first passed health check
        self._rng = rng or random.Random()
        self._version_header = b"X-Version: " + behaviour.version.encode("latin-1") + b"\r\n"
        self.metrics = AppMetrics(behaviour.version)  # the process's own reads DEMO_CHECKOUT_FAIL_RATE

    def answer(self, request: Request) -> Answer:
        """The answer to `request`, counted in the app's metrics, which `/metrics` answers
        (neither it nor /healthz counts; nor an answer never sent, status 0)."""
        path = request.target.partition(b"?")[0]
        if path == METRICS_PATH:
            body, kind = self.metrics.exposition()
            return Answer(200, body, content_type=kind)
        answer = self._decide(request)
        if path != b"/healthz" and answer.status:
            self.metrics.observe(answer.status, answer.delay_s)
            if path == CHECKOUT_PATH:
                answer = replace(answer, body=self.metrics.checkout(answer.status, answer.body))
        return answer

    def _decide(self, request: Request) -> Answer:
        b = self.behaviour
        path, _, query = request.target.partition(b"?")
        if path == b"/healthz":
            if b.fail == "health":
                return Answer(500, b"unhealthy", content_type=b"text/plain")
            if b.fail == "refuse":
                self.refusing.set()  # this answer is the last one: serve() closes the listener
            return Answer(200, b"ok", content_type=b"text/plain")
        delay = b.latency_s
        if path == b"/slow":
            try:
                ms = float(parse_qs(query.decode("latin-1")).get("ms", ["0"])[0])
            except ValueError:
                return Answer(400, b'{"error": "ms must be a number"}')
            delay += min(max(ms, 0.0), MAX_SLOW_MS) / 1000.0
        version = b.version
        if b.feature and f"{b.feature}=on" in request.flags.replace(" ", "").split(","):
            version = f"{b.version}+{b.feature}"  # the new code path says so in X-Version
            if b.feature_fail:
                return Answer(500, b'{"error": "new code path failed"}', delay, version=version.encode())
        if b.fail == "errors" or (b.error_rate and self._rng.random() < b.error_rate):
            return Answer(500, b'{"error": "injected failure"}', delay)
        doc: dict[str, object] = {
            "version": version,
            "path": path.decode("latin-1"),
            "user": request.user,
        }
        if request.method not in ("GET", "HEAD"):
            doc["received"] = request.body_len
        override = version.encode() if version != b.version else b""
        return Answer(200, json.dumps(doc).encode(), delay, version=override)

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
