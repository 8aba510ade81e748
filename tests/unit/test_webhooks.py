"""Webhooks on the executor's fake world (tests/unit/test_executor.py), the hooks answered by
a receiver behind httpx's MockTransport; and `call` against real sockets on 127.0.0.1, for
what only a real connection shows (a server that never answers, a closed port).

Each `when` is driven to its outcomes: a gate that answers 2xx lets the deployment go on,
anything else fails it (before anything starts, or by rolling back), a retried gate
records every attempt, `turnout abort` ends a hanging call at once, the rollback hook is
told after a rollback, and the event hook gets the stored events in order without ever
holding the deployment up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.unit.test_executor import SPEC, World, finish, first_release, until  # the fake world

from turnout.engine.webhooks import SENT, call
from turnout.plan import Promote, Route, describe, load_plan
from turnout.spec import Spec
from turnout.spec.webhooks import Webhook
from turnout.store.db import Store
from turnout.testing import FakeClock, FakePlatform, FakeRouter, Journal

pytestmark = pytest.mark.timeout(30)

HOOKS = "http://hooks.test"
TWO_ROUTES: dict[str, Any] = {"kind": "canary", "steps": [{"weight": 34}, {"weight": 100}]}


class Receiver:
    """The far end of every webhook: answers by path and keeps each call in order.

    `answers[path]` are the statuses given in turn (the last one repeats, default 200);
    a path in `hang` never answers, one in `refuse` refuses the connection; `look` is
    called at each call and its result kept beside the body (what the world was then).
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], Any]] = []
        self.answers: dict[str, list[int]] = {}
        self.hang: set[str] = set()
        self.refuse: set[str] = set()
        self.look: Callable[[], Any] = lambda: None

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path in self.refuse:
            raise httpx.ConnectError("connection refused", request=request)
        assert request.headers["content-type"] == "application/json"
        self.calls.append((path, json.loads(request.content), self.look()))
        if path in self.hang:
            await asyncio.sleep(3600)
        statuses = self.answers.get(path, [200])
        status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
        return httpx.Response(status, text="ok" if status < 300 else "not approved: change freeze")

    def paths(self) -> list[str]:
        return [path for path, _, _ in self.calls]

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [body for p, body, _ in self.calls if p == path]


def client(platform: FakePlatform, receiver: Receiver) -> httpx.AsyncClient:
    """The fake instances answer as in `fake_http`; hooks.test is the receiver."""

    async def handle(request: httpx.Request) -> httpx.Response:
        if request.url.host == "hooks.test":
            return await receiver(request)
        instance = platform.at_port(request.url.port or 80)
        if instance is None:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(platform.health_status(instance), text=instance.id)

    return httpx.AsyncClient(transport=httpx.MockTransport(handle))


@pytest.fixture
def receiver() -> Receiver:
    return Receiver()


@pytest.fixture
async def world(tmp_path: Path, receiver: Receiver) -> AsyncIterator[World]:
    clock, journal = FakeClock(), Journal()
    platform = FakePlatform(journal=journal)
    store = Store.open(f"sqlite:///{tmp_path}/s.db", now=clock.wall)
    async with client(platform, receiver) as http:
        yield World(Spec.model_validate(SPEC), store, clock, platform, FakeRouter(journal=journal),
                    journal, http)
    store.close()
    assert journal.stopped_while_routed == [], "an instance was stopped while still routed"


def hook(when: str, path: str, **more: Any) -> dict[str, Any]:
    return {"when": when, "url": f"{HOOKS}{path}", **more}


ALL = [hook("pre-rollout", "/pre"), hook("confirm-rollout", "/rollout"),
       hook("confirm-promotion", "/promotion"), hook("rollback", "/rollback")]


def attempts(w: World, deployment_id: int) -> list[tuple[str, int | None, bool]]:
    """The stored webhook events: (when, status, ok), in order."""
    return [(e.data["when"], e.data.get("status"), e.data["ok"])
            for e in w.store.events(deployment_id, kind="webhook")]


# -- gates that answer 2xx ---------------------------------------------------------------

