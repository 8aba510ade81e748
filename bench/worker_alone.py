"""Run one builtin-router worker without its supervisor, for measuring it under a tool.

Usage: python bench/worker_alone.py STATE_DIR PORT_FILE
It binds 127.0.0.1:0 and STATE_DIR/admin.sock as the supervisor would, writes the port to
PORT_FILE and serves until SIGTERM. Whichever `turnout` PYTHONPATH names is the one run.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import uvloop

from turnout.routers.proxy import worker
from turnout.routers.proxy.supervisor import _admin_socket


def main() -> None:
    state_dir, port_file = Path(sys.argv[1]), Path(sys.argv[2])
    listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
    admin = _admin_socket(state_dir / "admin.sock")
    port_file.write_text(str(listener.getsockname()[1]))
    uvloop.run(worker.serve(listener.fileno(), None, admin.fileno(), state_dir))


if __name__ == "__main__":
    main()
