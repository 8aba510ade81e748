"""A real proxy worker whose routing raises for the user key `boom`, for the test that an
exception in the routing path is answered 502 and counted.

Usage: python -m tests.integration.faulty_worker STATE_DIR PORT_FILE. It binds 127.0.0.1:0
and STATE_DIR/admin.sock as the supervisor would, writes the port to PORT_FILE and serves.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Mapping
from pathlib import Path

import uvloop

from turnout.routers.proxy import worker
from turnout.routers.proxy.balancer import Plan, PoolPlan
from turnout.routers.proxy.supervisor import _admin_socket

_route_keyed = Plan.route_keyed


def _faulty(self: Plan, headers: Mapping[bytes, bytes]) -> tuple[PoolPlan | None, bytes | None]:
    if headers.get(b"x-user-id") == b"boom":
        raise RuntimeError("a deliberate fault in routing")
    return _route_keyed(self, headers)


def main() -> None:
    state_dir, port_file = Path(sys.argv[1]), Path(sys.argv[2])
    Plan.route_keyed = _faulty  # type: ignore[method-assign]
    listener = socket.create_server(("127.0.0.1", 0))
    admin = _admin_socket(state_dir / "admin.sock")
    port_file.write_text(str(listener.getsockname()[1]))
    uvloop.run(worker.serve(listener.fileno(), None, admin.fileno(), state_dir))


if __name__ == "__main__":
    main()
