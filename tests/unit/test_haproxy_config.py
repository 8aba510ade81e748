"""haproxy.cfg as `turnout.routers.haproxy.config` renders it: byte-stable, slots written as
the runtime API left them, the table's timeouts and limits, and nothing a line cannot hold.
(`tests/integration/test_haproxy_process.py` has HAProxy itself check a rendered file.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from turnout.routers.haproxy.config import Health, Layout, Pool, Service, Slot, render
from turnout.routers.table import Limits, Timeouts

FOLDER = Path("/run/t")


def made(*slots: Slot, **changes: object) -> Layout:
    pools = (Pool(slots=slots, revision="r2", weight=10), Pool(slots=(Slot(),) * len(slots)))
    service = Service(name="web", listen="127.0.0.1:8080", preview_listen="127.0.0.1:8081",
                      pools=pools, default_pool=0, preview_pool=1,
                      health=Health(path="/ready", interval=0.5, timeout=1.5))
    return Layout(folder=FOLDER, services=(service,), **changes)  # type: ignore[arg-type]


def section(text: str, head: str) -> list[str]:
    blocks = {block.splitlines()[0]: block.splitlines()[1:] for block in text.split("\n\n") if block}
    return [line.strip() for line in blocks[head]]


def test_the_same_layout_renders_the_same_bytes_and_a_slot_change_only_its_line() -> None:
    first = made(Slot("127.0.0.1:9001", "ready"), Slot())
    assert render(first) == render(made(Slot("127.0.0.1:9001", "ready"), Slot()))
    second = made(Slot("127.0.0.1:9001", "ready"), Slot("127.0.0.1:9002", "ready"))
    changed = [(a, b) for a, b in zip(render(first).splitlines(), render(second).splitlines(), strict=True)
               if a != b]
    assert changed == [("    server s1 127.0.0.1:1 disabled", "    server s1 127.0.0.1:9002")]


def test_slots_are_written_with_their_address_and_only_ready_ones_serve() -> None:
    text = render(made(Slot("127.0.0.1:9001", "ready"), Slot("[::1]:9002", "drain"),
                       Slot("127.0.0.1:9003", "maint"), Slot()))
    servers = [line for line in section(text, "backend web_p0") if line.startswith("server ")]
    assert servers == ["server s0 127.0.0.1:9001", "server s1 [::1]:9002 disabled",
                       "server s2 127.0.0.1:9003 disabled", "server s3 127.0.0.1:1 disabled"]
    backend = section(text, "backend web_p0")
    assert backend[0] == "# revision r2, weight 10"
    assert "http-check send meth GET uri '/ready'" in backend
    assert "timeout check 1500ms" in backend
    assert "default-server check inter 500ms fall 3 rise 2" in backend
    assert len([line for line in section(text, "backend web_p1") if line.startswith("server ")]) == 4


def test_frontends_listen_and_route_to_their_pool_or_to_the_given_lines() -> None:
    text = render(made(Slot()))
    assert section(text, "frontend web")[0] == "bind 127.0.0.1:8080"
    assert section(text, "frontend web")[-1] == "default_backend web_p0"
    assert section(text, "frontend web_preview")[0] == "bind 127.0.0.1:8081"
    assert section(text, "frontend web_preview")[-1] == "default_backend web_p1"
    base = made(Slot())
    routed = Layout(folder=FOLDER, services=(Service(
        name="web", listen="127.0.0.1:8080", pools=base.services[0].pools, default_pool=0,
        frontend_lines=("use_backend %[var(txn.pool)]",)),), global_lines=("lua-load '/x.lua'",))
    text = render(routed)
    assert section(text, "frontend web")[-1] == "use_backend %[var(txn.pool)]"
    assert not any(line.startswith("default_backend") for line in section(text, "frontend web"))
    assert "frontend web_preview" not in text
    assert section(text, "global")[-1] == "lua-load '/x.lua'"


def test_global_and_defaults_come_from_the_folder_and_the_tables_timeouts_and_limits() -> None:
    timeouts = Timeouts(header=3, idle=4, body=5, connect=0.25, response=7, send=8, tunnel=90)
    limits = Limits(max_header_size=64 * 1024, max_headers=50, max_connections=100)
    text = render(made(Slot(), timeouts=timeouts, limits=limits, buffer_requests=1024,
                       trust_forwarded=False))
    glob = section(text, "global")
    assert "stats socket '/run/t/admin.sock' mode 600 level admin" in glob
    assert "server-state-file '/run/t/server-state'" in glob
    assert {"master-worker", "maxconn 100", "tune.bufsize 66560", "tune.http.maxhdr 50",
            "hard-stop-after 90000ms"} <= set(glob)
    defaults = section(text, "defaults")
    assert {"timeout http-request 3000ms", "timeout http-keep-alive 4000ms", "timeout client 8000ms",
            "timeout connect 250ms", "timeout server 7000ms", "timeout tunnel 90000ms",
            "option redispatch", "retry-on conn-failure empty-response", "retries 3",
            "option idle-close-on-response",
            "load-server-state-from-file global", "option http-buffer-request"} <= set(defaults)
    assert "http-request set-header X-Forwarded-Proto http" in section(text, "frontend web")
    trusting = section(render(made(Slot())), "frontend web")
    assert any(line.endswith("unless { req.hdr(x-forwarded-proto) -m found }") for line in trusting)
    assert "option http-buffer-request" not in render(made(Slot()))


def test_what_a_line_cannot_hold_is_refused() -> None:
    with pytest.raises(ValueError, match="line break"):
        render(Layout(folder=FOLDER, services=(Service(name="web\nx", listen="127.0.0.1:1", pools=()),)))
    with pytest.raises(ValueError, match="cannot hold"):
        render(Layout(folder=Path("/tmp/it's"), services=()))
    with pytest.raises(ValueError, match="host:port"):
        render(made(Slot("localhost", "ready")))
    # a revision's name only lands in a comment, its whitespace flattened
    pools = (Pool(slots=(Slot(),), revision="r\n2", weight=1),)
    text = render(Layout(folder=FOLDER, services=(Service(name="web", listen="127.0.0.1:1", pools=pools),)))
    assert "# revision r 2, weight 1" in text


def test_a_pools_own_lines_come_before_its_slots() -> None:
    timed = Pool(slots=(Slot(),), lines=("http-response set-var(txn.t) str(1)",))
    service = Service(name="web", listen="127.0.0.1:1", pools=(timed,))
    text = render(Layout(folder=FOLDER, services=(service,)))
    backend = section(text, "backend web_p0")
    assert backend[-2:] == ["http-response set-var(txn.t) str(1)", "server s0 127.0.0.1:1 disabled"]
