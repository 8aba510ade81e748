"""The service layer: what the CLI and the demo (and later the HTTP API) call.

`Session.open()` loads the spec and builds the store, and the platform and router it
names through `turnout.wiring` (the session holds them only as `Platform` and `Router`);
deploy, status, promote, abort, rollback, history and down are methods on it. A
per-service lock keeps two deployments apart (`lock`: an flock the kernel drops when its
holder dies, or a lease in a database other machines share), and a deployment whose
holder died is found in the store and resumed or undone.
A command that leaves a fleet warm starts the reaper (`turnout.reaper`), which ends the
rollback window on time with `reap_warm`.

`Session` is one class in two modules: `base` holds what every command shares (opening,
the lock, flags, the executor, running and resuming a plan, tidying, the reaper) and
`session` the commands themselves; `resume` decides whether a stored deployment may be
carried on with the spec at hand.
"""

from turnout.service.base import LOCK_WAIT
from turnout.service.session import Session

__all__ = ["LOCK_WAIT", "Session"]
