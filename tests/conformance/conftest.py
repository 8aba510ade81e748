"""Parametrises every test asking for ``spec_case`` with the client specification.

Each case of every file in the package's ``specifications/index.json`` becomes one
test, with id ``<file stem> :: <description>``. Fetching lives in ``unleash_spec``;
if it fails, collection fails.
"""

from __future__ import annotations

import pytest
from unleash_spec import load_cases


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "spec_case" in metafunc.fixturenames:
        cases = load_cases()
        metafunc.parametrize("spec_case", cases, ids=[case.id for case in cases])
