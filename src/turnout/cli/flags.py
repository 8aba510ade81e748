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
"""

from __future__ import annotations

import getpass
import importlib
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast

import click
import yaml

from turnout.errors import RouterError, TurnoutError, UserError
from turnout.flags.definition import FlagError, validate_flag
from turnout.flags.store import FlagRecord, FlagStore
from turnout.specfile import find_spec
from turnout.statedir import StateDir

FLAG_FILE = click.option("-f", "--file", "flag_file", required=True,
                         type=click.Path(dir_okay=False, path_type=Path),
                         help="YAML or JSON file")


@dataclass
class FlagsContext:
    spec_file: str | None

    @property
    def spec_path(self) -> Path:
        return find_spec(Path.cwd(), self.spec_file).resolve()

    @property
    def state(self) -> StateDir:
        return StateDir.for_spec(self.spec_path)

    @contextmanager
    def store(self) -> Iterator[FlagStore]:
        store = FlagStore.open(self.state.database())
        try:
            yield store
        finally:
            store.close()

    @contextmanager
    def change(self) -> Iterator[FlagStore]:
        """The store, for a change; the new state goes to the router afterwards."""
        with self.store() as store:
            yield store
            push_state(self.spec_path, store)


def who() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def push_state(spec: Path, store: FlagStore) -> bool | None:
    """Push the store's state to the router of the spec file `spec`: whether one took it.

    A router holding a newer revision of this same store already has the change (another
    process pushed after it); any other refusal is a RouterError (exit 1) saying that the
    store has the change, why the router did not take it, and what to do.
    """
    try:
        module = importlib.import_module("turnout.flags.push")
    except ImportError:
        return None
    push = cast(Callable[[Path, dict[str, Any]], "bool | None"], module.push_to_router)
    state = store.state()
    revision = state["meta"]["revision"]
    router = StateDir.for_spec(spec).router
    try:
        return push(spec, state)
    except TurnoutError as exc:
        held = getattr(exc, "revision", None)
        if isinstance(held, int) and held <= store.revision():
            return True  # a newer state of this store, which holds the change, is in effect
        saved = f"the flag store has the change (revision {revision}), but the builtin router at"
        if isinstance(held, int):
            raise RouterError(
                f"{saved} {router.path} refused it: {exc}. It keeps evaluating the flags it had: it "
                "was fed from another state database. Point TURNOUT_DATABASE_URL at that "
                f"database, or stop the router (`turnout down`) and delete "
                f"{router.flags}; the next `turnout deploy` starts it with this "
                "store's flags.") from None
        raise RouterError(
            f"{saved} {router.path} did not take it: {exc}. Once the router answers again (its log: "
            f"{router.log}), `turnout flags push` sends the store's flags again.") from None


def read_flag_file(path: Path) -> Any:
    """The parsed YAML or JSON of ``path``; UserError naming the file otherwise."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (bad byte at offset {exc.start})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    try:
        return yaml.safe_load(text)  # JSON is YAML too
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}{where}: invalid YAML or JSON: "
                        f"{getattr(exc, 'problem', None) or exc}") from None


def _in_file(path: Path, exc: FlagError, prefix: str = "") -> FlagError:
    return FlagError([f"{path}: {prefix}{problem}" for problem in exc.problems])


def _validated_list(path: Path) -> list[dict[str, Any]]:
    data = read_flag_file(path)
    items = data if isinstance(data, list) else [data]
    problems: list[str] = []
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        try:
            out.append(validate_flag(item))
        except FlagError as exc:
            problems.extend(_in_file(path, exc, f"{i}." if isinstance(data, list) else "").problems)
    names = [d["name"] for d in out]
    problems.extend(f"{path}: flag {n!r} is defined twice" for n in sorted(set(names))
                    if names.count(n) > 1)
    if problems:
        raise FlagError(problems)
    return out


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


pass_flags = click.make_pass_decorator(FlagsContext)


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
    definitions = _validated_list(flag_file)
    with obj.store() as store:
        taken = [d["name"] for d in definitions
                 if (found := store.flag(d["name"])) is not None and not found.archived]
    if taken:
        raise UserError(f"{flag_file}: flag(s) already exist: {', '.join(taken)}; use update")
    with obj.change() as store:
        try:
            records = store.create_many(list(definitions), who=who())
        except FlagError as exc:
            raise _in_file(flag_file, exc) from None
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
            raise _in_file(flag_file, exc) from None


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


@flags_group.group()
def token() -> None:
    """API tokens for `turnout server`."""


@token.command("create")
@click.argument("name")
@click.option("--kind", type=click.Choice(["client", "admin"]), required=True,
              help="client: SDKs read flags; admin: the admin API changes them")
@pass_flags
def token_create(obj: FlagsContext, name: str, kind: str) -> None:
    """Create a token called NAME and print its secret (shown only this once)."""
    with obj.store() as store:
        secret = store.create_token(name, cast(Literal["client", "admin"], kind))
    click.echo(secret)
    if sys.stdout.isatty():
        click.echo("keep this secret now: turnout stores only its hash", err=True)


@token.command("revoke")
@click.argument("name")
@pass_flags
def token_revoke(obj: FlagsContext, name: str) -> None:
    """Revoke every valid token called NAME; a running server refuses it within a second."""
    with obj.store() as store:
        count = store.revoke_token(name)
    click.echo(f"token {name}: revoked ({count} secret{'s' if count != 1 else ''})")


@token.command("list")
@click.option("--json", "as_json", is_flag=True, help="print the tokens as a JSON list")
@pass_flags
def token_list(obj: FlagsContext, as_json: bool) -> None:
    """Every token (never its secret): name, kind, when created, when revoked."""
    with obj.store() as store:
        records = store.tokens()
    if as_json:
        click.echo(json.dumps([vars(r) for r in records], indent=2))
        return

    def when(at: float | None) -> str:
        return "-" if at is None else datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S")

    click.echo(f"{'NAME':<24} {'KIND':<7} {'CREATED':<20} REVOKED")
    for r in records:
        click.echo(f"{r.name:<24} {r.kind:<7} {when(r.created_at):<20} {when(r.revoked_at)}")


@flags_group.group()
def segment() -> None:
    """Segments: named sets of constraints that strategies share."""


@segment.command("create")
@FLAG_FILE
@pass_flags
def segment_create(obj: FlagsContext, flag_file: Path) -> None:
    """Create (or, with an id, replace) the segment in FILE."""
    data = read_flag_file(flag_file)
    with obj.change() as store:
        try:
            saved = store.put_segment(data, who=who())
        except FlagError as exc:
            raise _in_file(flag_file, exc) from None
    click.echo(f"segment {saved['id']} ({saved['name']}): saved")
