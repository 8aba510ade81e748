"""Hand a new flag state to the builtin router of a spec folder, if one runs.

The `turnout flags` CLI calls `push_to_router` after every change so that a router that
evaluates flags per request (see `turnout.routers.proxy.flags`) switches at once, and
`turnout server` calls it for every revision it sees. The state goes with its revision
(the flag store's counter, `meta.revision` of the document) and nothing else: the router
keeps which flags it evaluates and the header it forwards them in. Several processes push
at once, so the router refuses a revision older than the one it holds; that refusal is
`RouterHasNewer`, which carries the router's revision so the caller can tell a newer state
of the same store (nothing to do) from a router fed by another database.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import httpx

from turnout.errors import RouterError
from turnout.statedir import StateDir

CONNECT_SECONDS = 1.0
REQUEST_SECONDS = 5.0


def _listening(path: Path) -> bool:
    """Whether something accepts connections on the unix socket `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(CONNECT_SECONDS)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
            return False
        except OSError as exc:
            raise RouterError(f"cannot reach the builtin router at {path}: {exc}") from exc
    return True


class RouterHasNewer(RouterError):
    """The router refused the push (409): it holds a newer flag revision, `revision`."""

    def __init__(self, message: str, revision: int) -> None:
        super().__init__(message)
        self.revision = revision


def admin_socket(spec_dir: Path) -> Path:
    """Where the builtin router of the spec folder `spec_dir` takes its admin requests."""
    return StateDir.beside(spec_dir).router.admin_socket


def state_revision(state: dict[str, Any]) -> int:
    """The flag store revision a state document reflects (`meta.revision`)."""
    meta = state.get("meta")
    revision = meta.get("revision") if isinstance(meta, dict) else None
    if isinstance(revision, bool) or not isinstance(revision, int):
        raise ValueError("a flag state to push needs its meta.revision (FlagStore.state gives it)")
    return revision


def push_to_router(spec_dir: Path, state: dict[str, Any]) -> bool:
    """`PUT /flags {"state", "revision"}` on the spec folder's router; False if none runs.

    A router that is not running (no socket, or a socket nobody listens on) is not an
    error. A router holding a newer revision raises `RouterHasNewer`; one that answers but
    refuses otherwise, or stops answering, raises `RouterError`.
    """
    socket_path = admin_socket(spec_dir)
    revision = state_revision(state)
    if not _listening(socket_path):
        return False
    body = json.dumps({"state": state, "revision": revision}).encode()
    timeout = httpx.Timeout(REQUEST_SECONDS, connect=CONNECT_SECONDS)
    transport = httpx.HTTPTransport(uds=str(socket_path))
    try:
        with httpx.Client(transport=transport, base_url="http://turnout-proxy",
                          timeout=timeout) as client:
            response = client.put("/flags", content=body,
                                  headers={"Content-Type": "application/json"})
    except httpx.ConnectError:
        return False  # a socket left behind by a router that is gone
    except httpx.HTTPError as exc:
        raise RouterError(f"builtin router at {socket_path} did not take the flags: {exc}") from exc
    if response.status_code == 409:
        held = _held_revision(response)
        raise RouterHasNewer(f"builtin router at {socket_path} holds flag revision {held}, "
                             f"newer than {revision}", held)
    if response.status_code != 200:
        raise RouterError(f"builtin router at {socket_path} refused the flags: "
                          f"{response.status_code} {response.text.strip()}")
    return True


def _held_revision(response: httpx.Response) -> int:
    try:
        held = response.json().get("revision")
    except (ValueError, AttributeError):
        held = None
    if isinstance(held, bool) or not isinstance(held, int):
        raise RouterError(f"builtin router refused the flags: 409 {response.text.strip()}")
    return held
