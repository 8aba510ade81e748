"""What a `SetFlag` step writes: an Unleash flag definition for the ramp so far.

Users become a `userWithId` strategy, each segment a `flexibleRollout` at 100% limited
to that segment, the percentage a `flexibleRollout` sticky on the user key with the
flag's name as group id (so a user in at 10% stays in at 50%). Everything else in the
flag's definition (description, variants, dependencies) is kept as the user wrote it.
"""

from __future__ import annotations

from typing import Any

from turnout.engine.control import StepFailed
from turnout.engine.events import Event, Record
from turnout.errors import RouterError, UserError
from turnout.flags.store import FlagStore
from turnout.plan import SetFlag, describe
from turnout.routers.base import Router
from turnout.spec import Spec


def ramp_strategies(
    step: SetFlag, segment_ids: dict[str, int], sticky: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """The strategies of the ramp so far; `sticky` (stickiness and groupId) is what the flag's
    percentage already used, kept so that raising it keeps every user it had."""
    sticky = sticky or {"stickiness": "default", "groupId": step.flag}
    strategies: list[dict[str, Any]] = []
    if step.users:
        strategies.append({"name": "userWithId", "parameters": {"userIds": ",".join(step.users)}})
    for name in step.segments:
        if name not in segment_ids:
            raise UserError(f"strategy.ramp: segment {name!r} does not exist; create it with `turnout flags`")
        strategies.append({
            "name": "flexibleRollout",
            "parameters": {"rollout": "100", "stickiness": "default", "groupId": step.flag},
            "segments": [segment_ids[name]],
        })
    if step.percent:
        strategies.append({
            "name": "flexibleRollout",
            "parameters": {"rollout": str(step.percent), **sticky},
        })
    return strategies


def flag_definition(
    step: SetFlag, existing: dict[str, Any] | None, segment_ids: dict[str, int]
) -> dict[str, Any]:
    """The definition to store: `existing` with the ramp's strategies and on/off state."""
    definition: dict[str, Any] = dict(existing or {"name": step.flag, "type": "release"})
    # An enabled Unleash flag without strategies is on for everyone: say "nobody" explicitly.
    nobody = [{"name": "flexibleRollout",
               "parameters": {"rollout": "0", "stickiness": "default", "groupId": step.flag}}]
    if step.enabled:
        definition["strategies"] = ramp_strategies(step, segment_ids, _sticky(existing)) or nobody
    else:  # off: the rollout stays as it was, ready to be looked at
        definition["strategies"] = definition.get("strategies") or nobody
    definition["enabled"] = step.enabled
    return definition


def _sticky(existing: dict[str, Any] | None) -> dict[str, str] | None:
    """The stickiness and groupId of the flag's sticky percentage (a flexibleRollout without
    segments), if it has one: a user counted in at 10% with them is still in at 50%."""
    for strategy in (existing or {}).get("strategies") or []:
        params = strategy.get("parameters") or {}
        percentage = strategy.get("name") == "flexibleRollout" and not strategy.get("segments")
        if percentage and "groupId" in params:
            stickiness = str(params.get("stickiness") or "default")
            return {"stickiness": stickiness, "groupId": str(params["groupId"])}
    return None


class FlagWriter:
    """Runs `SetFlag` steps: the definition goes to the flag store, the store's state (with its
    revision) to the router, which applies it to the very next request. When the app evaluates
    the flag (`strategy.evaluated_by: app`), the router is not told: the app's SDK has the
    change from `turnout server`, whose event stream carries it within about 100 ms."""

    def __init__(self, *, spec: Spec, flags: FlagStore | None, router: Router, record: Record) -> None:
        self.spec, self.flags, self.router, self.record = spec, flags, router, record

    async def set(self, step: SetFlag) -> None:
        if self.flags is None:
            raise StepFailed("no flag store is configured")
        existing = self.flags.flag(step.flag)
        segments = {str(s["name"]): int(s["id"]) for s in self.flags.segments()}
        definition = flag_definition(step, existing.definition if existing else None, segments)
        who = f"turnout deploy ({self.spec.service})"
        if existing is None:
            self.flags.create(definition, who=who)
        else:
            self.flags.update(step.flag, definition, who=who)
        evaluate = self.spec.router_flags()
        if evaluate:  # else the app evaluates the flag: its SDK has the change from the server
            state = self.flags.state()  # its meta.revision is read in the same transaction
            try:
                await self.router.set_flags(state, evaluate=evaluate,
                                            header=self.spec.routing.flags_header,
                                            revision=state["meta"]["revision"])
            except RouterError as exc:
                raise StepFailed(f"router: {exc}") from exc
        self.record(Event("flag", describe(step),
                          data={"flag": step.flag, "enabled": step.enabled, "percent": step.percent}))
