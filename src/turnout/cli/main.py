"""The `turnout` command: a thin shell over `turnout.service`.

Exit codes (the contract scripts rely on): 0 success; 1 other error; 2 invalid input and
nothing changed; 3 the deployment failed or was aborted and the previous version serves.
When bringing the previous version back failed too ("rollback-failed"), that promise does
not hold: the exit code is 1 and the outcome line says what the router now serves.
No command ever prompts, so a script without a terminal never waits for an answer.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from turnout.cli.flags import flags_group
from turnout.cli.render import Printer
from turnout.errors import TurnoutError, UserError
from turnout.model import Instance
from turnout.service import Session
from turnout.specfile import find_spec, kind_override, spec_json_schema
from turnout.status import Status
from turnout.store.db import DeploymentRecord
from turnout.store.records import Event as StoredEvent
from turnout.strategies import PLANNERS

T = TypeVar("T")
FILE_OPTION = click.option("-f", "--file", "spec_file", default=None,
                           help="spec file (default: ./turnout.yaml)")
SET_OPTION = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                          help="override one spec field by dotted path, e.g. run.env.MODE=dev")


def run_async(work: Callable[[], Awaitable[T]]) -> T:
    """Run `work` on uvloop (asyncio's loop if uvloop is missing)."""
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    try:
        return runner(work())  # type: ignore[no-any-return]
    finally:
        _fresh_writers()


def _fresh_writers() -> None:
    """New writers for standard output and error over the same descriptors.

    Once a uvloop loop has ended, the writers Python opened at start-up keep only what a
    pipe takes at once: `turnout history --json` printed after the loop into a reader that
    lags was cut at 64 KiB, with exit 0 (uvloop 0.23). Writers opened afterwards write it
    all. A stream without a descriptor (captured by a test runner) is left as it is."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):
            continue
        stream.flush()
        buffering = 1 if stream.line_buffering else -1
        setattr(sys, name, open(fd, "w", buffering=buffering, encoding=stream.encoding,  # noqa: SIM115
                                errors=stream.errors, closefd=False))


def fail(exc: TurnoutError) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(exc.exit_code)


class TurnoutGroup(click.Group):
    """Turns TurnoutError into its message and exit code; click usage errors exit 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TurnoutError as exc:
            fail(exc)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=TurnoutGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="turnout")
def cli() -> None:
    """Progressive delivery for HTTP services that run as processes."""


def _spec_path(spec_file: str | None) -> Path:
    return find_spec(Path.cwd(), spec_file)


def _exit_for(record: DeploymentRecord | None) -> int:
    if record is None or record.phase == "succeeded":
        return 0
    if record.phase in ("aborted", "failed"):
        return 3
    if record.phase == "rollback-failed":
        return 1  # exit 3 promises the previous version serves; here it may not
    return 0  # still progressing elsewhere (promote/abort requests)


@cli.command()
@click.argument("version")
@FILE_OPTION
@click.option("--strategy", default=None,
              type=click.Choice(list(PLANNERS)),
              help="deploy with this strategy kind, keeping the fields of the spec's strategy it reads; "
                   "--set may add the others")
@SET_OPTION
@click.option("--json", "as_json", is_flag=True, help="print events as JSON lines")
def deploy(version: str, spec_file: str | None, strategy: str | None, overrides: tuple[str, ...],
           as_json: bool) -> None:
    """Deploy VERSION and follow it to its end."""
    if not version.strip() or any(c.isspace() for c in version):
        raise UserError(f"VERSION: expected a label without spaces, got {version!r}")
    path = _spec_path(spec_file)
    printer = Printer(as_json=as_json)
    if strategy is not None:  # first, so that a --set may give what the new kind needs
        overrides = (kind_override(strategy), *overrides)

    async def work() -> DeploymentRecord | None:
        async with Session.open(path, overrides, emit=printer.event) as session:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, _interrupt(session, printer))
            return await session.deploy(version)

    record = run_async(work)
    printer.outcome(record)
    sys.exit(_exit_for(record))


def _interrupt(session: Session, printer: Printer) -> Callable[[], None]:
    def handler() -> None:
        printer.note("interrupted: rolling back to the previous version (this finishes on its own)")
        session.request_abort()

    return handler


@cli.command()
@FILE_OPTION
@click.option("--json", "as_json", is_flag=True)
def status(spec_file: str | None, as_json: bool) -> None:
    """Stable revision, deployment in progress, traffic split, instances and health."""
    path = _spec_path(spec_file)

    async def work() -> Status:
        async with Session.open(path) as session:
            return await session.status()

    Printer(as_json=as_json).status(run_async(work))


def _simple(action: str) -> Callable[..., None]:
    def command(spec_file: str | None) -> None:
        path = _spec_path(spec_file)
        printer = Printer()

        async def work() -> DeploymentRecord:
            async with Session.open(path, emit=printer.event) as session:
                method: Callable[[], Awaitable[DeploymentRecord]] = getattr(session, action)
                return await method()

        record = run_async(work)
        printer.outcome(record)
        if action == "abort":
            sys.exit(0 if record.phase == "aborted" else 1)
        sys.exit(_exit_for(record))

    return command


cli.command("promote", help="Continue a paused deployment.")(FILE_OPTION(_simple("promote")))
cli.command("abort", help="Stop the deployment in progress and go back to the stable version.")(
    FILE_OPTION(_simple("abort"))
)


@cli.command()
@click.argument("version", required=False)
@FILE_OPTION
def rollback(version: str | None, spec_file: str | None) -> None:
    """Return to VERSION (default: the version before the stable one)."""
    path = _spec_path(spec_file)
    printer = Printer()

    async def work() -> DeploymentRecord:
        async with Session.open(path, emit=printer.event) as session:
            return await session.rollback(version)

    record = run_async(work)
    printer.outcome(record)
    sys.exit(_exit_for(record))


