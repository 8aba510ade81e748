"""`turnout server` as a real process on 127.0.0.1 over a real SQLite store.

Covers what an SDK or an operator would notice: the state document with its ETag and
304s, gzip, the 401/403 matrix, 400 bodies with field paths, register/metrics, the admin
API with its audit, and the event stream that follows changes made by another process.
"""

from __future__ import annotations

import gzip
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.e2e.sdk.server_proc import ServerProcess

from turnout.flags import FlagState, is_enabled
from turnout.flags.store import FlagStore

CHECKOUT = {"name": "checkout", "enabled": True, "strategies": [{"name": "default"}]}


class World:
    def __init__(self, tmp: Path) -> None:
        self.db = f"sqlite:///{tmp / 'state.db'}"
        self.store = FlagStore.open(self.db)
        self.admin = self.store.create_token("ops", "admin")
        self.client = self.store.create_token("web-sdk", "client")
        self.store.create(CHECKOUT, who="setup")
        self.server = ServerProcess.start(self.db)
        self.http = httpx.Client(base_url=self.server.url, timeout=5.0)

    def get(self, path: str, token: str | None, **headers: str) -> httpx.Response:
        if token is not None:
            headers["Authorization"] = token
        return self.http.get(path, headers=headers)

    def post(self, path: str, token: str, body: Any = None, raw: bytes | None = None) -> httpx.Response:
        content = raw if raw is not None else json.dumps(body).encode()
        return self.http.post(path, content=content, headers={"Authorization": token,
                                                               "Content-Type": "application/json"})

    def close(self) -> None:
        self.http.close()
        assert self.server.stop() == 0
        self.store.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("server"))
    yield w
    w.close()