async def test_each_gate_is_asked_at_its_point_and_2xx_lets_the_deployment_go_on(
    world: World, receiver: Receiver
) -> None:
    await first_release(world)
    receiver.look = world.router.shares
    done = await world.deploy("v2", **TWO_ROUTES, webhooks=ALL)
    assert done.phase == "succeeded", done.message
    plan = load_plan(done.plan)
    routes = [n for n, step in enumerate(plan, 1) if isinstance(step, Route)]
    promote = next(n for n, step in enumerate(plan, 1) if isinstance(step, Promote))
    assert receiver.paths() == ["/pre", *["/rollout"] * len(routes), "/promotion"]  # no /rollback

    pre = receiver.bodies("/pre")[0]
    assert pre == {"when": "pre-rollout", "deployment": done.id, "service": "shop", "version": "v2",
                   "target_revision": world.rev("v2"), "previous_revision": world.rev("v1"),
                   "strategy": "canary", "phase": "progressing", "step": 1, "total": len(plan),
                   "step_description": describe(plan[0])}
    rollouts = receiver.bodies("/rollout")
    assert [b["step"] for b in rollouts] == routes
    assert [b["step_description"] for b in rollouts] == [describe(plan[n - 1]) for n in routes]
    assert receiver.bodies("/promotion")[0]["step"] == promote
    # Each confirm-rollout came before its change of traffic: v1 still had it all, then 66%.
    seen = [look for path, _, look in receiver.calls if path == "/rollout"]
    assert seen == [{"v1": 100.0}, {"v2": 34.0, "v1": 66.0}, {"v2": 100.0}]
    assert attempts(world, done.id) == [("pre-rollout", 200, True), *[("confirm-rollout", 200, True)] * 3,
                                        ("confirm-promotion", 200, True)]
    assert all(e.data["seconds"] >= 0 for e in world.store.events(done.id, kind="webhook"))


async def test_a_retried_gate_that_answers_2xx_at_last_goes_on_with_every_attempt_recorded(
    world: World, receiver: Receiver
) -> None:
    await first_release(world)
    receiver.answers["/promotion"] = [500, 409, 204]
    began = world.clock.now()
    done = await world.deploy("v2", **TWO_ROUTES,
                              webhooks=[hook("confirm-promotion", "/promotion", retries=2)])
    assert done.phase == "succeeded", done.message
    assert attempts(world, done.id) == [("confirm-promotion", 500, False),
                                        ("confirm-promotion", 409, False), ("confirm-promotion", 204, True)]
    messages = [e.message for e in world.store.events(done.id, kind="webhook")]
    assert "HTTP 500 (not approved: change freeze)" in messages[0] and "attempt 1 of 3" in messages[0]
    assert world.clock.now() - began >= 2.0  # a pause between attempts, on the injected clock


# -- gates that refuse -------------------------------------------------------------------

async def test_a_refused_pre_rollout_fails_the_deployment_before_anything_starts(
    world: World, receiver: Receiver
) -> None:
    await first_release(world)
    tables = len(world.router.tables)
    receiver.answers["/pre"] = [503]
    done = await world.deploy("v2", **TWO_ROUTES, webhooks=ALL)
    assert done.phase == "failed"
    assert done.message.startswith(f"pre-rollout webhook {HOOKS}/pre refused: HTTP 503")
    assert receiver.paths() == ["/pre"]  # nothing to confirm, nothing rolled back
    assert world.platform.starts("v2") == 0 and len(world.router.tables) == tables
    assert world.router.shares() == {"v1": 100.0} and world.store.stable("shop") == world.rev("v1")
    assert [e.kind for e in world.events][-1] == "failed"


async def test_a_pre_rollout_that_passed_is_not_asked_again_when_the_deployment_resumes(
    world: World, receiver: Receiver
) -> None:
    await first_release(world)
    record = await world.create("v2", **TWO_ROUTES, webhooks=ALL)
    # An earlier run passed pre-rollout, then died before its first step was stored.
    world.store.add_event(record.id, step=-1, kind="webhook", message="passed",
                          data={"when": "pre-rollout", "ok": True, "status": 200})
    done = await world.executor().run(record)
    assert done.phase == "succeeded", done.message
    assert "/pre" not in receiver.paths()


