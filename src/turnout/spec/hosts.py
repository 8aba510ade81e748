"""The `ssh` platform's part of the spec: which hosts, how to reach them, what runs there.

```yaml
platform:
  kind: ssh
  hosts: [web1.internal, web2.internal, 10.0.0.7:2222]
  user: deploy
  identity: ~/.ssh/id_ed25519        # else the ssh-agent
  known_hosts: ~/.ssh/known_hosts    # host keys are always checked
  instances_per_host: 2              # the fleet is hosts x instances_per_host
  release: {upload: ./build/, to: "/srv/shop/releases/{version}"}   # or {path: ...}
```

The fleet's size follows from the hosts: a spec that also writes `instances` must agree
with `hosts x instances_per_host` (checked in `turnout.spec.Spec`). Slot `s` runs on host
`s // instances_per_host`, so consecutive slots share a host and a rolling batch of
`instances_per_host` replaces one host at a time.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from turnout.addresses import split_host_port
from turnout.spec.values import Strict
from turnout.units import Duration

SSH_PORT = 22


class Release(Strict):
    """Where the instances' files come from: a folder uploaded to each host, or one already there."""

    upload: str | None = Field(
        default=None, description="a local folder (relative to the spec file) copied to each host"
    )
    to: str | None = Field(
        default=None, description="where `upload` goes on each host; {version} substituted"
    )
    path: str | None = Field(
        default=None, description="a folder that already exists on every host; {version} substituted"
    )

    @model_validator(mode="after")
    def _one_source(self) -> Release:
        if self.path is not None:
            if self.upload is not None or self.to is not None:
                raise ValueError("give either `path` or `upload` with `to`, not both")
        elif self.upload is None or self.to is None:
            raise ValueError("give `upload` and `to` (copy a folder), or `path` (already there)")
        return self

    @field_validator("to", "path")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError("must be an absolute path on the hosts")
        return value

    def remote_folder(self, version: str) -> str:
        """The folder instances of `version` run in, on every host."""
        folder = self.path if self.path is not None else self.to
        assert folder is not None  # the validator guarantees one
        return folder.replace("{version}", version)


class SshPlatformSpec(Strict):
    """Instances as systemd units on hosts reached over SSH."""

    kind: Literal["ssh"] = "ssh"
    hosts: list[str] = Field(min_length=1, max_length=256, description="host or host:port, each once")
    user: str | None = Field(
        default=None, pattern=r"^[a-z_][a-z0-9_-]{0,31}$",
        description="the login on every host (default: your own); root runs system units, "
        "anyone else their own user units (lingering on)",
    )
    identity: str | None = Field(default=None, description="a private key file; else the ssh-agent")
    known_hosts: str = Field(
        default="~/.ssh/known_hosts", description="host keys are always checked against this file"
    )
    instances_per_host: int = Field(default=1, ge=1, le=64)
    release: Release | None = Field(
        default=None, description="the folder instances run in; without it, `run.cwd` on the hosts"
    )
    supervisor: Literal["systemd", "detached"] = Field(
        default="systemd", description="systemd: transient units (restarted on a crash, logs in "
        "the journal); detached: plain processes with a pid record, for hosts without systemd",
    )
    max_unavailable_hosts: int = Field(
        default=0, ge=0, description="hosts that may be lost during a deployment before it rolls back"
    )
    connect_timeout: Duration = Field(default=10.0, description="to open an SSH connection")
    command_timeout: Duration = Field(default=30.0, description="for one command on a host")
    commands_per_host: int = Field(
        default=4, ge=1, le=64, description="commands run at once on one host"
    )

    @field_validator("hosts")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        seen: set[tuple[str, int]] = set()
        for entry in value:
            where = host_address(entry)
            if where in seen:
                raise ValueError(f"{entry!r} is listed twice")
            seen.add(where)
        return value

    @model_validator(mode="after")
    def _keeps_some(self) -> SshPlatformSpec:
        if self.max_unavailable_hosts >= len(self.hosts):
            raise ValueError(
                f"max_unavailable_hosts must be below the number of hosts ({len(self.hosts)})"
            )
        return self

    @property
    def fleet_size(self) -> int:
        return len(self.hosts) * self.instances_per_host


def host_address(entry: str) -> tuple[str, int]:
    """`web1`, `web1:2222`, `[::1]:2222` -> (host, ssh port)."""
    if not entry or entry != entry.strip():
        raise ValueError(f"{entry!r} is not a host name or address")
    if entry.startswith("[") or entry.count(":") == 1:
        return split_host_port(entry)
    return entry, SSH_PORT  # a name, an IPv4 address or a bare IPv6 address
