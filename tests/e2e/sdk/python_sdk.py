"""The official Python SDK (`UnleashClient`) reading a real `turnout server`, for agreement tests.

`served_state` waits until the server serves a given revision and returns that document;
`unleash_answers` starts a fresh client (it fetches the document once, synchronously),
asks it `is_enabled` for every (flag, context) case and stops it. A fresh client per
call means no answer comes from a document fetched before the change under test.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

Case = tuple[str, dict[str, Any]]


def served_state(url: str, token: str, *, revision: int, timeout: float = 10.0) -> dict[str, Any]:
    """The document `url` serves once it reflects `revision` (or a later one)."""
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        response = httpx.get(f"{url}/api/client/features", headers={"Authorization": token})
        response.raise_for_status()
        doc: dict[str, Any] = response.json()
        seen = doc.get("meta", {}).get("revision")
        if isinstance(seen, int) and seen >= revision:
            return doc
        time.sleep(0.05)
    raise AssertionError(f"the server still serves revision {seen}, not {revision}")


def unleash_answers(url: str, token: str, cases: list[Case], cache_dir: Path) -> list[bool]:
    """`UnleashClient.is_enabled` for each case, from a client started for this call."""
    from UnleashClient import UnleashClient

    cache_dir.mkdir(parents=True, exist_ok=True)
    client = UnleashClient(url=f"{url}/api", app_name="turnout-e2e-py",
                           custom_headers={"Authorization": token}, disable_metrics=True,
                           disable_registration=True, refresh_interval=3600,
                           cache_directory=str(cache_dir))
    client.initialize_client()
    try:
        assert client.is_initialized
        return [bool(client.is_enabled(name, ctx)) for name, ctx in cases]
    finally:
        client.destroy()
