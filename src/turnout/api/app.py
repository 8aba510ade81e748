"""The routes of `turnout server`: which request gets which answer, and with which token.

Every `/api/` route needs `Authorization: <token>` or `Bearer <token>`; missing,
unknown or revoked → 401, a client token on an admin route → 403; an address with too
many 401s lately → 429 with Retry-After, token unchecked, see `turnout.api.guard`:

    GET  /api/client/features   the state document; ETag "<revision>", If-None-Match → 304
    POST /api/client/register   an SDK says hello (202)
    POST /api/client/metrics    an SDK's flag counts (202), summed on GET /api/admin/metrics
    GET  /api/client/stream     server-sent events: `state` now and on every change
    /api/admin/...              flags, segments, metrics (see `turnout.api.admin`)
    GET  /health                liveness, no token

`App.handle` answers the client routes synchronously from memory (the snapshot, the
token cache), which is what lets one core serve over ten thousand feature requests a
second; only a token not seen for a few seconds and the admin routes touch the store.
"""

from __future__ import annotations

import time

from turnout.api.admin import PREFIX as ADMIN_PREFIX
from turnout.api.admin import Admin
from turnout.api.bodies import BodyError, MetricsBook, MetricsReport, Registration, parse
from turnout.api.guard import FailedAuth
from turnout.api.http import Outcome, Request, Response, Stream, json_response, problems
from turnout.api.limits import DEFAULT, Limits
from turnout.api.live import Gateway, Live
from turnout.api.tokens import Caller, TokenCache, secret_of
from turnout.flags.store import FlagStore

_UNAUTHORIZED = problems(401, ["authorization: missing, unknown or revoked API token"])
_FORBIDDEN = problems(403, ["authorization: this route needs an admin token"])
_ACCEPTED = Response(202)
_SSE = b"Content-Type: text/event-stream\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\n"


def _not_found(request: Request) -> Response:
    return problems(404, [f"path: no route {request.method} {request.path}"])


class App:
    """Routes requests (see the module docstring)."""

    def __init__(self, store: FlagStore, gateway: Gateway, limits: Limits = DEFAULT) -> None:
        self.gateway = gateway
        self.metrics = MetricsBook()
        self.tokens = TokenCache(self._check_token)
        self.failures = FailedAuth(limit=limits.auth_failures, window=limits.auth_window,
                                   block=limits.auth_block)
        self.live = Live(store, gateway, on_change=self.tokens.clear)
        self.admin = Admin(store, gateway, self.metrics, self.live.load)
        self._store = store

    async def _check_token(self, secret: str) -> Caller | None:
        token = await self.gateway.run(self._store.check_token, secret)
        return None if token is None else Caller(token.name, token.kind)

    def handle(self, request: Request) -> Outcome:
        if not request.path.startswith("/api/"):
            if request.path in ("/health", "/healthz") and request.method in ("GET", "HEAD"):
                return json_response(200, {"health": "GOOD"})
            return _not_found(request)
        if self.failures.blocked and (wait := self.failures.retry_after(request.client)):
            return json_response(429, {"problems": [
                f"authorization: too many failed attempts from {request.client}; "
                f"retry in {wait} s"]}, b"Retry-After: %d\r\n" % wait)
        secret = secret_of(request.authorization)
        if secret is None:
            self.failures.failed(request.client)
            return _UNAUTHORIZED
        known, caller = self.tokens.cached(secret)
        if not known:
            return self._after_lookup(request, secret)
        if caller is None:
            self.failures.failed(request.client)
        return self._route(request, caller)

    async def _after_lookup(self, request: Request, secret: str) -> Response | Stream:
        caller = await self.tokens.lookup(secret)
        if caller is None:
            self.failures.failed(request.client)
        outcome = self._route(request, caller)
        return outcome if isinstance(outcome, Response | Stream) else await outcome

    def _route(self, request: Request, caller: Caller | None) -> Outcome:
        if caller is None:
            return _UNAUTHORIZED
        path, method = request.path, request.method
        if path == "/api/client/features" and method == "GET":
            snapshot = self.live.snapshot
            if snapshot is None:
                return problems(503, ["server: the flag state is not loaded yet"])
            return Response(200, raw=snapshot.answer(request.if_none_match, request.accept_gzip))
        if path.startswith(ADMIN_PREFIX):
            if caller.kind != "admin":
                return _FORBIDDEN
            work = self.admin.dispatch(request, caller)
            return _not_found(request) if work is None else work
        if path == "/api/client/stream" and method == "GET":
            return Stream(_SSE, self.live.subscribe)
        if path == "/api/client/register" and method == "POST":
            return self._accept(request, register=True)
        if path == "/api/client/metrics" and method == "POST":
            return self._accept(request, register=False)
        return _not_found(request)

    def _accept(self, request: Request, *, register: bool) -> Response:
        try:
            if register:
                self.metrics.register(parse(Registration, request.body), at=time.time())
            else:
                self.metrics.record(parse(MetricsReport, request.body), at=time.time())
        except BodyError as exc:
            return problems(400, exc.problems)
        return _ACCEPTED
