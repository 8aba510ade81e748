"""The admin API: flags, segments and SDK metrics, for callers with an admin token.

Each route is a small coroutine that validates its body, runs one `FlagStore` call on
the database thread, and answers JSON. The store's errors become statuses here and
nowhere else: invalid definitions 400 with `{"problems": [...]}`, an unknown flag 404,
a version conflict (PUT with `If-Match: "<version>"`) or an existing name 409. The
audit's `who` is always the calling token's name.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote

from pydantic import BaseModel, ConfigDict, Field

from turnout.api.bodies import BodyError, MetricsBook, json_body, parse
from turnout.api.http import Request, Response, json_response, problems
from turnout.api.live import Gateway
from turnout.api.tokens import Caller
from turnout.errors import ConflictError, UserError
from turnout.flags.store import AuditRecord, FlagError, FlagNotFound, FlagRecord, FlagStore

PREFIX = "/api/admin/"
_FLAG = re.compile(r"^flags/([^/]+)(?:/(enable|disable|rollout|users|history))?$")


class RolloutBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    percent: int = Field(ge=0, le=100)
    stickiness: str | None = Field(default=None, min_length=1)  # left out: the strategy keeps its own


class UsersBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    users: list[str] = Field(min_length=1)


def record_json(record: FlagRecord) -> dict[str, Any]:
    return {"name": record.name, "version": record.version, "archived": record.archived,
            "updatedAt": record.updated_at, "definition": record.definition}


def audit_json(entry: AuditRecord) -> dict[str, Any]:
    return {"flag": entry.flag, "version": entry.version, "at": entry.at, "who": entry.who,
            "action": entry.action, "change": entry.change}


@dataclass(frozen=True)
class Admin:
    """Routes admin requests; `dispatch` returns None for a path it does not own."""

    store: FlagStore
    gateway: Gateway
    metrics: MetricsBook
    refresh: Callable[[], Awaitable[object]]  # re-reads the state after a change

    def dispatch(self, request: Request, caller: Caller) -> Awaitable[Response] | None:
        rest = request.path[len(PREFIX):]
        method = request.method
        change = method != "GET"
        if rest == "flags" and method in ("GET", "POST"):
            return self._guard(self._flags(request, caller), change=change)
        if rest == "segments" and method in ("GET", "POST"):
            return self._guard(self._segments(request, caller), change=change)
        if rest == "metrics" and method == "GET":
            return self._metrics()
        match = _FLAG.match(rest)
        if match is None:
            return None
        name, action = unquote(match.group(1)), match.group(2)
        route = _FLAG_ROUTES.get((method, action))
        if route is None:
            return None
        return self._guard(route(self, request, caller, name), change=change)

    async def _guard(self, work: Awaitable[Response], *, change: bool) -> Response:
        """Map store errors to statuses; after a change, serve the new state at once."""
        try:
            response = await work
            if change and response.status in (200, 201):
                await self.refresh()
            return response
        except BodyError as exc:
            return problems(400, exc.problems)
        except FlagNotFound as exc:
            return json_response(404, {"problems": [str(exc)]})
        except FlagError as exc:
            return problems(400, exc.problems)
        except ConflictError as exc:
            return json_response(409, {"problems": [str(exc)]})
        except UserError as exc:
            return problems(400, [str(exc)])

    async def _flags(self, request: Request, caller: Caller) -> Response:
        if request.method == "GET":
            archived = parse_qs(request.query).get("archived", ["false"])[0] == "true"
            records = await self.gateway.run(self.store.flags, archived=archived)
            return json_response(200, {"flags": [record_json(r) for r in records]})
        data = json_body(request.body)
        record = await self.gateway.run(self.store.create, data, who=caller.name)
        return json_response(201, record_json(record))

    async def _segments(self, request: Request, caller: Caller) -> Response:
        if request.method == "GET":
            segments = await self.gateway.run(self.store.segments)
            return json_response(200, {"segments": segments})
        data = json_body(request.body)
        segment = await self.gateway.run(self.store.put_segment, data, who=caller.name)
        return json_response(200, segment)

    async def _metrics(self) -> Response:
        return json_response(200, self.metrics.as_json())

    # -- one flag --------------------------------------------------------------------
    async def get(self, request: Request, caller: Caller, name: str) -> Response:
        record = await self.gateway.run(self.store.flag, name)
        if record is None:
            return json_response(404, {"problems": [f"flag {name!r} does not exist"]})
        return json_response(200, record_json(record))

    async def put(self, request: Request, caller: Caller, name: str) -> Response:
        data = json_body(request.body)
        expected = _expected_version(request.if_match)
        record = await self.gateway.run(self.store.update, name, data, who=caller.name,
                                        expected_version=expected)
        return json_response(200, record_json(record))

    async def enable(self, request: Request, caller: Caller, name: str) -> Response:
        record = await self.gateway.run(self.store.set_enabled, name, True, who=caller.name)
        return json_response(200, record_json(record))

    async def disable(self, request: Request, caller: Caller, name: str) -> Response:
        record = await self.gateway.run(self.store.set_enabled, name, False, who=caller.name)
        return json_response(200, record_json(record))

    async def rollout(self, request: Request, caller: Caller, name: str) -> Response:
        body = parse(RolloutBody, request.body)
        record = await self.gateway.run(self.store.set_rollout, name, body.percent,
                                        who=caller.name, stickiness=body.stickiness)
        return json_response(200, record_json(record))

    async def users(self, request: Request, caller: Caller, name: str) -> Response:
        body = parse(UsersBody, request.body)
        record = await self.gateway.run(self.store.add_users, name, body.users, who=caller.name)
        return json_response(200, record_json(record))

    async def archive(self, request: Request, caller: Caller, name: str) -> Response:
        record = await self.gateway.run(self.store.archive, name, who=caller.name)
        return json_response(200, record_json(record))

    async def history(self, request: Request, caller: Caller, name: str) -> Response:
        entries = await self.gateway.run(self.store.history, name)
        if not entries:  # every flag has at least its creation in the audit
            return json_response(404, {"problems": [f"flag {name!r} does not exist"]})
        return json_response(200, {"history": [audit_json(e) for e in entries]})


def _expected_version(if_match: str | None) -> int | None:
    if if_match is None:
        return None
    raw = if_match.strip().removeprefix("W/").strip('"')
    if not raw.isdigit():
        raise BodyError([f'If-Match: expected a flag version like "3", got {if_match!r}'])
    return int(raw)


Route = Callable[[Admin, Request, Caller, str], Awaitable[Response]]
_FLAG_ROUTES: dict[tuple[str, str | None], Route] = {
    ("GET", None): Admin.get,
    ("PUT", None): Admin.put,
    ("DELETE", None): Admin.archive,
    ("POST", "enable"): Admin.enable,
    ("POST", "disable"): Admin.disable,
    ("POST", "rollout"): Admin.rollout,
    ("POST", "users"): Admin.users,
    ("GET", "history"): Admin.history,
}
