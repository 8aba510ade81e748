"""Where and how instances run: the command and its environment, the health check, the platform.

`Run` is what starts one instance (argv, never a shell; a clean environment plus the names
it inherits), `Health` what it must pass before it gets traffic, `PlatformChoice` where it
runs (the kinds are those `turnout.wiring` knows).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Discriminator, Field, Tag, field_validator

from turnout.spec.hosts import SshPlatformSpec
from turnout.spec.values import Strict, kind_schema, kind_shorthand, numbers_as_text
from turnout.units import Duration


class PlatformChoice(Strict):
    """Where instances run. The kinds are those `turnout.wiring` knows."""

    kind: str = Field(default="local", description="local: processes on this machine")

    @property
    def max_unavailable_hosts(self) -> int:
        """Hosts a deployment may lose and go on: none, where instances are not on hosts."""
        return 0


def _platform_tag(value: object) -> str:
    kind = value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)
    return "ssh" if kind == "ssh" else "other"


# `ssh` has its own fields (`turnout.spec.hosts`); every other kind is only named here, and
# `turnout.wiring` refuses a kind it does not know.
PlatformField = Annotated[
    Annotated[PlatformChoice, Tag("other")] | Annotated[SshPlatformSpec, Tag("ssh")],
    Discriminator(_platform_tag),
    BeforeValidator(kind_shorthand),
    kind_schema("local: processes on this machine; ssh: units on hosts (see `hosts`)"),
]


# A number or a boolean is read as its text (`--workers, 2`; `DEBUG: false`), and the schema
# for editors says so.
TEXT_LIKE: dict[str, Any] = {"type": ["string", "number", "boolean"]}

# What instances and test commands take from the deployer's environment unless the spec says
# otherwise: enough to find programs and speak the user's locale, and no tokens or credentials.
INHERIT_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Run(Strict):
    """How to start one instance of the service."""

    command: list[str] = Field(
        min_length=1, description="argv, never a shell; {port} {version} {slot}",
        json_schema_extra={"items": TEXT_LIKE},
    )
    cwd: str = Field(default=".", description="relative to the spec file; {version} substituted")
    env: dict[str, str] = Field(
        default_factory=dict,
        description="extra environment; PORT and TURNOUT_VERSION are always set",
        json_schema_extra={"additionalProperties": TEXT_LIKE},
    )
    inherit_env: list[str] = Field(
        default_factory=lambda: list(INHERIT_ENV),
        description="names of variables passed on from turnout's own environment; nothing else is "
        "(instances and blue-green test commands get these, `env` and the TURNOUT_* variables)",
    )
    grace: Duration = Field(default=10.0, description="SIGTERM, then SIGKILL after this long")

    @field_validator("command", mode="before")
    @classmethod
    def _argv_text(cls, value: object) -> object:
        return [numbers_as_text(v) for v in value] if isinstance(value, list) else value

    @field_validator("env", mode="before")
    @classmethod
    def _env_text(cls, value: object) -> object:
        if isinstance(value, dict):
            return {k: numbers_as_text(v) for k, v in value.items()}
        return value

    @field_validator("inherit_env")
    @classmethod
    def _variable_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not a variable name (letters, digits, _; no digit first)")
            if name == "PORT" or name.startswith("TURNOUT_"):
                raise ValueError(f"{name} is set by turnout for each instance; it cannot be inherited")
        if len(set(value)) != len(value):
            raise ValueError("each name may appear once")
        return value


class Health(Strict):
    """The HTTP health check every new instance must pass before it gets traffic."""

    path: str = Field(default="/healthz", description="requested with GET; any 2xx means healthy")
    interval: Duration = Field(default=1.0, description="time between two checks")
    timeout: Duration = Field(default=2.0, description="how long one check may take")
    deadline: Duration = Field(
        default=30.0, description="how long a new instance may take to become healthy"
    )

    @field_validator("path")
    @classmethod
    def _path_starts_with_slash(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with /")
        return value
