"""The one exception tree of turnout.

    TurnoutError
    ├── UserError            bad input: spec file, CLI argument, API body (exit 2)
    │   └── SpecError        names the file, line and field
    ├── ConflictError        another deployment holds the service lock (exit 1)
    ├── DeploymentFailed     the deployment failed or was aborted; previous version serves (exit 3)
    ├── PlatformError        starting or stopping instances failed
    ├── RouterError          the router could not be reached or refused a table
    ├── AnalysisError        a metric source could not read (server unreachable, query refused)
    └── StoreError           the state database failed

Adapters (platforms, routers, store, metric sources) convert the errors of sockets, processes and
databases into these at their edge, so nothing else leaks past them.
"""

from __future__ import annotations


class TurnoutError(Exception):
    """Base of every error turnout raises on purpose."""

    exit_code = 1


class UserError(TurnoutError):
    """The user's input is invalid; nothing was changed."""

    exit_code = 2


class SpecError(UserError):
    """An invalid spec file: one or more problems, each with file, line and field."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class ConflictError(TurnoutError):
    """Another deployment of the same service is in progress."""


class DeploymentFailed(TurnoutError):
    """The deployment did not complete; the previous version serves."""

    exit_code = 3


class PlatformError(TurnoutError):
    """An instance could not be started, found or stopped."""


class RouterError(TurnoutError):
    """The router is unreachable or did not put a table in effect."""


class AnalysisError(TurnoutError):
    """A metric source could not read: its server was unreachable or refused or garbled a query."""


class StoreError(TurnoutError):
    """The state database could not be read or written."""
