"""The test hosts are real machines: strict-key ssh with the real client and asyncssh,
systemd as PID 1, user and system units that serve HTTP to this machine and log to the
journal, network cuts, stops and restarts, their own host keys, and a reset that really
clears what a test left. The last test pins down how systemd-run expands `$` and `%` in
the arguments it is given, which decides how the SSH platform escapes spec values."""

from __future__ import annotations

import asyncio
import json
import shlex
import socket
import subprocess
import time

import asyncssh
import httpx
import pytest

from tests.hosts.harness import Host, HostFleet

pytestmark = pytest.mark.serial  # on the test hosts: alone, after the parallel pass
PORT = 8080
USER_ENV = ["env", "XDG_RUNTIME_DIR=/run/user/1000"]


def reachable(host: Host, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host.address, host.port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def ssh(fleet: HostFleet, host: Host, command: str, *,
        user: str = "deploy") -> subprocess.CompletedProcess[str]:
    return subprocess.run([*fleet.ssh_argv(host, user=user), command], capture_output=True, text=True,
                          timeout=30, check=False, stdin=subprocess.DEVNULL)


async def connect(fleet: HostFleet, host: Host, user: str) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(host.address, host.port, username=user, client_keys=[str(fleet.identity)],
                                  known_hosts=str(fleet.known_hosts), config=None, connect_timeout=10)


async def http_get(url: str, deadline_s: float = 15.0) -> httpx.Response:
    deadline = time.monotonic() + deadline_s
    async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
        while True:
            try:
                return await client.get(url)
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)


async def journal_shows(conn: asyncssh.SSHClientConnection, argv: list[str], text: str) -> str:
    """The journal lines argv prints, once they contain text (journald writes a little late)."""
    out = ""
    for _ in range(50):
        out = str((await conn.run(shlex.join(argv), check=True, timeout=20)).stdout)
        if text in out:
            break
        await asyncio.sleep(0.2)
    return out


def test_ssh_as_deploy_and_root_with_strict_host_keys_on_every_host(hosts: HostFleet) -> None:
    for host in hosts.hosts:
        as_deploy = ssh(hosts, host, "id -un; cat /proc/1/comm; stat -c %U /srv; "
                                     "test -f /var/lib/systemd/linger/deploy")
        assert as_deploy.returncode == 0, as_deploy.stderr
        assert as_deploy.stdout.split() == ["deploy", "systemd", "deploy"]
        as_root = ssh(hosts, host, "id -u", user="root")
        assert as_root.returncode == 0, as_root.stderr
        assert as_root.stdout.strip() == "0"


def test_pid_1_is_systemd_and_no_unit_failed(hosts: HostFleet) -> None:
    host = hosts.hosts[0]
    assert hosts.exec(host, ["cat", "/proc/1/comm"]).stdout.strip() == "systemd"
    state = hosts.exec(host, ["systemctl", "is-system-running"])
    assert state.stdout.strip() == "running", hosts.exec(host, ["systemctl", "--failed"]).stdout
    user = hosts.exec(host, ["systemctl", "--user", "is-system-running"], user="deploy")
    assert user.stdout.strip() == "running"


def test_hosts_have_their_own_keys_and_a_wrong_key_is_refused(hosts: HostFleet) -> None:
    first, second = hosts.hosts[:2]
    key = "/etc/ssh/ssh_host_ed25519_key.pub"
    keys = {hosts.exec(host, ["cat", key], check=True).stdout.split()[1] for host in (first, second)}
    assert len(keys) == 2
    # Claim that the first host's address has the second host's keys: ssh must refuse.
    lines = hosts.known_hosts.read_text().splitlines()
    swapped = [line.replace(second.address + " ", first.address + " ", 1) for line in lines
               if line.startswith(second.address + " ")]
    wrong = hosts.known_hosts.with_name("known_hosts_swapped")
    wrong.write_text("\n".join(swapped) + "\n")
    argv = [arg.replace(str(hosts.known_hosts), str(wrong)) for arg in hosts.ssh_argv(first)]
    refused = subprocess.run([*argv, "true"], capture_output=True, text=True, timeout=30, check=False,
                             stdin=subprocess.DEVNULL)
    assert refused.returncode == 255
    assert "verification failed" in refused.stderr


async def test_user_unit_started_over_asyncssh_serves_http_restarts_and_logs(hosts: HostFleet) -> None:
    host = hosts.hosts[1]
    command = [*USER_ENV, "systemd-run", "--user", "--unit", "turnout-probe", "-p", "Restart=on-failure",
               "--", "python3", "-m", "http.server", str(PORT), "--directory", "/srv"]
    async with await connect(hosts, host, "deploy") as conn:
        await conn.run(shlex.join(command), check=True, timeout=20)
        answer = await http_get(f"http://{host.address}:{PORT}/")
        assert answer.status_code == 200
        logs = await journal_shows(conn, [*USER_ENV, "journalctl", "--user", "-u", "turnout-probe",
                                          "--no-pager", "-o", "cat"], '"GET / HTTP/1.1" 200')
        assert '"GET / HTTP/1.1" 200' in logs
        await conn.run(shlex.join([*USER_ENV, "systemctl", "--user", "kill", "-s", "KILL", "turnout-probe"]),
                       check=True, timeout=20)
        assert (await http_get(f"http://{host.address}:{PORT}/")).status_code == 200
        shown = await conn.run(shlex.join([*USER_ENV, "systemctl", "--user", "show", "-p", "NRestarts",
                                           "turnout-probe"]), check=True, timeout=20)
        assert str(shown.stdout).strip() == "NRestarts=1"