def test_features_serves_the_state_with_etag_and_304(world: World) -> None:
    first = world.get("/api/client/features", world.client)
    assert first.status_code == 200
    doc = first.json()
    assert doc["version"] == 2 and doc["meta"]["revision"] == world.store.revision()
    assert is_enabled(FlagState.from_json(doc), "checkout", {})
    etag = first.headers["ETag"]
    assert etag == f'"{world.store.revision()}"'
    again = world.get("/api/client/features", world.client, **{"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    stale = world.get("/api/client/features", world.client, **{"If-None-Match": '"0"'})
    assert stale.status_code == 200


def test_features_are_gzipped_for_clients_that_accept_it(world: World) -> None:
    with socket.create_connection(("127.0.0.1", int(world.server.url.rsplit(":", 1)[1]))) as sock:
        sock.sendall(b"GET /api/client/features HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                     + world.client.encode() + b"\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n")
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"Content-Encoding: gzip" in head
    assert json.loads(gzip.decompress(body))["features"][0]["name"] == "checkout"


@pytest.mark.parametrize(("path", "token", "status"), [
    ("/api/client/features", None, 401),
    ("/api/client/features", "not-a-token", 401),
    ("/api/client/features", "client", 200),
    ("/api/client/features", "admin", 200),
    ("/api/admin/flags", None, 401),
    ("/api/admin/flags", "not-a-token", 401),
    ("/api/admin/flags", "client", 403),
    ("/api/admin/flags", "admin", 200),
    ("/api/admin/metrics", "client", 403),
    ("/api/admin/flags/checkout/history", "Bearer admin", 200),
])
def test_auth_matrix(world: World, path: str, token: str | None, status: int) -> None:
    secrets = {"client": world.client, "admin": world.admin, "Bearer admin": f"Bearer {world.admin}"}
    response = world.get(path, secrets.get(token or "", token))
    assert response.status_code == status, response.text
    if status in (401, 403):
        assert response.json()["problems"][0].startswith("authorization:")


REGISTER = {"appName": "web", "instanceId": "web-1", "sdkVersion": "unleash-client-node:6",
            "strategies": ["default"], "started": "2025-01-01T00:00:00Z", "interval": 15000}
METRICS = {"appName": "web", "instanceId": "web-1", "bucket": {
    "start": "2025-01-01T00:00:00Z", "stop": "2025-01-01T00:01:00Z",
    "toggles": {"checkout": {"yes": 3, "no": 1, "variants": {"blue": 2}}}}}


def test_register_and_metrics_are_accepted_and_summed(world: World) -> None:
    assert world.post("/api/client/register", world.client, REGISTER).status_code == 202
    before = world.get("/api/admin/metrics", world.admin).json()["toggles"].get(
        "checkout", {"yes": 0, "no": 0, "variants": {}})
    assert world.post("/api/client/metrics", world.client, METRICS).status_code == 202
    assert world.post("/api/client/metrics", world.client, METRICS).status_code == 202
    summary = world.get("/api/admin/metrics", world.admin).json()
    assert summary["toggles"]["checkout"]["yes"] == before["yes"] + 6
    assert summary["toggles"]["checkout"]["variants"]["blue"] == before["variants"].get("blue", 0) + 4
    assert "web-1" in summary["applications"]["web"]["instances"]


@pytest.mark.parametrize(("path", "body", "problem"), [
    ("/api/client/register", b"{not json", "body: invalid JSON"),
    ("/api/client/register", b"", "body: expected a JSON document"),
    ("/api/client/register", json.dumps({**REGISTER, "interval": -1}).encode(), "interval:"),
    ("/api/client/register", json.dumps({**REGISTER, "started": "yesterday"}).encode(), "started:"),
    ("/api/client/metrics",
     json.dumps({**METRICS, "bucket": {**METRICS["bucket"],  # type: ignore[dict-item]
                                       "toggles": {"checkout": {"yes": "many", "no": 0}}}}).encode(),
     "bucket.toggles.checkout.yes:"),
    ("/api/client/metrics", json.dumps({"appName": "web", "instanceId": "i"}).encode(), "bucket:"),
])
def test_bad_bodies_are_400_with_field_paths(world: World, path: str, body: bytes,
                                            problem: str) -> None:
    response = world.post(path, world.client, raw=body)
    assert response.status_code == 400
    assert any(p.startswith(problem) for p in response.json()["problems"]), response.text


def test_admin_api_changes_flags_with_audit(world: World) -> None:
    created = world.post("/api/admin/flags", world.admin,
                         {"name": "new-search", "enabled": False, "strategies": []})
    assert created.status_code == 201 and created.json()["version"] == 1
    assert world.post("/api/admin/flags", world.admin,
                      {"name": "new-search", "enabled": False}).status_code == 409
    assert world.post("/api/admin/flags/new-search/enable", world.admin).json()["definition"]["enabled"]
    rollout = world.post("/api/admin/flags/new-search/rollout", world.admin, {"percent": 25})
    assert rollout.status_code == 200
    bad = world.post("/api/admin/flags/new-search/rollout", world.admin, {"percent": 250})
    assert bad.status_code == 400 and bad.json()["problems"][0].startswith("percent:")
    users = world.post("/api/admin/flags/new-search/users", world.admin, {"users": ["ann", "bo"]})
    assert users.status_code == 200
    state = FlagState.from_json(world.get("/api/client/features", world.client).json())
    assert is_enabled(state, "new-search", {"userId": "ann"})
    history = world.get("/api/admin/flags/new-search/history", world.admin).json()["history"]
    assert [h["who"] for h in history] == ["ops"] * len(history) and len(history) == 4
    assert world.http.delete("/api/admin/flags/new-search",
                             headers={"Authorization": world.admin}).status_code == 200
    names = [f["name"] for f in world.get("/api/client/features", world.client).json()["features"]]
    assert "new-search" not in names


def test_admin_api_rejects_bad_definitions_and_unknown_flags(world: World) -> None:
    bad = world.post("/api/admin/flags", world.admin, {
        "name": "broken", "enabled": True,
        "strategies": [{"name": "flexibleRollout", "parameters": {"rollout": "300"}}]})
    assert bad.status_code == 400
    assert any(p.startswith("strategies.0.parameters.rollout") for p in bad.json()["problems"])
    assert world.store.flag("broken") is None
    assert world.get("/api/admin/flags/nope", world.admin).status_code == 404
    assert world.post("/api/admin/flags/nope/enable", world.admin).status_code == 404
    put = world.http.put("/api/admin/flags/checkout", content=json.dumps(CHECKOUT),
                         headers={"Authorization": world.admin, "If-Match": '"999"'})
    assert put.status_code == 409
    assert world.get("/api/admin/nothing-here", world.admin).status_code == 404


def _events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    event = None
    for line in lines:
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event == "state":
            yield json.loads(line[6:])


@pytest.mark.serial  # a change streamed within 1 s
def test_stream_sends_the_state_then_each_change_from_another_process(world: World) -> None:
    headers = {"Authorization": world.client}
    with httpx.Client(base_url=world.server.url, timeout=5.0) as http, \
            http.stream("GET", "/api/client/stream", headers=headers) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"] == "text/event-stream"
        states = _events(stream.iter_lines())
        first = next(states)
        assert first["meta"]["revision"] == world.store.revision()
        changed_at = time.monotonic()
        world.store.set_enabled("checkout", False, who="another-process")
        second = next(states)
        elapsed = time.monotonic() - changed_at
        assert second["meta"]["revision"] == first["meta"]["revision"] + 1
        assert not is_enabled(FlagState.from_json(second), "checkout", {})
        assert elapsed < 1.0, elapsed
        world.store.set_enabled("checkout", True, who="another-process")
        assert next(states)["meta"]["revision"] == first["meta"]["revision"] + 2


def test_pipelined_requests_are_answered_in_order(world: World) -> None:
    port = int(world.server.url.rsplit(":", 1)[1])
    request = (b"GET /api/client/features HTTP/1.1\r\nHost: x\r\nAuthorization: " + world.client.encode()
               + b"\r\n\r\n")
    admin = (b"GET /api/admin/flags HTTP/1.1\r\nHost: x\r\nAuthorization: " + world.admin.encode()
             + b"\r\nConnection: close\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request + admin + request)  # the last one comes after a close: ignored
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    assert raw.count(b"HTTP/1.1 200 OK") == 2
    assert raw.index(b'"version":2') < raw.index(b'"flags"')
