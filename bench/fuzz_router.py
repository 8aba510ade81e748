"""Fuzz the builtin router's request handling over real sockets, with hypothesis.

A real router process (supervisor and worker) sits in front of a fast instance, a slow one
and one that never answers, with short deadlines. Each hypothesis example is a handful of
connections opened at once; each connection sends a script of HTTP-shaped bytes: request
lines and headers with odd methods, versions, names and values (control bytes, folding,
duplicates, huge values), every framing (`Content-Length`, chunked, both, neither, wrong),
upgrades, pipelining, bodies that stop short, all cut at random points into chunks sent a
moment apart, and sometimes an abrupt close. What must hold for every connection and after
every example:

- the router closes every connection within the deadlines (they are all under a second, so
  a connection still open `SETTLE` seconds after its last byte is a hang), and what it sent
  parses as HTTP responses;
- once a batch has settled, no request is left in flight to any instance;
- the worker never dies (its pid stays the same) and its admin API keeps answering;
- the worker's memory does not grow beyond `--memory-mb` over its size after a warm-up.

Usage: .venv/bin/python -m bench.fuzz_router [--minutes 10] [--memory-mb 20]
Writes bench/results/fuzz_router.json and prints a line per batch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import uvloop
from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from turnout.routers.builtin import BuiltinRouter
from turnout.routers.table import Backend, MatchRule, Pool, RoutingTable, Timeouts

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TIMEOUTS = Timeouts(header=0.5, idle=0.5, body=0.5, response=0.5, send=0.5, connect=0.5, tunnel=1.0)
SETTLE = 3.0  # seconds a connection may stay open after its last byte
STATUS = (b"HTTP/1.1 ", b"HTTP/1.0 ")

# --- what a connection sends

# Mostly well-formed, so that requests get past the parser to routing, bodies, pipelining
# and upgrades; the odd values (and raw bytes) keep the parser's error paths busy too.
TOKENS = st.sampled_from([b"GET"] * 4 + [b"POST"] * 3 + [b"PUT", b"HEAD", b"DELETE", b"OPTIONS", b"PATCH",
                          b"CONNECT", b"TRACE", b"get", b"G\x00T", b"", b"PRI", b"X" * 40])
VERSIONS = st.sampled_from([b"HTTP/1.1"] * 6 + [b"HTTP/1.0"] * 2 + [b"HTTP/0.9", b"HTTP/2.0", b"HTTP/1.1 ",
                            b"HTTP/1", b"", b"http/1.1", b"HTTP/1.12"])
PATHS = st.one_of(
    st.sampled_from([b"/"] * 4 + [b"/slow", b"/hung", b"*", b"http://x/", b"/a?b=c#d", b"//", b"/%00"]),
    st.sampled_from([b"/"]), st.binary(max_size=40), st.just(b"/" + b"p" * 9000),
)
KNOWN_NAMES = st.sampled_from([
    b"Host", b"Content-Length", b"Transfer-Encoding", b"Connection", b"Upgrade", b"Expect", b"X-User-Id",
    b"X-Forwarded-For", b"X-Forwarded-Proto", b"X-Forwarded-Host", b"Cookie", b"X-Turnout-Flags",
    b"HTTP2-Settings", b"Keep-Alive", b"TE", b"Trailer", b"X-Route",
])
NAMES = st.one_of(*[KNOWN_NAMES] * 8, st.binary(min_size=0, max_size=20))
KNOWN_VALUES = st.sampled_from([
    b"0", b"5", b"-1", b"18446744073709551616", b"chunked", b"gzip, chunked", b"chunked, gzip", b"close",
    b"keep-alive", b"upgrade", b"Upgrade", b"websocket", b"h2c", b"100-continue", b"uid=u1; a=b",
    b"slow", b"hung", b"1.2.3.4", b"https", b"",
])
VALUES = st.one_of(*[KNOWN_VALUES] * 8, st.binary(max_size=30), st.just(b"v" * 40_000))


CLEAN_METHODS = st.sampled_from([b"GET", b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"OPTIONS"])
CLEAN_PATHS = st.sampled_from([b"/", b"/", b"/slow", b"/a?b=c", b"/x/y"])
CLEAN_VERSIONS = st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"])
CLEAN_VALUES = st.sampled_from([
    b"0", b"5", b"chunked", b"close", b"keep-alive", b"upgrade", b"Upgrade", b"websocket", b"h2c",
    b"100-continue", b"uid=u1; a=b", b"hung", b"1.2.3.4", b"https", b"x.test",
])


@st.composite
def request(draw: st.DrawFn) -> bytes:
    """Seven times in ten a request a real client could send (though odd), else a mangled one."""
    if draw(st.integers(0, 9)) < 7:
        line = b"%s %s %s" % (draw(CLEAN_METHODS), draw(CLEAN_PATHS), draw(CLEAN_VERSIONS))
        headers = draw(st.lists(st.tuples(KNOWN_NAMES, CLEAN_VALUES, st.just(b": ")), max_size=4))
        eol = b"\r\n"
    else:
        line = b"%s %s %s" % (draw(TOKENS), draw(PATHS), draw(VERSIONS))
        headers = draw(st.lists(st.tuples(NAMES, VALUES, st.sampled_from([b": ", b":", b" : ", b":\t"])),
                                max_size=6))
        eol = draw(st.sampled_from([b"\r\n"] * 6 + [b"\n", b"\r"]))
    head = line + eol + b"".join(n + sep + v + eol for n, v, sep in headers) + eol
    chunked = st.builds(
        lambda parts, end: b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + end,
        st.lists(st.binary(min_size=1, max_size=40), max_size=4),
        st.sampled_from([b"0\r\n\r\n", b"0\r\nX: y\r\n\r\n", b"", b"zz\r\n", b"0\r\n"]),
    )
    body = draw(st.one_of(st.just(b""), st.just(b""), st.just(b""), chunked, chunked, st.binary(max_size=64)))
    if draw(st.booleans()) and draw(st.booleans()):  # a body with its length, as most clients send
        data = draw(st.binary(max_size=200))
        head = head[: -len(eol)] + b"Content-Length: %d" % len(data) + eol + eol
        body = data
    return head + body


@dataclass
class Script:
    chunks: list[bytes]
    pauses: list[float]
    abort: bool


@st.composite
def script(draw: st.DrawFn) -> Script:
    data = b"".join(draw(st.lists(request(), min_size=1, max_size=3)))
    cuts = sorted(draw(st.lists(st.integers(0, max(0, len(data))), max_size=4)))
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True) if data[a:b]]
    pauses = [draw(st.sampled_from([0.0, 0.0, 0.01, 0.05])) for _ in chunks]
    return Script(chunks, pauses, draw(st.booleans()) and draw(st.booleans()))


# --- running a script against the router


@dataclass
class Outcome:
    connections: int = 0
    answered: int = 0
    closed_silently: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


async def play(port: int, plan: Script, outcome: Outcome) -> None:
    outcome.connections += 1
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for chunk, pause in zip(plan.chunks, plan.pauses, strict=True):
            if writer.is_closing():
                break
            try:
                writer.write(chunk)
                await asyncio.wait_for(writer.drain(), SETTLE)
            except (ConnectionError, TimeoutError, RuntimeError):  # closed by the router meanwhile
                break
            if pause:
                await asyncio.sleep(pause)
        if plan.abort:
            writer.transport.abort()
            return
        data, closed = await read_all(reader)
        sent = b"".join(plan.chunks)
        if not closed:
            outcome.problems.append(f"still open {SETTLE}s after the last byte of {sent[:80]!r}")
        if data:
            if not data.startswith(STATUS):
                outcome.problems.append(f"not a status line: {data[:60]!r}")
            elif b"HEAD" not in sent and not well_formed(data):  # a HEAD answer has no body to parse
                outcome.problems.append(f"answers that do not parse: {data[:120]!r} for {sent[:80]!r}")
            status = data[9:12].decode("latin-1")
            outcome.statuses[status] = outcome.statuses.get(status, 0) + 1
            outcome.answered += 1
        else:
            outcome.closed_silently += 1
    finally:
        writer.close()


def well_formed(data: bytes) -> bool:
    """Whether `data` parses as a run of HTTP responses (the last may be cut short)."""
    parser = HttpResponseParser(object())
    try:
        parser.feed_data(data)
    except HttpParserUpgrade:
        return True  # a 101: what follows is another protocol's
    except HttpParserError:
        return False
    return True


async def read_all(reader: asyncio.StreamReader) -> tuple[bytes, bool]:
    """What arrives within SETTLE seconds, and whether the router closed the connection."""
    data = b""
    deadline = time.monotonic() + SETTLE
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return data, False
        try:
            got = await asyncio.wait_for(reader.read(65536), left)
        except TimeoutError:
            return data, False
        except ConnectionError:
            return data, True
        if not got:
            return data, True
        data += got


# --- the world: instances and the router


def fast_instance() -> tuple[subprocess.Popen[str], str]:
    """The benchmark upstream (bench/upstream.py), and its address."""
    proc = subprocess.Popen([sys.executable, str(HERE / "upstream.py")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    with proc.stdout:
        return proc, f"127.0.0.1:{int(proc.stdout.readline())}"


def hung_instance() -> tuple[socket.socket, str]:
    """An instance that never answers: the kernel accepts connections that nobody reads."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    return sock, f"127.0.0.1:{sock.getsockname()[1]}"


