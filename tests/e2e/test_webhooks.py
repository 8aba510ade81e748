"""Webhooks through the real CLI: `turnout deploy` of the demo app calls a real HTTP server on
127.0.0.1 (the standard library's, in a thread) at each turning point.

A confirm-promotion refused with a 403 rolls the canary back (exit 3, v1 serves), every
gate call and the rollback hook arrive in the order of the plan, and the event hook gets
the deployment's stored events in the order they were stored. A `turnout abort` from
another process ends a confirm call that would hang for a minute within seconds.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.e2e.conftest import Service, check
from turnout.engine.webhooks import SENT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]


class Receiver(ThreadingHTTPServer):
    """Webhook calls on 127.0.0.1: `answers[path]` is the status (default 200); a path in
    `hang` is answered only when the receiver closes. Every call is kept in order."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answers: dict[str, int] = {}
        self.hang: set[str] = set()
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.closing = threading.Event()
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def paths(self) -> list[str]:
        with self.lock:
            return [path for path, _ in self.calls]

    def bodies(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [body for p, body in self.calls if p == path]


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.calls.append((self.path, body))
        if self.path in self.server.hang:
            self.server.closing.wait(60)
        status = self.server.answers.get(self.path, 200)
        text = b"ok" if status < 300 else b"promotion not approved"
        try:
            self.send_response(status)
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)
        except (BrokenPipeError, ConnectionResetError):
            pass  # a caller that gave up (an aborted confirm) is gone

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.closing.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


def with_hooks(service: Service, receiver: Receiver, **promotion: Any) -> None:
    url = receiver.url
    service.write(kind="canary", steps=[{"weight": 34}, {"weight": 100}], webhooks=[
        {"when": "pre-rollout", "url": f"{url}/pre", "timeout": "5s"},
        {"when": "confirm-rollout", "url": f"{url}/rollout"},
        {"when": "confirm-promotion", "url": f"{url}/promotion", **promotion},
        {"when": "rollback", "url": f"{url}/rollback", "headers": {"X-Token": "t0k"}},
        {"when": "event", "url": f"{url}/events"},
    ])


def test_a_refused_promotion_rolls_back_and_the_hooks_hear_everything_in_order(
    service: Service, receiver: Receiver
) -> None:
    check(service.run("deploy", "v1"))
    with_hooks(service, receiver)
    receiver.answers["/promotion"] = 403
    result = service.run("deploy", "v2")
    check(result, 3)
    assert f"confirm-promotion webhook {receiver.url}/promotion refused: HTTP 403" in result.stdout
    status = service.status()
    assert status["stable"]["version"] == "v1" and status["router"]["traffic"] == {"v1": 100.0}
    assert {i["version"] for i in status["instances"]} == {"v1"}

    gates = [p for p in receiver.paths() if p != "/events"]
    assert gates == ["/pre", "/rollout", "/rollout", "/rollout", "/promotion", "/rollback"]
    pre, told = receiver.bodies("/pre")[0], receiver.bodies("/rollback")[0]
    assert (pre["service"], pre["version"], pre["strategy"], pre["step"]) == ("shop", "v2", "canary", 1)
    assert told["phase"] == "failed" and "HTTP 403" in told["message"]

    story = json.loads(service.run("history", "--events", str(pre["deployment"]), "--json").stdout)
    stored = [(e["kind"], e["message"]) for e in story["events"] if e["kind"] in SENT]
    heard = [(b["event"]["kind"], b["event"]["message"]) for b in receiver.bodies("/events")]
    assert heard == stored and heard[-1] == ("phase", f"failed: {story['deployment']['message']}")
    calls = [(e["data"]["when"], e["data"]["status"]) for e in story["events"] if e["kind"] == "webhook"]
    assert calls == [("pre-rollout", 200), *[("confirm-rollout", 200)] * 3, ("confirm-promotion", 403),
                     ("rollback", 200)]


async def test_abort_ends_a_hanging_confirm_call_at_once(service: Service, receiver: Receiver) -> None:
    check(await asyncio.to_thread(service.run, "deploy", "v1"))
    with_hooks(service, receiver, timeout="60s")
    receiver.hang.add("/promotion")
    deploy = asyncio.create_task(service.arun("deploy", "v2"))
    for _ in range(400):  # 20 s at most
        if "/promotion" in receiver.paths() or deploy.done():
            break
        await asyncio.sleep(0.05)
    assert "/promotion" in receiver.paths(), "the deployment never asked to promote"
    began = time.monotonic()
    code, _, err = await service.arun("abort")
    assert code == 0, err  # the abort did what it was asked
    code, out, _ = await deploy
    assert time.monotonic() - began < 10  # the hook would have held it for 60 s
    assert code == 3 and "aborted" in out
    status = service.status()
    assert status["stable"]["version"] == "v1" and status["router"]["traffic"] == {"v1": 100.0}
    assert receiver.bodies("/rollback")[0]["phase"] == "aborted"
