"""`turnout flags`: list, show, create, update, switch, ramp and target flags from a shell.

A thin shell over ``turnout.flags.store.FlagStore`` on the service's state database (the
spec folder's ``.turnout/state.db``, or ``TURNOUT_DATABASE_URL``). The spec is found as
by every other command, with the group's own ``-f/--file``: ``turnout flags -f
svc.yaml create -f flag.yaml``. Changes are recorded as ``cli:<unix user>``. Bad input
exits 2 with the file and field of every problem, and nothing is changed: a file holding
several flags is checked whole before the first is stored. After a change the new state
is pushed to the service's builtin router when turnout has that ability installed
(``turnout.flags.push``) and the router runs. A router that does not take it makes the
command exit 1 with what happened and what to do: the store keeps the change either way,
and ``turnout flags push`` sends the store's state again.

The commands on flags are here; what they share (the store, the push, flag files) is in
``turnout.cli.flags_context``, and the ``token`` and ``segment`` groups in
``turnout.cli.flags_tokens`` and ``turnout.cli.flags_segments``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import yaml

from turnout.cli.flags_context import (
    FLAG_FILE,
    FlagsContext,
    in_file,
    pass_flags,
    push_state,
    read_flag_file,
    validated_list,
    who,
)
from turnout.cli.flags_segments import segment
from turnout.cli.flags_tokens import token
from turnout.errors import UserError
from turnout.flags.definition import FlagError
from turnout.flags.store import FlagRecord


def _summary(record: FlagRecord) -> str:
    strategies = record.definition.get("strategies", [])
    parts = []
    for strategy in strategies:
        params = strategy.get("parameters", {})
        if strategy["name"] == "flexibleRollout":
            parts.append(f"rollout {params.get('rollout')}%")
        elif strategy["name"] == "userWithId":
            parts.append(f"users {params.get('userIds')}")
        else:
            parts.append(strategy["name"])
        if strategy.get("constraints") or strategy.get("segments"):
            parts[-1] += " (with conditions)"
    return ", ".join(parts) or "everyone"


def _as_json(record: FlagRecord) -> dict[str, Any]:
    return {"name": record.name, "version": record.version, "archived": record.archived,
            "updated_at": record.updated_at, "definition": record.definition}


def _done(record: FlagRecord, what: str) -> None:
    state = "on" if record.definition["enabled"] else "off"
    click.echo(f"{record.name}: {what} (version {record.version}, {state}, {_summary(record)})")


@click.group("flags")
@click.option("-f", "--file", "spec_file", default=None, help="spec file (default: ./turnout.yaml)")
@click.pass_context
def flags_group(ctx: click.Context, spec_file: str | None) -> None:
    """Feature flags: list, show, create, enable, disable, roll out, target."""
    ctx.obj = FlagsContext(spec_file)




@flags_group.command("list")
@click.option("--archived", is_flag=True, help="list archived flags instead")
@click.option("--json", "as_json", is_flag=True)
@pass_flags
def list_flags(obj: FlagsContext, archived: bool, as_json: bool) -> None:
    """Every flag, with its state and how it is rolled out."""
    with obj.store() as store:
        records = store.flags(archived=archived)
    if as_json:
        click.echo(json.dumps([_as_json(r) for r in records], indent=2))
        return
    if not records:
        click.echo("no flags" if not archived else "no archived flags")
        return
    width = max(len(r.name) for r in records)
    for r in records:
        state = "on " if r.definition["enabled"] else "off"
        click.echo(f"{r.name:<{width}}  {state}  v{r.version:<4} {_summary(r)}")


@flags_group.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@pass_flags
def show(obj: FlagsContext, name: str, as_json: bool) -> None:
    """One flag's full definition."""
    with obj.store() as store:
        record = store.require(name)
    if as_json:
        click.echo(json.dumps(_as_json(record), indent=2))
        return
    status = "archived" if record.archived else "on" if record.definition["enabled"] else "off"
    click.echo(f"# {record.name}: {status}, version {record.version}, {_summary(record)}")
    click.echo(yaml.safe_dump(record.definition, sort_keys=False).rstrip())


