"""Hand a new flag state to the builtin router of a spec folder, if one runs.

The `turnout flags` CLI calls `push_to_router` after every change so that a router that
evaluates flags per request (see `turnout.routers.proxy.flags`) switches at once. Only the
state is sent: the router keeps which flags it evaluates and the header it forwards them in.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import httpx

from turnout.errors import RouterError

ROUTER_DIR = Path(".turnout") / "router"
ADMIN_SOCKET = "admin.sock"
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


def push_to_router(spec_dir: Path, state: dict[str, Any]) -> None:
    """`PUT /flags {"state": state}` on the spec folder's router; nothing if none runs.

    A router that is not running (no socket, or a socket nobody listens on) is not an
    error. A router that answers but refuses, or stops answering, raises `RouterError`.
    """
    socket_path = spec_dir / ROUTER_DIR / ADMIN_SOCKET
    if not _listening(socket_path):
        return
    body = json.dumps({"state": state}).encode()
    timeout = httpx.Timeout(REQUEST_SECONDS, connect=CONNECT_SECONDS)
    transport = httpx.HTTPTransport(uds=str(socket_path))
    try:
        with httpx.Client(transport=transport, base_url="http://turnout-proxy",
                          timeout=timeout) as client:
            response = client.put("/flags", content=body,
                                  headers={"Content-Type": "application/json"})
    except httpx.ConnectError:
        return  # a socket left behind by a router that is gone
    except httpx.HTTPError as exc:
        raise RouterError(f"builtin router at {socket_path} did not take the flags: {exc}") from exc
    if response.status_code != 200:
        raise RouterError(
            f"builtin router refused the flags: {response.status_code} {response.text.strip()}"
        )
