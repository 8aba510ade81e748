"""One backend's `server` lines in a user's HAProxy configuration, rewritten from the runtime.

An adopted HAProxy (`turnout.routers.haproxy.adopted`) is the user's, and so is its
configuration file: turnout changes the `server` lines of the one backend it owns and
nothing else, so that a reload of that file keeps the routing the runtime API set. Every
other byte stays as it was: the text is split into lines with their own endings, and only
the `server` lines inside the backend's section (from its `backend <name>` or `listen
<name>` line to the next section keyword) are replaced.

A server line becomes `server <name> <address> <the user's other parameters> weight <w>`,
plus `disabled` unless the server is ready: address, weight and state as HAProxy has them
when the file is written. The user's other parameters (health checks, timeouts, ...) keep
their order, and the line keeps its indentation, a trailing comment and its line ending;
`weight`, `disabled` and `enabled` are turnout's to write.

`replace_file` writes the file in one rename, keeping its mode and, where allowed, owner.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from turnout.addresses import join_host_port
from turnout.files import write_atomic
from turnout.routers.haproxy.runtime import ServerState

# The keywords that open a section of haproxy.cfg (HAProxy 2.6).
SECTIONS = frozenset({
    "global", "defaults", "frontend", "backend", "listen", "peers", "resolvers", "userlist",
    "mailers", "program", "http-errors", "ring", "cache", "fcgi-app", "log-forward",
})
OURS = frozenset({"weight", "disabled", "enabled"})  # what turnout writes on a server line
_COMMENT = re.compile(r"(?:^|\s+)#")


def _words(line: str) -> list[str]:
    """The words of a line before any comment."""
    found = _COMMENT.search(line)
    return (line[:found.start()] if found else line).split()


def section(lines: list[str], backend: str) -> tuple[int, int]:
    """(first, end) line indices of the backend's section (`backend` or `listen`), its own line
    first; ValueError when the text has none or more than one."""
    starts = [i for i, line in enumerate(lines)
              if (w := _words(line))[:1] in (["backend"], ["listen"]) and w[1:2] == [backend]]
    if len(starts) != 1:
        raise ValueError(f"{'no' if not starts else 'more than one'} `backend {backend}` section")
    first = starts[0]
    end = next((i for i in range(first + 1, len(lines)) if _words(lines[i])[:1]
                and _words(lines[i])[0] in SECTIONS), len(lines))
    return first, end


def server_lines(text: str, backend: str) -> dict[str, int]:
    """The backend's `server` lines: server name -> line index. ValueError as `section`, or
    for a `server` line without a name and address."""
    lines = text.splitlines(keepends=True)
    first, end = section(lines, backend)
    found = {}
    for i in range(first + 1, end):
        words = _words(lines[i])
        if words[:1] == ["server"]:
            if len(words) < 3:
                raise ValueError(f"line {i + 1}: a server line without name and address")
            found[words[1]] = i
    return found


def rewrite(text: str, backend: str, servers: Mapping[str, ServerState]) -> str:
    """`text` with the backend's `server` lines saying what `servers` (by name) say; every
    other line as it was. ValueError as `server_lines`, or for a server the text lacks."""
    lines = text.splitlines(keepends=True)
    at = server_lines(text, backend)
    missing = sorted(set(servers) - set(at))
    if missing:
        raise ValueError(f"no `server` line for {', '.join(missing)} in backend {backend}")
    for name, state in servers.items():
        lines[at[name]] = server_line(lines[at[name]], state)
    return "".join(lines)


def server_line(line: str, state: ServerState) -> str:
    """One `server` line rewritten for `state`, keeping indentation, the user's other
    parameters, a trailing comment and the line ending."""
    body = line.rstrip("\r\n")
    ending = line[len(body):]
    found = _COMMENT.search(body)
    comment = body[found.start():] if found else ""
    words = (body[:found.start()] if found else body).split()
    indent = body[:len(body) - len(body.lstrip())]
    kept: list[str] = []
    params = iter(words[3:])
    for word in params:
        if word == "weight":
            next(params, None)
        elif word not in OURS:
            kept.append(word)
    made = ["server", words[1], join_host_port(state.host, state.port), *kept, "weight", str(state.weight)]
    if state.state != "ready":
        made.append("disabled")
    return f"{indent}{' '.join(made)}{comment}{ending}"


def outside(text: str, backend: str) -> str:
    """Everything but the backend's section (for comparing what turnout may not touch)."""
    lines = text.splitlines(keepends=True)
    first, end = section(lines, backend)
    return "".join(lines[:first] + lines[end:])


def replace_file(path: Path, data: bytes) -> None:
    """Replace the file `path` names (a symbolic link's target) in one rename, keeping its
    mode and, where this process may, its owner and group. Raises OSError."""
    real = path.resolve()
    write_atomic(real, data, like=real.stat())
