"""The checks the models cannot make on a spec's plain data, each problem at its path:
unknown placeholders, a preview address equal to the listen address, a health timeout
longer than its deadline, a user listed twice in the canary's match rules.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

from turnout.spec import Health, split_address
from turnout.specfile.problems import Problems
from turnout.spectext import FieldPath, dotted, format_duration
from turnout.units import parse_duration

PLACEHOLDERS = ("port", "version", "slot")


def value_at(data: Any, *path: str) -> Any:
    """The value at `path` in plain data, or None where a part is missing or not a mapping."""
    for part in path:
        data = data.get(part) if isinstance(data, dict) else None
    return data


def check_semantics(data: dict[str, Any], problems: Problems) -> None:
    """Add to `problems` what the models cannot check in `data` (before they validate it)."""
    _check_placeholders(data, problems)
    _check_addresses(data, problems)
    _check_health(data, problems)
    _check_strategy(data, problems)


def _check_placeholders(data: dict[str, Any], problems: Problems) -> None:
    run = value_at(data, "run")
    places: list[tuple[FieldPath, Any]] = [(("run", "cwd"), value_at(run, "cwd"))]
    command = value_at(run, "command")
    if isinstance(command, list):
        places += [(("run", "command", i), arg) for i, arg in enumerate(command)]
    env = value_at(run, "env")
    if isinstance(env, dict):
        places += [(("run", "env", name), value) for name, value in env.items()]
    for path, text in places:
        if not isinstance(text, str):
            continue
        for name in re.findall(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", text):
            if name not in PLACEHOLDERS:
                close = difflib.get_close_matches(name.lower(), PLACEHOLDERS, n=1)
                hint = f"; did you mean {{{close[0]}}}?" if close else ""
                known = ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
                problems.add(
                    path, f"unknown placeholder {{{name}}}: only {known} are filled in{hint}"
                )


def _check_addresses(data: dict[str, Any], problems: Problems) -> None:
    listen, preview = value_at(data, "listen"), value_at(data, "routing", "preview_listen")
    if not isinstance(preview, str):
        return
    path = ("routing", "preview_listen")
    try:
        preview_host, preview_port = split_address(preview)
    except ValueError as exc:
        problems.add(path, str(exc))
        return
    try:
        host, port = split_address(listen if isinstance(listen, str) else "127.0.0.1:8080")
    except ValueError:
        return
    wildcard = {"", "0.0.0.0", "::", "[::]", "*"}
    if port == preview_port and (host == preview_host or {host, preview_host} & wildcard):
        problems.add(path, f"must differ from listen ({listen or '127.0.0.1:8080'})")


def _duration_or(value: Any, default: float) -> float | None:
    if value is None:
        return default
    try:
        return parse_duration(value)
    except ValueError:
        return None


def _check_health(data: dict[str, Any], problems: Problems) -> None:
    health = value_at(data, "health")
    fields = Health.model_fields
    timeout = _duration_or(value_at(health, "timeout"), fields["timeout"].default)
    deadline = _duration_or(value_at(health, "deadline"), fields["deadline"].default)
    if timeout is None or deadline is None or timeout <= deadline:
        return
    if value_at(health, "timeout") is not None:
        message = f"{format_duration(timeout)} is longer than health.deadline"
        problems.add(("health", "timeout"), f"{message} ({format_duration(deadline)})")
    else:
        message = f"{format_duration(deadline)} is shorter than health.timeout"
        problems.add(("health", "deadline"), f"{message} ({format_duration(timeout)}, the default)")


def _check_strategy(data: dict[str, Any], problems: Problems) -> None:
    # Which kind reads which field is the models' rule (`turnout.spec`); a user listed twice
    # is found here, where the path of the second listing is known.
    _check_users(value_at(data, "strategy", "match"), problems)


def _check_users(match: Any, problems: Problems) -> None:
    if not isinstance(match, list):
        return
    first: dict[str, FieldPath] = {}
    for i, rule in enumerate(match):
        users = value_at(rule, "users")
        for j, user in enumerate(users if isinstance(users, list) else []):
            path: FieldPath = ("strategy", "match", i, "users", j)
            if not isinstance(user, str):
                continue
            if user in first:
                problems.add(path, f"user {user!r} is already listed at {dotted(first[user])}")
            first.setdefault(user, path)
