"""Hand a new flag state to the router of a service, if one runs and evaluates flags.

The `turnout flags` CLI calls `push_to_router` after every change so that a router that
evaluates flags per request (see `turnout.routers.proxy.flags`) switches at once, and
`turnout server` calls it for every revision it sees. The router is the one the spec
names, built by `turnout.wiring` and reached only through `Router.set_flags`. The state
goes with its revision (the flag store's counter, `meta.revision` of the document) and
nothing else: the router keeps which flags it evaluates and the header it forwards them
in. Several processes push at once, so the router refuses a revision older than the one
it holds; that refusal is `RouterHasNewer`, which carries the router's revision so the
caller can tell a newer state of the same store (nothing to do) from a router fed by
another database.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from turnout import wiring
from turnout.routers.base import Capability, RouterHasNewer

__all__ = ["RouterHasNewer", "push_flags", "push_to_router", "state_revision"]


def state_revision(state: dict[str, Any]) -> int:
    """The flag store revision a state document reflects (`meta.revision`)."""
    meta = state.get("meta")
    revision = meta.get("revision") if isinstance(meta, dict) else None
    if isinstance(revision, bool) or not isinstance(revision, int):
        raise ValueError("a flag state to push needs its meta.revision (FlagStore.state gives it)")
    return revision


async def push_flags(where: Path, state: dict[str, Any]) -> bool:
    """Put `state` in effect at the router of `where` (a spec file, or a folder holding
    `turnout.yaml`); whether it was pushed.

    Nothing is pushed, and that is no error, without a spec there, when the router does
    not run, or when it does not evaluate flags (it says so by lacking the `flags`
    capability). A router holding a newer revision raises `RouterHasNewer`; one that
    refuses otherwise, or stops answering, raises `RouterError`; an invalid spec, SpecError.
    """
    revision = state_revision(state)
    router = wiring.flag_router(where)
    if router is None:
        return False
    try:
        if Capability.FLAGS not in router.capabilities or not (await router.describe()).running:
            return False
        await router.set_flags(state, revision=revision)
    finally:
        await router.aclose()
    return True


def push_to_router(where: Path, state: dict[str, Any]) -> bool:
    """`push_flags` for synchronous callers (the CLI, a server's worker thread); called from
    a thread whose event loop runs, it blocks that thread like any other blocking call."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(push_flags(where, state))
    with ThreadPoolExecutor(max_workers=1) as pool:  # asyncio.run needs a thread of its own
        return pool.submit(asyncio.run, push_flags(where, state)).result()
