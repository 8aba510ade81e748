"""Whether a stored deployment may be carried on with the spec at hand.

A deployment is resumed (`turnout deploy` of the same version) or carried on (`turnout
promote` after its command died) only if the spec still plans it step for step from the
fleet it began with; otherwise the command is refused with exit 2 before anything acts.
"""

from __future__ import annotations

from turnout import strategies
from turnout.errors import UserError
from turnout.plan import load_plan, plan_hash, stored_plan_hash
from turnout.spec import STRATEGIES, Spec
from turnout.specfile import with_kind
from turnout.store.db import DeploymentRecord
from turnout.strategies import started_from


def refuse_changed_plan(record: DeploymentRecord, spec: Spec) -> None:
    """Refuse to carry `record` on (UserError: exit 2, nothing done) if its stored plan
    does not match its hash, or if `spec` no longer makes that plan from the fleet the
    deployment started from. A rollback's plan was not made by a strategy: only its hash
    is checked."""
    what = f"deployment #{record.id} of {record.version}"
    todo = (f"run `turnout abort` to go back to the previous version, or deploy {record.version} "
            f"with the spec it began with (strategy {record.strategy})")
    if stored_plan_hash(record.plan) != record.plan_hash:
        raise UserError(f"{what} cannot resume: its stored plan does not match its hash; {todo}")
    if record.strategy not in STRATEGIES:
        return
    if spec.strategy.kind != record.strategy:
        raise UserError(f"{what} cannot resume: it began with strategy {record.strategy} and "
                        f"the spec now says {spec.strategy.kind}; {todo}")
    try:
        steps = load_plan(record.plan)
    except ValueError as exc:  # a plan this version cannot read
        raise UserError(f"{what} cannot resume: its stored plan is unreadable ({exc}); {todo}") from None
    fleet = started_from(steps, target=record.target_revision, previous=record.previous_revision,
                         instances=spec.instances)
    again = strategies.plan(fleet, spec.strategy)
    if plan_hash(again) != record.plan_hash:
        raise UserError(f"{what} cannot resume: the spec changed since it began and now plans "
                        f"it otherwise ({len(steps)} steps stored, {len(again)} now); {todo}")


def spec_to_carry_on(spec: Spec, record: DeploymentRecord) -> Spec:
    """The spec a deployment is carried on with when no command names a strategy: `spec`,
    with the deployment's kind (it may have begun with `--strategy`)."""
    if record.strategy not in STRATEGIES or record.strategy == spec.strategy.kind:
        return spec
    try:
        return with_kind(spec, record.strategy)
    except UserError as exc:
        raise UserError(f"deployment #{record.id} of {record.version} cannot resume: it began with "
                        f"strategy {record.strategy}, which the spec cannot plan now ({exc}); run "
                        "`turnout abort`, or deploy it again with the spec it began with") from None
