"""Fakes beside the seams, so unit tests pass collaborators in through constructors.

`FakeClock` makes a ten-minute pause instant; `FakePlatform` "runs" instances as records
with made-up ports and can be told that a revision fails to start, exits at once or
answers its health check with 500; `FakeRouter` keeps every table it was given and
reports counters a test sets per revision (to drive gates). Both pass the same contract
suites as the real adapters (tests/contract): `reopen()` is a restarted control plane
over the same fake machine, and the router keeps its table and flags across a stop.
`fake_http` answers HTTP for the fake instances through httpx's own `MockTransport`, so
the engine's real health checks run unchanged. A shared `Journal` records starts, stops
and table applies in one order, and flags any instance stopped while the table in effect
still lists it: the DESIGN's "remove from the router first" rule, checked on every test
for free. One module per fake: `clock`, `journal`, `platform`, `router`.

Wherever a fake takes a set of names, an entry names a revision (its id or its version)
or one instance (its id, `<revision id>-<slot>`).
"""

from __future__ import annotations

from turnout.testing.clock import FakeClock
from turnout.testing.journal import Journal
from turnout.testing.platform import FakePlatform, fake_http
from turnout.testing.router import FakeRouter, traffic

__all__ = ["FakeClock", "FakePlatform", "FakeRouter", "Journal", "fake_http", "traffic"]
