"""`turnout flags segment ...`: segments, the named sets of constraints strategies share.

A segment file is checked whole before anything is stored; a change is pushed to the
service's builtin router like a flag change.
"""

from __future__ import annotations

from pathlib import Path

import click

from turnout.cli.flags_context import FLAG_FILE, FlagsContext, in_file, pass_flags, read_flag_file, who
from turnout.flags.definition import FlagError


@click.group()
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
            raise in_file(flag_file, exc) from None
    click.echo(f"segment {saved['id']} ({saved['name']}): saved")
