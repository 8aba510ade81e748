"""A Flask (WSGI) app for the real-framework e2e tests, served by gunicorn's sync workers.

Every answer carries `X-Version` ($TURNOUT_VERSION). `/healthz` answers ok; `/download`
streams `size` bytes of `payload.download` without a length (chunked); `/upload` reads a
body of any size and answers its length and SHA-256; `/events` sends `count`
server-sent events `interval_ms` apart, each stamped with when it was sent.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator

import payload
from flask import Flask, Response, jsonify, request

VERSION = os.environ.get("TURNOUT_VERSION", "dev")
app = Flask(__name__)


@app.after_request
def stamp(response: Response) -> Response:
    response.headers["X-Version"] = VERSION
    return response


@app.get("/")
def index() -> str:
    return f"hello from flask {VERSION}\n"


@app.get("/healthz")
def healthz() -> str:
    return "ok"


@app.get("/download")
def download() -> Response:
    size = payload.bounded(request.args.get("size"), 1024, payload.MAX_SIZE)
    seed = payload.bounded(request.args.get("seed"), 0, 2**31)
    return Response(payload.download(size, seed), mimetype="application/octet-stream")


@app.post("/upload")
def upload() -> Response:
    digest, length = hashlib.sha256(), 0
    while chunk := request.stream.read(payload.CHUNK):
        digest.update(chunk)
        length += len(chunk)
    return jsonify(sha256=digest.hexdigest(), length=length, version=VERSION)


@app.get("/events")
def events() -> Response:
    count = payload.bounded(request.args.get("count"), 5, payload.MAX_EVENTS)
    interval = payload.bounded(request.args.get("interval_ms"), 200, 5000) / 1000

    def stream() -> Iterator[bytes]:
        for i in range(count):
            if i:
                time.sleep(interval)
            yield payload.event(i, VERSION)

    return Response(stream(), mimetype="text/event-stream", headers={"Cache-Control": "no-cache"})