async def test_a_refused_confirm_rollout_rolls_back_before_the_traffic_moves(
    world: World, receiver: Receiver
) -> None:
    await first_release(world)
    receiver.refuse.add("/rollout")
    done = await world.deploy("v2", **TWO_ROUTES, webhooks=ALL)
    assert done.phase == "failed"
    assert f"confirm-rollout webhook {HOOKS}/rollout refused: cannot connect" in done.message
    assert all(t.weights().get(world.rev("v2"), 0) == 0 for t in world.router.tables)
    assert world.router.shares() == {"v1": 100.0} and world.running("v2") == []
    assert receiver.paths() == ["/pre", "/rollback"]  # a refused connection reaches no body
    assert attempts(world, done.id)[1:] == [("confirm-rollout", None, False), ("rollback", 200, True)]


async def test_a_refused_confirm_promotion_rolls_back_and_the_rollback_hook_is_told(
    world: World, receiver: Receiver
) -> None:
    await first_release(world)
    receiver.answers["/promotion"] = [403]
    done = await world.deploy("v2", **TWO_ROUTES, webhooks=[
        *ALL[:2], hook("confirm-promotion", "/promotion", retries=1), ALL[3]])
    assert done.phase == "failed"
    assert "confirm-promotion webhook" in done.message and "HTTP 403" in done.message
    assert "(2 attempts)" in done.message
    assert world.router.shares() == {"v1": 100.0} and world.running("v2") == []
    assert world.store.stable("shop") == world.rev("v1")
    assert receiver.paths()[-3:] == ["/promotion", "/promotion", "/rollback"]
    told = receiver.bodies("/rollback")[0]
    assert told["when"] == "rollback" and told["phase"] == "failed" and told["message"] == done.message
    assert attempts(world, done.id)[-3:] == [("confirm-promotion", 403, False),
                                             ("confirm-promotion", 403, False), ("rollback", 200, True)]


@pytest.mark.serial  # failed within 3 s
async def test_a_gate_that_never_answers_fails_when_its_timeout_ends(
    world: World, receiver: Receiver
) -> None:
    await first_release(world)
    receiver.hang.add("/promotion")
    began = time.monotonic()
    done = await world.deploy("v2", **TWO_ROUTES,
                              webhooks=[hook("confirm-promotion", "/promotion", timeout="200ms")])
    assert time.monotonic() - began < 3
    assert done.phase == "failed" and "no answer within 0.2s" in done.message
    assert world.router.shares() == {"v1": 100.0}


@pytest.mark.serial  # back within 2 s
async def test_abort_during_a_hanging_gate_goes_back_at_once(world: World, receiver: Receiver) -> None:
    await first_release(world)
    receiver.hang.add("/promotion")
    record = await world.create("v2", **TWO_ROUTES, webhooks=[
        hook("confirm-promotion", "/promotion", timeout="10m"), ALL[3]])
    task = world.start(record)
    await until(lambda: "/promotion" in receiver.paths(), "the promotion is being confirmed")
    began = time.monotonic()
    world.store.request(record.id, "abort")
    done = await finish(task)
    assert time.monotonic() - began < 2
    assert done.phase == "aborted" and world.router.shares() == {"v1": 100.0}
    assert attempts(world, done.id) == [("confirm-promotion", None, False), ("rollback", 200, True)]
    assert "abandoned" in world.store.events(done.id, kind="webhook")[0].message


async def test_a_failing_rollback_hook_cannot_undo_the_rollback(world: World, receiver: Receiver) -> None:
    await first_release(world)
    receiver.answers["/rollback"] = [500]
    record = await world.create("v2", kind="canary", steps=[{"weight": 34}, {"pause": "forever"}],
                                webhooks=[hook("rollback", "/rollback", retries=1)])
    task = world.start(record)
    await until(lambda: world.router.shares() == {"v2": 34.0, "v1": 66.0}, "the canary takes traffic")
    task.cancel()  # the deploying process died; `turnout abort` goes back from another one
    with contextlib.suppress(asyncio.CancelledError):
        await task
    stored = world.store.deployment(record.id)
    assert stored is not None
    done = await world.executor().go_back(stored, "aborted", "aborted by request")
    assert done.phase == "aborted" and world.router.shares() == {"v1": 100.0}
    assert receiver.bodies("/rollback")[0]["phase"] == "aborted"
    assert attempts(world, done.id) == [("rollback", 500, False), ("rollback", 500, False)]


