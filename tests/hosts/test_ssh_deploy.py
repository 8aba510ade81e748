"""Deployments to real hosts (systemd + sshd containers) through the real CLI and router.

Each test deploys the standard-library test app as systemd user units of `deploy` on the
harness's hosts, two per host, with the router on 127.0.0.1 in front, under constant load
that counts every failure and every re-send.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import check, kill_at_first_traffic
from tests.hosts.harness import HostFleet
from tests.hosts.service import HostService
from turnout.demo.load import Load

pytestmark = [pytest.mark.slow, pytest.mark.serial]  # on the test hosts: alone, after the parallel pass

RATE = 100.0
DEPLOYS = 10
STRATEGIES: dict[str, dict[str, object]] = {
    # A batch of two is one host's two instances (slot s runs on host s // 2).
    "rolling": {"kind": "rolling", "max_surge": 2, "max_unavailable": 0},
    "blue-green": {"kind": "blue-green", "tests": [{"http": "/healthz"}], "rollback_window": "0s"},
    "canary": {"kind": "canary", "steps": [{"weight": 25}, {"pause": "500ms"}, {"weight": 50},
                                           {"pause": "500ms"}],
               "gate": {"interval": "150ms", "min_requests": 3}},
    "feature-toggle": {"kind": "feature-toggle", "flag": "new-checkout", "ship": "rolling",
                       "max_surge": 2, "max_unavailable": 0,
                       "ramp": [{"percent": 50}, {"pause": "1s"}, {"percent": 100}],
                       "gate": {"interval": "200ms", "min_requests": 5}},
}


@pytest.fixture
def shop(tmp_path: Path, hosts: HostFleet) -> Iterator[HostService]:
    service = HostService(tmp_path, hosts)
    service.write()
    yield service
    hosts.reset()  # every host back and reachable, its units stopped
    service.run("down", timeout=60)  # and the router on this machine


def versions_by_host(service: HostService) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for inst in service.status()["instances"]:
        found.setdefault(inst["host"], set()).add(inst["version"])
    return found


@pytest.mark.parametrize("name", list(STRATEGIES))
async def test_ten_deployments_across_four_hosts_fail_no_request(shop: HostService, name: str) -> None:
    shop.write(STRATEGIES[name])
    async with Load(shop.url, rate=RATE, users=40, max_seconds=120):  # a gate's pause needs traffic
        code, out, err = await shop.arun("deploy", "v1")
    assert code == 0, out + err
    for number in range(2, 2 + DEPLOYS):
        version = f"v{number}"
        async with Load(shop.url, rate=RATE, users=40, max_seconds=120) as load:
            code, out, err = await shop.arun("deploy", version)
            load.mark("returned")
            await asyncio.sleep(0.5)
        assert code == 0, f"{name} {version}: exit {code}\n{out}\n{err}"
        summary = load.summary(new_version=version, until=load.marks["returned"])
        assert summary.clean, f"{name} {version}: {summary.problems()}"
        assert {s.version for s in load.samples if s.sent >= load.marks["returned"]} == {version}
    last = {f"v{1 + DEPLOYS}"}
    for _ in range(100):  # blue-green's warm fleet is stopped by the reaper when its window ends
        hosts = versions_by_host(shop)
        if all(found == last for found in hosts.values()):
            break
        await asyncio.sleep(0.2)
    assert sorted(hosts) == sorted(h.address for h in shop.fleet.hosts)
    assert all(found == last for found in hosts.values()), hosts
    units = shop.units()
    assert all(len(names) == 2 for names in units.values()), units  # no unit left behind


async def test_a_spec_value_with_shell_metacharacters_reaches_the_service_verbatim(
    shop: HostService,
) -> None:
    nasty = ["$(touch /tmp/pwned)", "`touch /tmp/pwned`", "; touch /tmp/pwned", "%n %i $HOME $USER",
             "$HOME", "$$", "it's \"quoted\" \\ back", "&& rm -rf / #", "a\tb"]
    shop.write(run={"command": ["python3", "app.py", *nasty], "grace": "2s",
                    "env": {"NASTY": "$(touch /tmp/pwned) %n $HOME"}})
    check(shop.run("deploy", "v1"))
    async with httpx.AsyncClient(trust_env=False) as client:
        argv = (await client.get(shop.url + "argv")).json()
        env = (await client.get(shop.url + "env/NASTY")).json()
    assert argv == nasty
    assert env == "$(touch /tmp/pwned) %n $HOME"
    for host in shop.fleet.hosts:
        assert shop.fleet.exec(host, ["test", "-e", "/tmp/pwned"]).returncode == 1


async def test_an_unknown_or_changed_host_key_is_refused(shop: HostService, tmp_path: Path) -> None:
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    shop.write(platform=shop.platform(known_hosts=str(empty)))
    result = shop.run("deploy", "v1")
    assert result.returncode != 0
    first = shop.fleet.hosts[0].address
    assert f"host {first}" in result.stderr and "host key is not accepted" in result.stderr, result.stderr
    # A changed key: the first host's line now carries the second host's key.
    lines = shop.fleet.known_hosts.read_text().splitlines()
    second_key = next(line for line in lines if line.split()[0] == shop.fleet.hosts[1].address).split()[1:]
    swapped = tmp_path / "swapped_known_hosts"
    swapped.write_text("\n".join(
        " ".join([first, *second_key]) if line.split()[0] == first else line for line in lines) + "\n")
    shop.write(platform=shop.platform(known_hosts=str(swapped)))
    result = shop.run("deploy", "v1")
    assert result.returncode != 0
    assert f"host {first}" in result.stderr and "host key is not accepted" in result.stderr, result.stderr
    assert all(not names for names in shop.units().values())  # nothing started anywhere
    # `down` cannot list the hosts either, but the router on this machine stops all the same.
    pid_file = shop.folder / ".turnout" / "router" / "proxy.pid"
    assert pid_file.exists()
    assert shop.run("down").returncode != 0
    assert not pid_file.exists()


async def test_status_and_logs_show_instances_per_host(shop: HostService) -> None:
    check(shop.run("deploy", "v1"))
    hosts = versions_by_host(shop)
    assert len(hosts) == 4 and all(v == {"v1"} for v in hosts.values())
    text = shop.run("status").stdout
    assert all(h.address in text for h in shop.fleet.hosts)
    logs = shop.run("logs", "--lines", "5")
    check(logs)
    assert logs.stdout.count("==> v1-") == 8
    assert logs.stdout.count("serving v1 on port") == 8, logs.stdout
    # A second deployment of the same release folder skips the upload (checksums match).
    shop.fleet.exec(shop.fleet.hosts[0], ["touch", "/srv/shop/releases/v1/marker"])
    check(shop.run("deploy", "v2"))
    check(shop.run("deploy", "v1"))
    kept = shop.fleet.exec(shop.fleet.hosts[0], ["test", "-e", "/srv/shop/releases/v1/marker"])
    assert kept.returncode == 0


STRAY = ("turnout-shop-stray.service",
         'turnout {"port":1,"revision":"zz-00000000","service":"shop","slot":0,"version":"zz"}')


@pytest.mark.parametrize("then", ["abort", "resume"])
async def test_a_killed_control_plane_is_reconciled_with_the_units_on_every_host(
    shop: HostService, then: str,
) -> None:
    pause = "1h" if then == "abort" else "2s"
    shop.write(STRATEGIES["canary"] | {"steps": [{"weight": 25}, {"pause": pause}]})
    check(shop.run("deploy", "v1"))
    async with Load(shop.url, rate=RATE, users=40, max_seconds=120) as load:
        await kill_at_first_traffic(shop, "v2")
        # A unit of a revision the store never knew, started by someone else meanwhile.
        made = shop.fleet.exec(shop.fleet.hosts[0], [
            "systemd-run", "--user", f"--unit={STRAY[0]}", f"--description={STRAY[1]}", "--",
            "sleep", "600"], user="deploy")
        assert made.returncode == 0, made.stderr
        await asyncio.sleep(1.0)  # traffic keeps flowing through the router meanwhile
        code, out, err = await shop.arun(*(["abort"] if then == "abort" else ["deploy", "v2"]))
        await asyncio.sleep(0.5)
    assert code == 0, f"exit {code}\n{out}\n{err}"
    final = "v1" if then == "abort" else "v2"
    assert ("aborted" if then == "abort" else "succeeded") in out, out
    assert "zz-00000000-0" in out and "does not know" in out, out  # reported ...
    summary = load.summary(new_version=final)
    assert summary.clean, summary.problems()
    units = shop.units()
    stray = units[shop.fleet.hosts[0].address]
    assert STRAY[0] in stray  # ... and left running
    stray.remove(STRAY[0])
    assert all(len(names) == 2 and all(f"-{final}-" in n for n in names) for names in units.values()), units


async def test_detached_processes_for_hosts_without_systemd(shop: HostService) -> None:
    shop.write(platform=shop.platform(supervisor="detached"))
    check(shop.run("deploy", "v1"))
    async with Load(shop.url, rate=RATE, users=40, max_seconds=120) as load:
        code, out, err = await shop.arun("deploy", "v2")
        load.mark("returned")
        await asyncio.sleep(0.5)
    assert code == 0, out + err
    summary = load.summary(new_version="v2", until=load.marks["returned"])
    assert summary.clean, summary.problems()
    assert all(v == {"v2"} for v in versions_by_host(shop).values())
    assert all(not names for names in shop.units().values())  # no systemd unit at all
    logs = shop.run("logs", "-n", "3")
    check(logs)
    assert logs.stdout.count("serving v2 on port") == 8, logs.stdout
    # Each host keeps a record per instance; a restarted control plane finds them there.
    first = shop.fleet.hosts[0]
    records = shop.fleet.exec(first, ["ls", "/home/deploy/.local/state/turnout/instances"], user="deploy")
    assert len(records.stdout.split()) == 2, records.stdout
    check(shop.run("down"))
    gone = shop.fleet.exec(first, ["pgrep", "-u", "deploy", "-f", "app.py"], user="deploy")
    assert gone.stdout.strip() == "", gone.stdout


async def test_a_login_without_a_systemd_manager_is_told_what_to_do(shop: HostService) -> None:
    for host in shop.fleet.hosts:  # a second login, with deploy's key but no lingering
        for argv in (["useradd", "-m", "-s", "/bin/bash", "nolinger"],
                     ["cp", "-r", "/home/deploy/.ssh", "/home/nolinger/.ssh"],
                     ["chown", "-R", "nolinger:", "/home/nolinger/.ssh"]):
            made = shop.fleet.exec(host, argv)
            assert made.returncode == 0, made.stderr
    try:
        shop.write(platform=shop.platform(user="nolinger", release=None))
        result = shop.run("deploy", "v1")
        said = result.stdout + result.stderr
        assert result.returncode == 1, said  # refused before anything started
        assert "no systemd manager for nolinger (lingering is off for nolinger)" in said, said
        assert "loginctl enable-linger nolinger" in said and "supervisor: detached" in said
    finally:
        for host in shop.fleet.hosts:
            shop.fleet.exec(host, ["userdel", "-r", "nolinger"])


async def test_a_host_without_systemd_is_refused_unless_detached(shop: HostService) -> None:
    with shop.fleet.plain_host() as plain:  # sshd is PID 1 there: no systemd at all
        alone = {"hosts": [plain.address], "instances_per_host": 2}
        shop.write(platform=shop.platform(**alone))
        result = shop.run("deploy", "v1")
        said = result.stdout + result.stderr
        assert result.returncode == 1, said  # refused before anything started
        assert f"host {plain.address}: no systemd manager for deploy" in said, said
        assert "supervisor: detached" in said
        shop.write(platform=shop.platform(**alone, supervisor="detached"))
        check(shop.run("deploy", "v1"))
        async with httpx.AsyncClient(trust_env=False) as client:
            answer = (await client.get(shop.url)).json()
        assert answer["version"] == "v1" and answer["host"] == "plain", answer
        check(shop.run("down"))


def test_a_release_path_missing_on_a_host_is_named(shop: HostService) -> None:
    shop.write(platform=shop.platform(release={"path": "/srv/prebuilt/{version}"}))
    app = (shop.folder / "release" / "app.py").read_text()
    for host in shop.fleet.hosts[:3]:  # the fourth host lacks it
        made = shop.fleet.exec(host, ["sh", "-c", 'mkdir -p "$1" && cat > "$1/app.py"', "put",
                                      "/srv/prebuilt/v1"], user="deploy", input=app)
        assert made.returncode == 0, made.stderr
    result = shop.run("deploy", "v1")
    said = result.stdout + result.stderr
    assert result.returncode != 0, said
    last = shop.fleet.hosts[3].address
    assert f"host {last}: the release folder /srv/prebuilt/v1 does not exist" in said, said