@cli.command()
@FILE_OPTION
@click.option("--json", "as_json", is_flag=True)
@click.option("-n", "--limit", default=20, type=click.IntRange(1, 1000))
@click.option("--events", "deployment_id", type=click.IntRange(min=1), default=None, metavar="ID",
              help="every stored event of deployment ID (steps, traffic, gate decisions, phases)")
def history(spec_file: str | None, as_json: bool, limit: int, deployment_id: int | None) -> None:
    """Past deployments, newest first; or one deployment's events with --events ID."""
    path = _spec_path(spec_file)
    printer = Printer(as_json=as_json)
    if deployment_id is not None:
        async def story() -> tuple[DeploymentRecord, list[StoredEvent]]:
            async with Session.open(path) as session:
                return session.events(deployment_id)

        printer.events(*run_async(story))
        return

    async def work() -> list[DeploymentRecord]:
        async with Session.open(path) as session:
            return session.history(limit)

    printer.history(run_async(work))


@cli.command()
@FILE_OPTION
@click.argument("instance", required=False)
@click.option("-n", "--lines", type=click.IntRange(1, 10_000), default=20, show_default=True,
              help="how many of the last lines of each instance")
def logs(spec_file: str | None, instance: str | None, lines: int) -> None:
    """The last output of each running instance (or of INSTANCE: an id or its start)."""
    path = _spec_path(spec_file)

    async def work() -> list[tuple[Instance, str]]:
        async with Session.open(path) as session:
            return await session.logs(lines=lines, only=instance)

    for found, text in run_async(work):
        click.echo(f"==> {found.id} on {found.address} <==")
        click.echo(text.rstrip("\n") or "(no output)")


@cli.command()
@FILE_OPTION
def down(spec_file: str | None) -> None:
    """Stop every instance of the service and its router."""
    path = _spec_path(spec_file)

    async def work() -> tuple[int, str | None]:
        async with Session.open(path) as session:
            adopt = session.spec.router.adopt
            return await session.down(), None if adopt is None else adopt.backend

    stopped, adopted = run_async(work)
    if adopted is None:
        click.echo(f"stopped {stopped} instance(s) and the router")
    else:  # the user's HAProxy: turnout neither started it nor stops it
        click.echo(f"stopped {stopped} instance(s); the adopted HAProxy runs on, its backend "
                   f"{adopted} as it was")


@cli.command("reap-warm", hidden=True)
@FILE_OPTION
@SET_OPTION
def reap_warm(spec_file: str | None, overrides: tuple[str, ...]) -> None:
    """Stop warm fleets when their rollback window ends (started detached by turnout itself)."""
    path = _spec_path(spec_file)
    printer = Printer(as_json=True)  # timestamped lines in the reaper's log

    async def work() -> None:
        async with Session.open(path, overrides, emit=printer.event) as session:
            await session.reap_warm()

    run_async(work)


@cli.command()
def schema() -> None:
    """Print the JSON Schema of the spec file, for editors."""
    click.echo(json.dumps(spec_json_schema(), indent=2))


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def proxy(ctx: click.Context) -> None:
    """Run the builtin router (normally started by turnout itself)."""
    from turnout.routers.proxy.supervisor import main as proxy_main

    sys.exit(proxy_main(list(ctx.args)))


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                               "help_option_names": []})
@click.pass_context
def server(ctx: click.Context) -> None:
    """Serve the flag API: Unleash client API, admin API, event stream (--help for options)."""
    from turnout.api.server import main as server_main

    sys.exit(server_main(list(ctx.args)))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="print the rows as a JSON list")
@click.option("--rate", default=200.0, type=click.FloatRange(1, 2000), help="requests per second")
@click.option("--strategy", "only", multiple=True, help="run only these strategies")
@click.option("--faults", is_flag=True,
              help="deploy faulty versions with each strategy: what turnout did, who met each fault")
@click.option("--only", "faults_only", multiple=True, metavar="FAULT",
              help="with --faults, only these: start, health, hang, errors, latency, crash")
@click.option("--router", type=click.Choice(["builtin", "haproxy"]), default="builtin", show_default=True,
              help="the router users' requests go through")
def demo(*, as_json: bool, rate: float, only: tuple[str, ...], faults: bool,
         faults_only: tuple[str, ...], router: str) -> None:
    """Deploy a sample service with each strategy under live load; print what was measured."""
    from turnout.demo.runner import run_demo, strategies

    if faults or faults_only:
        if router != "builtin":
            raise click.UsageError("--faults runs with the builtin router only")
        sys.exit(_faults_demo(as_json, rate, only, faults_only))
    chosen, left_out = strategies(only, router)
    if not chosen and left_out:
        raise click.UsageError(left_out)
    rows = run_async(lambda: run_demo(rate=rate, only=only, quiet=as_json, router=router))
    if as_json:
        click.echo(json.dumps([row.as_json() for row in rows], indent=2))
    else:
        Printer().demo(rows)
    sys.exit(0 if all(row.ok for row in rows) else 1)


def _faults_demo(as_json: bool, rate: float, strategies: tuple[str, ...], only: tuple[str, ...]) -> int:
    from turnout.demo.faults import choose, run_faults
    from turnout.demo.faults_report import table

    try:
        choose(only, strategies)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    rows = run_async(lambda: run_faults(only=only, strategies=strategies, rate=rate, quiet=as_json))
    if as_json:
        click.echo(json.dumps([row.as_json() for row in rows], indent=2))
    else:
        Printer().out.print(table(rows))
    return 0


cli.add_command(flags_group)


def main() -> None:
    cli(prog_name="turnout")
