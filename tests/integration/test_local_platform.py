"""The local platform against real processes: placeholders, logs, survival, stop, pid reuse,
and the clean environment of instances and blue-green test commands."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from turnout.engine.health import CheckFailed, run_test
from turnout.errors import PlatformError
from turnout.model import Instance, Revision
from turnout.platforms.local import LocalPlatform
from turnout.spec import CommandTest, Health, Run
from turnout.statedir import StateDir

PY = sys.executable
SERVICE = "shop"


def revision(command: list[str], *, version: str = "v1", cwd: str = ".",
             env: dict[str, str] | None = None, inherit_env: list[str] | None = None) -> Revision:
    run = Run(command=command, cwd=cwd, env=env or {}, grace=10)
    if inherit_env is not None:
        run = run.model_copy(update={"inherit_env": inherit_env})
    return Revision(service=SERVICE, version=version, run=run, health=Health(),
                    hash=f"{version:0<64}"[:64])


def environ_of(pid: int) -> dict[str, str]:
    """The environment a process was started with, as the kernel keeps it."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.decode().split("=", 1) for item in raw.split(b"\0") if item)


SECRETS = {"AWS_SECRET_ACCESS_KEY": "not-for-the-service", "GITHUB_TOKEN": "ghp_deployer"}


def sleeper(*, on_term: str = "exit") -> list[str]:
    """A process that says 'ready' once its SIGTERM handling is in place, then sleeps."""
    handler = {
        "exit": "def h(*a):\n    print('bye', flush=True)\n    sys.exit(0)\n"
                "signal.signal(signal.SIGTERM, h)",
        "ignore": "signal.signal(signal.SIGTERM, signal.SIG_IGN)",
    }[on_term]
    script = f"import signal, sys, time\n{handler}\nprint('ready', flush=True)\ntime.sleep(60)\n"
    return [PY, "-c", script]