@flags_group.command()
@FLAG_FILE
@pass_flags
def create(obj: FlagsContext, flag_file: Path) -> None:
    """Create the flag (or list of flags) in FILE."""
    definitions = validated_list(flag_file)
    with obj.store() as store:
        taken = [d["name"] for d in definitions
                 if (found := store.flag(d["name"])) is not None and not found.archived]
    if taken:
        raise UserError(f"{flag_file}: flag(s) already exist: {', '.join(taken)}; use update")
    with obj.change() as store:
        try:
            records = store.create_many(list(definitions), who=who())
        except FlagError as exc:
            raise in_file(flag_file, exc) from None
        for record in records:
            _done(record, "created")


@flags_group.command()
@click.argument("name")
@FLAG_FILE
@pass_flags
def update(obj: FlagsContext, name: str, flag_file: Path) -> None:
    """Replace flag NAME's definition with the one in FILE."""
    data = read_flag_file(flag_file)
    with obj.change() as store:
        try:
            _done(store.update(name, data, who=who()), "updated")
        except FlagError as exc:
            raise in_file(flag_file, exc) from None


def _switch(enabled: bool) -> Callable[[FlagsContext, str], None]:
    def command(obj: FlagsContext, name: str) -> None:
        with obj.change() as store:
            _done(store.set_enabled(name, enabled, who=who()), "enabled" if enabled else "disabled")

    return command


for _name, _on in (("enable", True), ("disable", False)):
    flags_group.command(_name, help=f"Switch flag NAME {'on' if _on else 'off'}.")(
        click.argument("name")(pass_flags(_switch(_on))))


@flags_group.command()
@click.argument("name")
@click.argument("percent", type=click.IntRange(0, 100))
@click.option("--stickiness", default=None,
              help="context field that keeps a user in or out (e.g. userId); left out, the "
                   "strategy keeps its own ('default' for a new one)")
@pass_flags
def rollout(obj: FlagsContext, name: str, percent: int, stickiness: str | None) -> None:
    """Turn flag NAME on for PERCENT of users (its plain flexibleRollout strategy).

    The users already in stay in when PERCENT grows: the strategy's stickiness and
    groupId are kept.
    """
    with obj.change() as store:
        _done(store.set_rollout(name, percent, who=who(), stickiness=stickiness),
              f"rolled out to {percent}%")


@flags_group.command()
@click.argument("name")
@click.argument("users", nargs=-1, required=True)
@pass_flags
def target(obj: FlagsContext, name: str, users: tuple[str, ...]) -> None:
    """Turn flag NAME on for these user ids (its plain userWithId strategy)."""
    with obj.change() as store:
        _done(store.add_users(name, list(users), who=who()), f"targets {len(users)} more user(s)")


@flags_group.command()
@click.argument("name")
@pass_flags
def archive(obj: FlagsContext, name: str) -> None:
    """Archive flag NAME: SDKs stop seeing it; its history stays."""
    with obj.change() as store:
        record = store.archive(name, who=who())
    click.echo(f"{record.name}: archived (version {record.version})")


@flags_group.command()
@pass_flags
def push(obj: FlagsContext) -> None:
    """Send the store's flags to the service's builtin router again (if it runs)."""
    with obj.store() as store:
        pushed = push_state(obj.spec_path, store)
        revision = store.revision()
    if pushed:
        click.echo(f"the builtin router has flag revision {revision} (or newer)")
    else:
        click.echo("no builtin router runs for this service; nothing to push")


@flags_group.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@pass_flags
def history(obj: FlagsContext, name: str, as_json: bool) -> None:
    """Every change of flag NAME, oldest first."""
    with obj.store() as store:
        store.require(name)
        records = store.history(name)
    if as_json:
        click.echo(json.dumps([vars(r) for r in records], indent=2))
        return
    for r in records:
        at = datetime.fromtimestamp(r.at, UTC).strftime("%Y-%m-%d %H:%M:%S")
        click.echo(f"v{r.version:<4} {at}  {r.who:<20} {r.action}")


flags_group.add_command(token)
flags_group.add_command(segment)
