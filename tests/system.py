"""What the tests do when a system program they need is missing (PostgreSQL, Prometheus)."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def missing(message: str) -> NoReturn:
    """A failure as root, where scripts/install-system-deps.sh installs what `make test`
    needs; a skip, saying what to install, for anyone else."""
    if os.geteuid() == 0:
        pytest.fail(f"{message} (scripts/install-system-deps.sh does it as root)")
    pytest.skip(message)
