"""What every `turnout flags` command shares: the store, the push to the router, flag files.

``FlagsContext`` (the group's ``-f/--file`` spec) opens the flag store of the service's
state database; ``change()`` hands the store to a command and pushes the new state to the
service's builtin router afterwards (``push_state``).
``read_flag_file`` and ``validated_list`` read a YAML or JSON file and name the file, line
and field of every problem. Changes are recorded as ``cli:<unix user>`` (``who``).
"""

from __future__ import annotations

import getpass
import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import click
import yaml

from turnout.errors import RouterError, TurnoutError, UserError
from turnout.flags.definition import FlagError, validate_flag
from turnout.flags.store import FlagStore
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



pass_flags = click.make_pass_decorator(FlagsContext)


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


def in_file(path: Path, exc: FlagError, prefix: str = "") -> FlagError:
    return FlagError([f"{path}: {prefix}{problem}" for problem in exc.problems])


def validated_list(path: Path) -> list[dict[str, Any]]:
    data = read_flag_file(path)
    items = data if isinstance(data, list) else [data]
    problems: list[str] = []
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        try:
            out.append(validate_flag(item))
        except FlagError as exc:
            problems.extend(in_file(path, exc, f"{i}." if isinstance(data, list) else "").problems)
    names = [d["name"] for d in out]
    problems.extend(f"{path}: flag {n!r} is defined twice" for n in sorted(set(names))
                    if names.count(n) > 1)
    if problems:
        raise FlagError(problems)
    return out
