"""`turnout flags token ...`: create, revoke and list the API tokens of `turnout server`.

A secret is printed once, when created; the store keeps only its hash. A revoked token is
refused by a running server within a second (it polls the store's revocation mark).
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Literal, cast

import click

from turnout.cli.flags_context import FlagsContext, pass_flags


@click.group()
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
