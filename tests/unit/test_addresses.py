"""The one host:port reader and writer, and the addresses turnout writes with it."""

from __future__ import annotations

import pytest

from turnout.addresses import join_host_port, split_host_port
from turnout.model import Instance


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:8080", ("127.0.0.1", 8080)),
    (" localhost:1 ", ("localhost", 1)),
    ("[::1]:8080", ("::1", 8080)),
    ("::1:8080", ("::1", 8080)),
])
def test_reads_hosts_and_ports(text: str, expected: tuple[str, int]) -> None:
    assert split_host_port(text) == expected


@pytest.mark.parametrize("text", ["8080", ":8080", "host:", "host:http", "host:65536", "host:0", "[]:80"])
def test_refuses_what_is_not_host_port(text: str) -> None:
    with pytest.raises(ValueError, match=r"expected host:port such as 127\.0\.0\.1:8080"):
        split_host_port(text)


def test_port_zero_only_when_any_port_will_do() -> None:
    assert split_host_port("127.0.0.1:0", any_port=True) == ("127.0.0.1", 0)


@pytest.mark.parametrize(("host", "port"), [("127.0.0.1", 9000), ("::1", 9000), ("example.test", 1)])
def test_what_is_written_reads_back(host: str, port: int) -> None:
    text = join_host_port(host, port)
    assert split_host_port(text) == (host, port)
    instance = Instance(service="shop", revision="v1-x", version="v1", slot=0, host=host, port=port)
    assert instance.address == text
    assert ("[" in text) == (":" in host), "IPv6 hosts are written in brackets"