async def test_system_unit_started_as_root_serves_http_and_logs(hosts: HostFleet) -> None:
    host = hosts.hosts[2]
    command = ["systemd-run", "--unit", "turnout-probe", "-p", "Restart=on-failure",
               "--", "python3", "-m", "http.server", str(PORT + 1), "--directory", "/srv"]
    async with await connect(hosts, host, "root") as conn:
        await conn.run(shlex.join(command), check=True, timeout=20)
        assert (await http_get(f"http://{host.address}:{PORT + 1}/")).status_code == 200
        logs = await journal_shows(conn, ["journalctl", "-u", "turnout-probe", "--no-pager", "-o", "cat"],
                                   '"GET / HTTP/1.1" 200')
        assert '"GET / HTTP/1.1" 200' in logs


def test_cut_makes_a_host_unreachable_until_healed(hosts: HostFleet) -> None:
    host, other = hosts.hosts[3], hosts.hosts[0]
    assert reachable(host)
    hosts.cut(host)
    assert not reachable(host, timeout=1.0)
    assert reachable(other)
    hosts.heal(host)
    deadline = time.monotonic() + 10
    while not reachable(host) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert reachable(host)
    assert ssh(hosts, host, "true").returncode == 0


def test_stopped_host_comes_back_with_its_keys_and_address(hosts: HostFleet) -> None:
    host = hosts.hosts[0]
    hosts.stop_host(host)
    assert not reachable(host, timeout=1.0)
    assert hosts.exec(host, ["true"]).returncode != 0
    hosts.start_host(host)
    again = ssh(hosts, host, "systemctl --user is-system-running")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "running"


def test_reset_restores_hosts_and_clears_units_and_srv(hosts: HostFleet) -> None:
    first, second, third = hosts.hosts[:3]
    user_unit = ["systemd-run", "--user", "--unit", "turnout-leftover", "--", "sleep", "600"]
    assert hosts.exec(first, user_unit, user="deploy").returncode == 0
    assert hosts.exec(first, ["systemd-run", "--unit", "turnout-broken", "--", "false"]).returncode == 0
    assert hosts.exec(first, ["touch", "/srv/release", "/srv/.hidden"], user="deploy").returncode == 0
    hosts.stop_host(second)
    hosts.cut(third)
    hosts.reset()
    assert reachable(second) and reachable(third)
    listing = ["list-units", "--all", "--plain", "--no-legend", "turnout-*"]
    system = hosts.exec(first, ["systemctl", *listing])
    user = hosts.exec(first, ["systemctl", "--user", *listing], user="deploy")
    assert system.stdout.strip() == "" and user.stdout.strip() == ""
    assert hosts.exec(first, ["ls", "-A", "/srv"]).stdout == ""
    assert hosts.exec(first, ["systemctl", "is-system-running"]).stdout.strip() == "running"


EXPANSION_CASES = ["$X", "${X}", "a$Xb", "a${X}b", "$S", "${S}", "$NOPE", "${NOPE}", "$", "$$", "x$$y",
                   "%n", "%%", "100%", "\\$X"]


def run_and_collect(hosts: HostFleet, host: Host, args: list[str], *, setenv: str) -> tuple[list[str], str]:
    """Runs a user unit with args through systemd-run and returns the argv and $Y it got."""
    script = "import json,os,sys; json.dump([sys.argv[1:], os.environ['Y']], open('/srv/seen.json', 'w'))"
    unit = ["systemd-run", "--user", "--unit", "turnout-expand", "--wait", "--quiet", "-E", "X=1",
            "-E", "S=a b", "--setenv", f"Y={setenv}", "--", "python3", "-c", script, *args]
    done = hosts.exec(host, unit, user="deploy")
    assert done.returncode == 0, done.stderr
    seen: list[str]
    seen, value = json.loads(hosts.exec(host, ["cat", "/srv/seen.json"], check=True).stdout)
    return seen, value


def test_systemd_run_expands_dollar_but_not_percent_and_doubling_dollar_keeps_args_literal(
        hosts: HostFleet) -> None:
    host = hosts.hosts[1]
    seen, value = run_and_collect(hosts, host, EXPANSION_CASES, setenv="$X%n")
    # A whole-word $NAME splits into words (none when unset, also for "$" alone);
    # ${NAME} is replaced anywhere; $NAME inside a word stays; $$ is one $; % is never touched.
    assert seen == ["1", "1", "a$Xb", "a1b", "a", "b", "a b", "", "$", "x$y", "%n", "%%", "100%", "\\$X"]
    assert value == "$X%n"
    escaped = [arg.replace("$", "$$") for arg in EXPANSION_CASES]
    literal, _ = run_and_collect(hosts, host, escaped, setenv="")
    assert literal == EXPANSION_CASES


@pytest.mark.parametrize("user", ["deploy", "root"])
def test_exec_runs_argv_without_a_shell(hosts: HostFleet, user: str) -> None:
    done = hosts.exec(hosts.hosts[0], ["printf", "%s|", "a b", "$HOME", ";true"], user=user)
    assert done.stdout == "a b|$HOME|;true|"
