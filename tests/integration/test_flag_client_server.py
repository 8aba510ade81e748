"""FlagClient and the OpenFeature provider against a real `turnout server` process.

Flags are changed through ``FlagStore`` in this test process (another process than the
server), as the CLI would; the server notices by polling the revision and pushes the new
state down the stream. The server is also killed and started again on the same port.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openfeature import api
from openfeature.event import EventDetails, ProviderEvent
from openfeature.provider import ProviderStatus
from tests.e2e.sdk.server_proc import ServerProcess
from tests.integration.test_flag_client_fake_server import Recorder

from turnout.flags.client import ClientEvent, ClientStatus, FlagClient
from turnout.flags.openfeature import TurnoutProvider
from turnout.flags.store import FlagStore

CHECKOUT = {"name": "checkout", "enabled": True, "strategies": [{"name": "default"}]}
THEME = {"name": "theme", "enabled": True, "strategies": [{"name": "default", "variants": [
    {"name": "dark", "weight": 1000, "stickiness": "default",
     "payload": {"type": "json", "value": '{"bg": "#000"}'}}]}]}


class World:
    def __init__(self, tmp: Path) -> None:
        self.db = f"sqlite:///{tmp / 'state.db'}"
        self.store = FlagStore.open(self.db)
        self.token = self.store.create_token("web-sdk", "client")
        self.store.create(CHECKOUT, who="setup")
        self.store.create(THEME, who="setup")
        self.server: ServerProcess | None = ServerProcess.start(self.db)
        self.url = self.server.url
        self.clients: list[FlagClient] = []

    def client(self, token: str | None = None, **options: Any) -> tuple[FlagClient, Recorder]:
        client = FlagClient(self.url, token or self.token, **options)
        notes = Recorder()
        client.add_listener(notes)
        self.clients.append(client)
        client.start()
        return client, notes

    def kill(self) -> None:
        assert self.server is not None
        self.server.proc.kill()
        self.server.proc.wait()
        if self.server.proc.stdout is not None:
            self.server.proc.stdout.close()
        self.server = None

    def restart(self) -> None:
        self.server = ServerProcess.start(self.db, listen=self.url.removeprefix("http://"))

    def close(self) -> None:
        for client in self.clients:
            client.close()
        if self.server is not None:
            assert self.server.stop() == 0
        self.store.close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.close()


@pytest.mark.serial  # a change arrives within 1 s
def test_initial_fetch_then_changes_by_stream(world: World) -> None:
    client, notes = world.client()
    notes.wait(ClientEvent.READY)
    assert client.is_enabled("checkout")
    assert client.variant("theme", {"userId": "u1"}).name == "dark"
    first = client.revision
    assert first == world.store.revision()

    started = time.monotonic()
    world.store.set_enabled("checkout", False, who="test")
    changed = notes.wait(ClientEvent.CHANGED, timeout=2.0)
    assert time.monotonic() - started < 1.0
    assert changed.flags_changed == ("checkout",)
    assert not client.is_enabled("checkout")

    world.store.set_rollout("checkout", 100, who="test")
    world.store.set_enabled("checkout", True, who="test")
    wait = time.monotonic() + 2.0
    while client.revision != world.store.revision() and time.monotonic() < wait:
        time.sleep(0.01)
    assert client.revision == world.store.revision()
    assert client.evaluate("checkout", {"userId": "x"}).enabled


def test_killed_server_goes_stale_then_catches_up_after_restart(world: World) -> None:
    client, notes = world.client(poll_interval=0.2, backoff_max=30.0)
    notes.wait(ClientEvent.READY)
    time.sleep(0.2)  # the stream is connected
    world.kill()
    stale = notes.wait(ClientEvent.STALE, timeout=3.0)
    assert stale.message
    assert client.status is ClientStatus.STALE
    assert client.is_enabled("checkout")  # last known flags keep answering

    world.store.set_enabled("checkout", False, who="while-down")
    world.restart()
    notes.wait(ClientEvent.READY, count=2, timeout=5.0)
    changed = notes.wait(ClientEvent.CHANGED, timeout=5.0)
    assert changed.flags_changed == ("checkout",)
    assert client.status is ClientStatus.READY
    assert not client.is_enabled("checkout")


def test_cache_file_when_the_server_is_down_at_start(world: World, tmp_path: Path) -> None:
    cache = tmp_path / "flags-cache.json"
    first, notes = world.client(cache_path=cache)
    notes.wait(ClientEvent.READY)
    world.store.set_enabled("checkout", False, who="test")
    notes.wait(ClientEvent.CHANGED, timeout=2.0)
    first.close()
    world.kill()

    second, notes2 = world.client(cache_path=cache, poll_interval=0.2, backoff_max=0.5)
    assert second.wait_for_state(3.0)
    notes2.wait(ClientEvent.STALE)
    assert second.status is ClientStatus.STALE
    assert not second.is_enabled("checkout")  # the cached (latest) answer, not the original one

    world.restart()
    notes2.wait(ClientEvent.READY, timeout=5.0)
    assert second.status is ClientStatus.READY


def test_wrong_token_is_an_error(world: World) -> None:
    bad, notes = world.client("not-a-token", backoff_max=0.5)
    error = notes.wait(ClientEvent.ERROR)
    assert error.message and "401" in error.message
    assert bad.status is ClientStatus.ERROR


def test_openfeature_provider_over_the_server(world: World) -> None:
    changes: list[EventDetails] = []
    arrived = threading.Event()

    def on_change(details: EventDetails) -> None:
        if details.provider_name == "turnout":
            changes.append(details)
            arrived.set()

    provider = TurnoutProvider.connect(world.url, world.token)
    api.add_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, on_change)
    try:
        api.set_provider_and_wait(provider)
        client = api.get_client()
        assert client.get_provider_status() is ProviderStatus.READY
        assert client.get_boolean_value("checkout", False) is True
        assert client.get_object_value("theme", {}) == {"bg": "#000"}
        world.store.set_enabled("theme", False, who="test")
        assert arrived.wait(2.0)
        assert changes[0].flags_changed == ["theme"]
        assert client.get_object_value("theme", {"bg": "#fff"}) == {"bg": "#fff"}
    finally:
        api.remove_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, on_change)
        with contextlib.suppress(Exception):
            api.clear_providers()
    deadline = time.monotonic() + 2.0
    while provider.source.status is not ClientStatus.CLOSED and time.monotonic() < deadline:
        time.sleep(0.01)
    assert provider.source.status is ClientStatus.CLOSED
