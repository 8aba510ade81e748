"""The service the host tests deploy: the standard library only, since hosts have python3 alone.

GET /healthz answers 200; GET / answers `{"version": ..., "slot": ..., "host": ...}` (the version also in
X-Version, which the load generator reads);
GET /argv and /env/NAME answer what the process was given, so a test can check that spec
values arrived verbatim. SIGTERM stops taking connections, lets requests under way finish,
then exits. HTTP/1.1 with keep-alive, one thread per connection. The version comes from
TURNOUT_VERSION; `--fail-health` makes /healthz answer 503 (a version that never gets healthy).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BUSY = threading.Semaphore(1_000)
STOPPING = threading.Event()
ACTIVE = [0]
ACTIVE_LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30  # an idle keep-alive connection is closed after this long

    def do_GET(self) -> None:
        with ACTIVE_LOCK:
            ACTIVE[0] += 1
        try:
            self._answer()
        finally:
            with ACTIVE_LOCK:
                ACTIVE[0] -= 1

    def _answer(self) -> None:
        if self.path == "/healthz":
            code = 503 if "--fail-health" in sys.argv else 200
            self._send(code, {"healthy": code == 200})
        elif self.path == "/argv":
            self._send(200, sys.argv[1:])
        elif self.path.startswith("/env/"):
            self._send(200, os.environ.get(self.path[len("/env/"):]))
        else:
            self._send(200, {"version": os.environ.get("TURNOUT_VERSION", "?"),
                             "slot": os.environ.get("TURNOUT_SLOT"), "host": socket.gethostname()})

    def _send(self, code: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Version", os.environ.get("TURNOUT_VERSION", "?"))
        self.send_header("Content-Length", str(len(data)))
        if STOPPING.is_set():
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per request would flood the journal under load


def main() -> None:
    port = int(os.environ["PORT"])
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: STOPPING.set())
    # A short poll: shutdown() waits for the loop to look, and a stop step waits for that.
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    print(f"serving {os.environ.get('TURNOUT_VERSION')} on port {port} in {os.getcwd()}", flush=True)
    STOPPING.wait()
    server.shutdown()
    server.server_close()
    deadline = time.monotonic() + 10
    while ACTIVE[0] and time.monotonic() < deadline:
        time.sleep(0.02)
    print("stopped", flush=True)


if __name__ == "__main__":
    main()
