"""`host:port` addresses, read and written one way everywhere: spec fields, command-line
options, routing tables. IPv6 hosts are written in brackets (`[::1]:8080`) and read with
or without them.
"""

from __future__ import annotations

EXAMPLE = "127.0.0.1:8080"


def split_host_port(value: str, *, any_port: bool = False) -> tuple[str, int]:
    """(host, port) of `value`; ValueError saying what is expected otherwise.

    The port is 1-65535, or also 0 (a free port, chosen at bind time) with `any_port`.
    """
    host, sep, port = value.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    lowest = 0 if any_port else 1
    if not sep or not host or not port.isdigit() or not lowest <= int(port) <= 65535:
        raise ValueError(f"expected host:port such as {EXAMPLE}, got {value!r}")
    return host, int(port)


def join_host_port(host: str, port: int) -> str:
    """The address text of `host` and `port`, IPv6 hosts in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