def table(fast: str, hung: str) -> RoutingTable:
    pools = (Pool(revision="app", version="app", weight=100, backends=(Backend(id="app-0", address=fast),)),
             Pool(revision="hung", version="hung", weight=0, backends=(Backend(id="hung-0", address=hung),)))
    rules = (MatchRule(revision="hung", header="X-Route", values=("hung",)),
             MatchRule(revision="hung", cookie="uid", values=("hung",)))
    return RoutingTable(generation=1, pools=pools, rules=rules, timeouts=TIMEOUTS)


def worker_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Fuzz:
    def __init__(
        self, loop: asyncio.AbstractEventLoop, router: BuiltinRouter, port: int, worker: int
    ) -> None:
        self.loop, self.router, self.port, self.worker = loop, router, port, worker
        self.outcome = Outcome()

    def batch(self, number: int, examples: int) -> None:
        @seed(number)
        @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
                  suppress_health_check=list(HealthCheck))
        @given(st.lists(script(), min_size=1, max_size=12))
        def example(plans: list[Script]) -> None:
            self.loop.run_until_complete(self.one(plans))

        example()

    async def one(self, plans: list[Script]) -> None:
        await asyncio.gather(*(play(self.port, p, self.outcome) for p in plans))
        health = await self.router.health()
        if int(str(health["pid"])) != self.worker:
            raise AssertionError(f"the worker was replaced (crashed?): {health}")
        if self.outcome.problems:
            raise AssertionError(self.outcome.problems[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--memory-mb", type=float, default=20.0)
    parser.add_argument("--batch", type=int, default=200, help="hypothesis examples per batch")
    args = parser.parse_args()
    result = run(args.minutes * 60, args.memory_mb, args.batch)
    out = HERE / "results" / "fuzz_router.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    if not result["ok"]:
        raise SystemExit(1)


def run(seconds: float, memory_mb: float, batch: int = 200) -> dict[str, object]:
    """Fuzz for `seconds`; the summary says whether every check held (`ok`)."""
    loop = uvloop.new_event_loop()
    state = Path(tempfile.mkdtemp(prefix="tfz-"))
    fast_proc, fast = fast_instance()
    hung_sock, hung = hung_instance()
    router = BuiltinRouter(state, listen="127.0.0.1:0", preview_listen=None)
    started = time.monotonic()
    summary: dict[str, object] = {}
    try:
        loop.run_until_complete(router.ensure_running())
        loop.run_until_complete(router.apply(table(fast, hung)))
        health = loop.run_until_complete(router.health())
        port, worker = int(str(health["listen"]).rsplit(":", 1)[1]), int(str(health["pid"]))
        fuzz = Fuzz(loop, router, port, worker)
        fuzz.batch(0, 50)  # warm-up: every path once, then the memory baseline
        baseline, peak, number, error = worker_rss(worker), 0, 1, ""
        while time.monotonic() - started < seconds and not error:
            try:
                fuzz.batch(number, batch)
            except AssertionError as exc:
                error = str(exc)
            loop.run_until_complete(asyncio.sleep(TIMEOUTS.idle + 0.5))  # let deadlines close what is left
            busy = {k: v for k, v in loop.run_until_complete(router.stats()).in_flight.items() if v}
            if busy and not error:
                error = f"requests left in flight after the batch settled: {busy}"
            peak = max(peak, worker_rss(worker))
            o = fuzz.outcome
            print(f"batch {number}: {o.connections} connections, {o.answered} answered, "
                  f"{o.closed_silently} closed, RSS +{(peak - baseline) / 2**20:.1f} MiB "
                  f"after {time.monotonic() - started:.0f}s", flush=True)
            number += 1
        grew = (peak - baseline) / 2**20
        if not error and grew > memory_mb:
            error = f"worker memory grew {grew:.1f} MiB (budget {memory_mb} MiB)"
        o = fuzz.outcome
        summary = {"ok": not error, "error": error, "seconds": round(time.monotonic() - started),
                   "batches": number - 1, "connections": o.connections, "answered": o.answered,
                   "closed_silently": o.closed_silently, "statuses": o.statuses,
                   "rss_baseline_mib": round(baseline / 2**20, 1), "rss_growth_mib": round(grew, 1)}
        print(json.dumps(summary), flush=True)
    finally:
        loop.run_until_complete(router.stop())
        loop.run_until_complete(router.aclose())
        loop.close()
        fast_proc.terminate()
        fast_proc.wait(10)
        hung_sock.close()
        shutil.rmtree(state, ignore_errors=True)
    return summary


if __name__ == "__main__":
    main()