# -- events --------------------------------------------------------------------------------

async def test_the_event_hook_gets_every_event_that_matters_in_order(
    world: World, receiver: Receiver
) -> None:
    await first_release(world)
    done = await world.deploy("v2", **TWO_ROUTES, webhooks=[hook("event", "/events"), *ALL])
    assert done.phase == "succeeded", done.message
    sent = [(b["event"]["kind"], b["event"]["message"]) for b in receiver.bodies("/events")]
    stored = [(e.kind, e.message) for e in world.store.events(done.id) if e.kind in SENT]
    assert sent == stored and len(sent) > len(done.plan)
    assert sent[-2:] == [("phase", "succeeded"), ("succeeded", "v2 serves all traffic")]
    bodies = receiver.bodies("/events")
    assert bodies[-1]["phase"] == "succeeded" and bodies[-1]["deployment"] == done.id
    steps = [b for b in bodies if b["event"]["kind"] == "step"]
    assert [b["step"] for b in steps] == list(range(1, len(done.plan) + 1))
    assert not [e for e in world.store.events(done.id) if e.kind == "info" and "event webhook" in e.message]


@pytest.mark.parametrize("fault", ["refuse", "hang", "500"])
@pytest.mark.serial  # deployed within 2.5 s
async def test_a_failing_event_hook_never_holds_the_deployment_up_and_is_noted_once(
    world: World, receiver: Receiver, fault: str
) -> None:
    await first_release(world)
    if fault == "refuse":
        receiver.refuse.add("/events")
    elif fault == "hang":
        receiver.hang.add("/events")
    else:
        receiver.answers["/events"] = [500]
    began = time.monotonic()
    done = await world.deploy("v2", **TWO_ROUTES, webhooks=[hook("event", "/events", timeout="300ms")])
    assert done.phase == "succeeded", done.message
    # A hanging hook: each event waits its turn, and the end waits at most one timeout more.
    assert time.monotonic() - began < 2.5
    noted = [e for e in world.store.events(done.id) if e.kind == "info" and "event webhook" in e.message]
    assert len(noted) == 1, [e.message for e in noted]
    assert "the deployment goes on" in noted[0].message


# -- real sockets ----------------------------------------------------------------------------

@pytest.mark.serial  # ends within 0.25-1.5 s
async def test_a_call_to_a_server_that_never_answers_ends_at_its_timeout() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # reads nothing, answers nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(trust_env=False) as http:
            began = time.monotonic()
            attempt = await call(http, Webhook(when="confirm-promotion", url=f"http://127.0.0.1:{port}/x",
                                               timeout=0.3), {"when": "confirm-promotion"})
        assert 0.25 < time.monotonic() - began < 1.5
        assert not attempt.ok and attempt.status is None and attempt.error == "no answer within 0.3s"
        assert accepted, "the call never reached the server"
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_call_to_a_closed_port_fails_at_once() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        async with httpx.AsyncClient(trust_env=False) as http:
            attempt = await call(http, Webhook(when="pre-rollout", url=f"http://127.0.0.1:{port}/",
                                               timeout=5), {})
    assert not attempt.ok and attempt.status is None
    assert attempt.error.startswith("cannot connect") and attempt.seconds < 1


async def test_a_body_is_sent_as_plain_json_as_the_store_keeps_events(receiver: Receiver) -> None:
    async with client(FakePlatform(), receiver) as http:
        attempt = await call(http, Webhook(when="event", url=f"{HOOKS}/events"),
                             {"when": "event", "event": {"data": {"p99": float("inf"), "slots": (0, 1)}}})
    assert attempt.ok
    sent = receiver.bodies("/events")
    assert sent == [{"when": "event", "event": {"data": {"p99": "inf", "slots": [0, 1]}}}]
