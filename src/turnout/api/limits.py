"""The limits of `turnout server`: their defaults, their command-line options, their checks.

One frozen `Limits` travels from the command line to every connection. Defaults suit a
flag server facing many SDKs: a request head (request line and headers) of 16 KiB and
100 headers at most, 10 s to send a whole head (counted from its first byte, so a client
trickling one byte at a time cannot stretch it), 75 s of idle keep-alive, 64 requests
queued behind the one being answered, 1 MiB bodies, 4,096 connections, and 20 failed
authentications per address in 60 s before that address is answered 429 for 60 s.

A bad value exits 2 through argparse with a message naming the option.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    max_head: int = 16 * 1024  # bytes of request line + headers (431 beyond)
    max_headers: int = 100  # header lines (431 beyond)
    header_timeout: float = 10.0  # seconds from a head's first byte to its end (408)
    idle_timeout: float = 75.0  # seconds a keep-alive connection may wait for a request
    max_pipelined: int = 64  # requests parsed and queued behind the one being answered
    max_body: int = 1024 * 1024  # bytes of a request body (413 beyond)
    max_connections: int = 4096  # open client connections (503 and close beyond)
    auth_failures: int = 20  # failed authentications per address within auth_window ...
    auth_window: float = 60.0
    auth_block: float = 60.0  # ... answer 429 to that address for this long

    @property
    def sweep_s(self) -> float:
        """How often connections are checked against the timeouts (a quarter of the shortest)."""
        return max(0.05, min(1.0, min(self.header_timeout, self.idle_timeout) / 4))


DEFAULT = Limits()


def _whole(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = text.strip().replace("_", "")
        if not value.isdigit() or len(value) > 12 or not low <= int(value) <= high:
            raise argparse.ArgumentTypeError(
                f"expected a whole number from {low:,} to {high:,}, got {_shown(text)}")
        return int(value)

    return parse


def _seconds(low: float, high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not low <= value <= high:  # also refuses nan
            raise argparse.ArgumentTypeError(
                f"expected seconds from {low:g} to {high:g}, got {_shown(text)}")
        return value

    return parse


def _shown(text: str) -> str:
    return repr(text) if len(text) <= 40 else repr(text[:37] + "...")


# option, Limits field, parser, help
_OPTIONS: list[tuple[str, str, Callable[[str], object], str]] = [
    ("--max-header-bytes", "max_head", _whole(256, 1024 * 1024),
     "request line + headers, in bytes; larger heads get 431"),
    ("--max-headers", "max_headers", _whole(1, 10_000), "header lines per request; more get 431"),
    ("--header-timeout", "header_timeout", _seconds(0.1, 3600),
     "seconds to send a whole request head, from its first byte; then 408"),
    ("--idle-timeout", "idle_timeout", _seconds(0.1, 86_400),
     "seconds a keep-alive connection may wait for its next request (event streams excepted)"),
    ("--max-pipelined", "max_pipelined", _whole(1, 10_000),
     "requests queued behind the one being answered; the client is not read meanwhile"),
    ("--max-body-bytes", "max_body", _whole(1, 64 * 1024 * 1024), "request body; larger gets 413"),
    ("--max-connections", "max_connections", _whole(1, 1_000_000),
     "open client connections; more are answered 503 and closed"),
    ("--auth-failures", "auth_failures", _whole(1, 1_000_000),
     "failed authentications per client address within --auth-window before 429"),
    ("--auth-window", "auth_window", _seconds(0.1, 86_400), "seconds over which failures count"),
    ("--auth-block", "auth_block", _seconds(0.1, 86_400),
     "seconds an address is answered 429 (with Retry-After) without checking its token"),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The limit options of `turnout server`, each with its default in its help."""
    group = parser.add_argument_group("limits")
    for option, field, parse, help_text in _OPTIONS:
        default = getattr(DEFAULT, field)
        seconds = isinstance(default, float)
        group.add_argument(option, dest=field, type=parse, default=default,
                           metavar="SECONDS" if seconds else "N",
                           help=f"{help_text} (default {default:g})" if seconds
                           else f"{help_text} (default {default})")


def from_args(args: argparse.Namespace) -> Limits:
    return Limits(**{field: getattr(args, field) for _, field, _, _ in _OPTIONS})