async def eventually(check: Callable[[], bool], *, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@pytest.fixture
async def platform(tmp_path: Path) -> AsyncIterator[LocalPlatform]:
    plat = LocalPlatform(state=StateDir.beside(tmp_path))
    yield plat
    for instance in await plat.instances(SERVICE):
        await plat.stop(instance, grace=0.5)
    await plat.aclose()


async def test_placeholders_and_env_reach_the_process(platform: LocalPlatform,
                                                      tmp_path: Path) -> None:
    (tmp_path / "releases" / "v7").mkdir(parents=True)
    script = textwrap.dedent("""
        import os, sys
        print("argv", sys.argv[1:])
        print("cwd", os.path.basename(os.getcwd()))
        for name in ("PORT", "TURNOUT_VERSION", "TURNOUT_SLOT", "TURNOUT_SERVICE", "GREETING"):
            print(name, os.environ[name])
        sys.stdout.flush()
        print("oops", file=sys.stderr)
    """)
    rev = revision([PY, "-c", script, "--port", "{port}", "{version}/{slot}"], version="v7",
                   cwd="releases/{version}", env={"GREETING": "hi-{version}-{slot}-{port}"})
    inst = await platform.start(rev, slot=2)
    assert (inst.service, inst.version, inst.slot, inst.host) == (SERVICE, "v7", 2, "127.0.0.1")
    assert inst.pid and inst.started
    deadline = time.monotonic() + 10
    while await platform.alive(inst):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    log = platform.logs_path(inst).read_text()
    assert platform.logs_path(inst).name == f"shop-{inst.id}.log"
    assert f"argv ['--port', '{inst.port}', 'v7/2']" in log
    assert "cwd v7" in log
    assert f"PORT {inst.port}\n" in log
    assert "TURNOUT_VERSION v7\n" in log and "TURNOUT_SLOT 2\n" in log
    assert "TURNOUT_SERVICE shop\n" in log
    assert f"GREETING hi-v7-2-{inst.port}\n" in log
    assert platform.tail(inst, lines=1) == "oops"


async def test_serves_http_on_the_port_it_was_given(platform: LocalPlatform) -> None:
    rev = revision([PY, "-m", "http.server", "{port}", "--bind", "127.0.0.1"])
    inst = await platform.start(rev, slot=0)
    record = json.loads((platform.state.instances / f"{inst.id}.json").read_text())
    assert record["instance"] == inst.to_json()
    async with httpx.AsyncClient() as client:
        deadline = time.monotonic() + 10
        while True:
            try:
                response = await client.get(f"http://{inst.address}/")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
    assert response.status_code == 200
    assert await platform.alive(inst)
    assert await platform.instances(SERVICE) == [inst]
    assert await platform.instances("other") == []
    await platform.stop(inst, grace=5)
    assert not await platform.alive(inst)
    assert await platform.instances(SERVICE) == []


async def test_start_twice_returns_the_running_instance(platform: LocalPlatform) -> None:
    rev = revision(sleeper())
    first = await platform.start(rev, slot=0)
    again = await platform.start(rev, slot=0)
    other = await platform.start(rev, slot=1)
    assert again == first
    assert other.pid != first.pid and other.port != first.port
    assert {i.slot for i in await platform.instances(SERVICE)} == {0, 1}


async def test_process_survives_the_cli_that_started_it(tmp_path: Path) -> None:
    rev = revision(sleeper())
    launcher = textwrap.dedent(f"""
        import asyncio, json, sys, time
        from pathlib import Path
        from turnout.model import Revision
        from turnout.platforms.local import LocalPlatform
        from turnout.statedir import StateDir
        rev = Revision.model_validate_json(sys.argv[1])
        root = Path({str(tmp_path)!r})
        plat = LocalPlatform(state=StateDir.beside(root))
        inst = asyncio.run(plat.start(rev, slot=0))
        print(json.dumps(inst.to_json()), flush=True)
        time.sleep(60)
    """)
    # The CLI runs in its own process group, like a shell job; a hangup kills that group.
    cli = subprocess.Popen([PY, "-c", launcher, rev.model_dump_json()], stdout=subprocess.PIPE,
                           text=True, start_new_session=True)
    try:
        assert cli.stdout is not None
        started = Instance.from_json(json.loads(cli.stdout.readline()))
        platform = LocalPlatform(state=StateDir.beside(tmp_path))
        await eventually(lambda: "ready" in platform.tail(started))
        os.killpg(cli.pid, signal.SIGHUP)
        assert cli.wait(timeout=10) == -signal.SIGHUP
    finally:
        cli.kill()
        cli.wait(timeout=10)
        if cli.stdout is not None:
            cli.stdout.close()
    assert await platform.instances(SERVICE) == [started]
    assert await platform.alive(started)
    await platform.stop(started, grace=5)
    assert not await platform.alive(started)
    assert platform.tail(started).splitlines() == ["ready", "bye"]
    assert await platform.instances(SERVICE) == []


async def test_sigterm_handled_exits_within_grace(platform: LocalPlatform) -> None:
    inst = await platform.start(revision(sleeper(on_term="exit")), slot=0)
    await eventually(lambda: "ready" in platform.tail(inst))
    began = time.monotonic()
    await platform.stop(inst, grace=10)
    assert time.monotonic() - began < 3
    assert not await platform.alive(inst)
    assert platform.tail(inst).splitlines()[-1] == "bye"


async def test_sigterm_ignored_is_killed_after_grace(platform: LocalPlatform) -> None:
    inst = await platform.start(revision(sleeper(on_term="ignore")), slot=0)
    await eventually(lambda: "ready" in platform.tail(inst))
    began = time.monotonic()
    await platform.stop(inst, grace=0.6)
    elapsed = time.monotonic() - began
    assert 0.6 <= elapsed < 4
    assert not await platform.alive(inst)
    assert not (platform.state.instances / f"{inst.id}.json").exists()


async def test_stopping_a_gone_instance_is_not_an_error(platform: LocalPlatform) -> None:
    inst = await platform.start(revision([PY, "-c", "pass"]), slot=0)
    await platform.stop(inst, grace=1)
    await platform.stop(inst, grace=1)
    assert not await platform.alive(inst)


async def test_stopping_a_stale_copy_keeps_the_newer_record(platform: LocalPlatform) -> None:
    rev = revision(sleeper())
    old = await platform.start(rev, slot=0)
    await platform.stop(old, grace=1)
    new = await platform.start(rev, slot=0)
    assert new.id == old.id and new.pid != old.pid
    await platform.stop(old, grace=1)
    assert await platform.alive(new)
    assert await platform.instances(SERVICE) == [new]


async def test_pid_reuse_guard(platform: LocalPlatform) -> None:
    stranger = subprocess.Popen(sleeper(on_term="exit"), start_new_session=True,
                                stdout=subprocess.DEVNULL)
    try:
        ticks = int(Path(f"/proc/{stranger.pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        fake = Instance(service=SERVICE, revision="v1-00000000", version="v1", slot=0,
                        host="127.0.0.1", port=1, pid=stranger.pid, started=float(ticks + 1000))
        record = platform.state.instances / f"{fake.id}.json"
        record.parent.mkdir(parents=True)
        record.write_text(json.dumps({"instance": fake.to_json()}))
        assert not await platform.alive(fake)
        await platform.stop(fake, grace=0.2)
        assert stranger.poll() is None, "a process with another start time was signalled"
        record.write_text(json.dumps({"instance": fake.to_json()}))
        assert await platform.instances(SERVICE) == []
        assert not record.exists()
        real = Instance(**{**fake.to_json(), "started": float(ticks)})  # type: ignore[arg-type]
        assert await platform.alive(real)
    finally:
        stranger.kill()
        stranger.wait(timeout=10)


async def test_process_that_exits_at_once_is_not_alive_and_is_reaped(
    platform: LocalPlatform,
) -> None:
    inst = await platform.start(revision([PY, "-c", "print('short life')"]), slot=0)
    deadline = time.monotonic() + 10
    while await platform.alive(inst):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert not Path(f"/proc/{inst.pid}").exists(), "exited child left as a zombie"
    assert await platform.instances(SERVICE) == []
    assert platform.tail(inst) == "short life"


async def test_record_from_another_boot_is_ignored(platform: LocalPlatform) -> None:
    inst = await platform.start(revision(sleeper()), slot=0)
    record = platform.state.instances / f"{inst.id}.json"
    data = json.loads(record.read_text())
    data["boot_id"] = "not-this-boot"
    record.write_text(json.dumps(data))
    assert await platform.instances(SERVICE) == []
    os.killpg(inst.pid or 0, signal.SIGKILL)


async def test_missing_executable_is_a_platform_error(platform: LocalPlatform) -> None:
    with pytest.raises(PlatformError, match="no-such-program-xyz"):
        await platform.start(revision(["no-such-program-xyz", "{port}"]), slot=0)
    assert await platform.instances(SERVICE) == []


async def test_missing_cwd_is_a_platform_error(platform: LocalPlatform) -> None:
    with pytest.raises(PlatformError, match=r"releases/v9 does not exist"):
        await platform.start(revision([PY, "-c", "pass"], version="v9",
                                      cwd="releases/{version}"), slot=0)


async def test_an_instance_gets_only_its_env_the_turnout_variables_and_inherit_env(
    platform: LocalPlatform, monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in {**SECRETS, "SHARED_CACHE": "/srv/cache"}.items():
        monkeypatch.setenv(name, value)  # the deployer's shell, as the CLI sees it
    rev = revision(sleeper(), env={"APP_MODE": "prod"}, inherit_env=["PATH", "SHARED_CACHE", "UNSET_NAME"])
    inst = await platform.start(rev, slot=1)
    assert inst.pid is not None
    env = environ_of(inst.pid)
    assert set(env) == {"PATH", "SHARED_CACHE", "APP_MODE", "PORT", "TURNOUT_VERSION", "TURNOUT_SLOT",
                        "TURNOUT_SERVICE"}
    assert env["SHARED_CACHE"] == "/srv/cache" and env["PATH"] == os.environ["PATH"]
    assert env["PORT"] == str(inst.port) and env["TURNOUT_SLOT"] == "1" and env["APP_MODE"] == "prod"


async def test_the_default_inherit_env_keeps_path_and_home_but_no_secret(
    platform: LocalPlatform, monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HOME", "/home/deployer")
    inst = await platform.start(revision(sleeper()), slot=0)
    assert inst.pid is not None
    env = environ_of(inst.pid)
    assert env["HOME"] == "/home/deployer" and "PATH" in env
    assert not set(SECRETS) & set(env)


async def test_a_test_command_gets_the_same_clean_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in {**SECRETS, "SHARED_CACHE": "/srv/cache"}.items():
        monkeypatch.setenv(name, value)
    dump = tmp_path / "env.json"
    script = "import json, os, sys; open(sys.argv[1], 'w').write(json.dumps(dict(os.environ)))"
    test = CommandTest(command=[PY, "-c", script, str(dump)])
    rev = revision(sleeper(), version="v4", env={"APP_MODE": "v-{version}"},
                   inherit_env=["PATH", "SHARED_CACHE"])
    async with httpx.AsyncClient() as http:
        await run_test(http, test, "http://127.0.0.1:9", revision=rev)
        env = json.loads(dump.read_text())
        assert not set(SECRETS) & set(env)
        assert env["SHARED_CACHE"] == "/srv/cache" and env["APP_MODE"] == "v-v4"
        assert env["TURNOUT_PREVIEW_URL"] == "http://127.0.0.1:9" and env["TURNOUT_VERSION"] == "v4"
        # A test that needs a secret the spec did not pass on fails, showing what it missed.
        needs = CommandTest(command=[PY, "-c", "import os; print(os.environ['GITHUB_TOKEN'])"])
        with pytest.raises(CheckFailed, match="KeyError: 'GITHUB_TOKEN'"):
            await run_test(http, needs, "http://127.0.0.1:9", revision=rev)
