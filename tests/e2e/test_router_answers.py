"""What the router answered itself, as `turnout status` shows it to the person deploying."""

from __future__ import annotations

import asyncio

import pytest

from tests.e2e.conftest import Service, check
from tests.integration.raw_http import exchange

pytestmark = pytest.mark.slow


async def test_status_shows_the_answers_the_router_made_itself(service: Service) -> None:
    check(service.run("deploy", "v1"))
    for _ in range(3):
        assert (await exchange(service.port, b"NOT HTTP AT ALL\r\n\r\n")).status == 400
    big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n" % (b"b" * 40_000)
    assert (await exchange(service.port, big)).status == 431
    await asyncio.sleep(0.1)
    data = service.status()
    assert data["router"]["answered"] == {"unrouted": {"400": 3, "431": 1}}
    text = service.run("status")
    check(text)
    assert "answered by the router itself: unrouted 3x400, 1x431" in text.stdout
