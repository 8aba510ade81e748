"""What a `SetFlag` step writes: an Unleash flag definition for the ramp so far.

Users become a `userWithId` strategy, each segment a `flexibleRollout` at 100% limited
to that segment, the percentage a `flexibleRollout` sticky on the user key with the
flag's name as group id (so a user in at 10% stays in at 50%). Everything else in the
flag's definition (description, variants, dependencies) is kept as the user wrote it.
"""

from __future__ import annotations

from typing import Any

from turnout.errors import UserError
from turnout.plan import SetFlag


def ramp_strategies(step: SetFlag, segment_ids: dict[str, int]) -> list[dict[str, Any]]:
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
            "parameters": {"rollout": str(step.percent), "stickiness": "default", "groupId": step.flag},
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
        definition["strategies"] = ramp_strategies(step, segment_ids) or nobody
    else:  # off: the rollout stays as it was, ready to be looked at
        definition["strategies"] = definition.get("strategies") or nobody
    definition["enabled"] = step.enabled
    return definition
