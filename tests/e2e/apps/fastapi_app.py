"""A FastAPI (ASGI) app for the real-framework e2e tests, served by uvicorn.

The same endpoints as `flask_app`: `X-Version` on every answer, `/healthz`, a chunked
`/download`, an `/upload` that answers length and SHA-256, and `/events` (server-sent
events `interval_ms` apart, each stamped with when it was sent); and `/ws`, a WebSocket
that answers every text message with `<version>:<message>`.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable

import payload
from fastapi import FastAPI, Request, Response, WebSocket, WebSocketDisconnect
from fastapi.responses import PlainTextResponse, StreamingResponse

VERSION = os.environ.get("TURNOUT_VERSION", "dev")
app = FastAPI()


@app.middleware("http")
async def stamp(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    response = await call_next(request)
    response.headers["X-Version"] = VERSION
    return response


@app.get("/", response_class=PlainTextResponse)
async def index() -> str:
    return f"hello from fastapi {VERSION}\n"


@app.get("/healthz", response_class=PlainTextResponse)
async def healthz() -> str:
    return "ok"


@app.get("/download")
async def download(size: str | None = None, seed: str | None = None) -> StreamingResponse:
    chunks = payload.download(payload.bounded(size, 1024, payload.MAX_SIZE),
                              payload.bounded(seed, 0, 2**31))

    async def stream() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    return StreamingResponse(stream(), media_type="application/octet-stream")


@app.post("/upload")
async def upload(request: Request) -> dict[str, object]:
    digest, length = hashlib.sha256(), 0
    async for chunk in request.stream():
        digest.update(chunk)
        length += len(chunk)
    return {"sha256": digest.hexdigest(), "length": length, "version": VERSION}


@app.get("/events")
async def events(count: str | None = None, interval_ms: str | None = None) -> StreamingResponse:
    n = payload.bounded(count, 5, payload.MAX_EVENTS)
    interval = payload.bounded(interval_ms, 200, 5000) / 1000

    async def stream() -> AsyncIterator[bytes]:
        for i in range(n):
            if i:
                await asyncio.sleep(interval)
            yield payload.event(i, VERSION)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@app.websocket("/ws")
async def echo(socket: WebSocket) -> None:
    await socket.accept()
    try:
        while True:
            message = await socket.receive_text()
            await socket.send_text(f"{VERSION}:{message}")
    except WebSocketDisconnect:
        pass
