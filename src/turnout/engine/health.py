"""Health checks and blue-green tests: HTTP against instances and the preview address.

A test command runs with the same clean environment as an instance of the revision it
tests (the spec's `run.env` and the names in `run.inherit_env`), plus TURNOUT_VERSION and
TURNOUT_PREVIEW_URL; nothing else of the deployer's environment reaches it.
"""

from __future__ import annotations

import asyncio

import httpx

from turnout import procs
from turnout.clock import Clock
from turnout.model import Instance, Revision
from turnout.platforms.base import Platform
from turnout.spec import CommandTest, Health, HttpTest


class CheckFailed(Exception):
    """A health check or a test did not pass; the message says why."""


async def probe(http: httpx.AsyncClient, instance: Instance, health: Health) -> str | None:
    """None when the instance answers its health path with 2xx, else what went wrong."""
    url = f"http://{instance.address}{health.path}"
    try:
        response = await http.get(url, timeout=health.timeout)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__} on {url}"
    if 200 <= response.status_code < 300:
        return None
    return f"{url} answered {response.status_code}"


async def wait_healthy(
    http: httpx.AsyncClient, platform: Platform, instance: Instance, health: Health, clock: Clock
) -> None:
    """Return once the instance passes its health check; raise CheckFailed at the deadline or exit."""
    deadline = clock.now() + health.deadline
    problem = "no answer yet"
    while True:
        if not await platform.alive(instance):
            raise CheckFailed(f"instance {instance.id} exited before it became healthy")
        problem = await probe(http, instance, health) or ""
        if not problem:
            return
        if clock.now() >= deadline:
            raise CheckFailed(f"instance {instance.id} not healthy after {health.deadline:g}s: {problem}")
        await clock.sleep(min(health.interval, max(0.05, deadline - clock.now())))


def command_env(revision: Revision, preview_url: str) -> dict[str, str]:
    """The environment of a test command run against `revision` on the preview address."""
    run = revision.run
    env = {name: value.replace("{version}", revision.version) for name, value in run.env.items()}
    env.update(TURNOUT_VERSION=revision.version, TURNOUT_SERVICE=revision.service,
               TURNOUT_PREVIEW_URL=preview_url)
    return procs.child_env(run.inherit_env, env)


async def run_test(
    http: httpx.AsyncClient, test: HttpTest | CommandTest, preview_url: str, *, revision: Revision
) -> None:
    """Run one blue-green test of `revision` on the preview address; raise CheckFailed if it fails."""
    if isinstance(test, HttpTest):
        url = preview_url + test.http
        try:
            response = await http.get(url, timeout=10.0)
        except httpx.HTTPError as exc:
            raise CheckFailed(f"test GET {test.http}: {type(exc).__name__}") from exc
        if response.status_code != test.expect_status:
            raise CheckFailed(
                f"test GET {test.http}: expected {test.expect_status}, got {response.status_code}"
            )
        return
    try:
        proc = await asyncio.create_subprocess_exec(
            *test.command, env=command_env(revision, preview_url), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
    except OSError as exc:
        raise CheckFailed(f"test {test.command[0]!r} could not start: {exc.strerror}") from exc
    try:
        async with asyncio.timeout(test.timeout):
            output, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise CheckFailed(f"test {' '.join(test.command)} timed out after {test.timeout:g}s") from None
    if proc.returncode != 0:
        tail = output.decode(errors="replace").strip().splitlines()[-5:]
        raise CheckFailed(
            f"test {' '.join(test.command)} exited {proc.returncode}: " + " | ".join(tail)
        )


__all__ = ["CheckFailed", "command_env", "probe", "run_test", "wait_healthy"]
