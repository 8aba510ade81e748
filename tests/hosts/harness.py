"""Test hosts: real Debian machines on this machine for the tests of the SSH platform.

Each host is a container of a private Docker daemon (scripts/testhosts/dockerd.sh) running
an image made with debootstrap (scripts/testhosts/build-image.sh): systemd is PID 1, sshd
answers on port 22 and python3 is there. Hosts sit on a user-defined bridge network on a
private 172.30.x.0/24 subnet that only this machine reaches; their addresses are what ssh
and the router use.

`HostFleet.start` builds or loads the image, starts the hosts and waits until each one has
booted, its user manager for `deploy` runs and its sshd answers. The fleet writes an
ed25519 identity accepted for `deploy` and `root` and a known_hosts file with every host's
own keys, read from the host itself. Tests break hosts with `stop_host` and `cut`; `reset`
puts everything back between tests and `close` removes every container and the network.

Every docker call is an argv list with a timeout; failures raise `HostError` carrying the
command's stderr.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, TypeVar

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts" / "testhosts"
RUN_DIR = Path("/run/turnout-testhosts")
DOCKER = ["docker", "--host", f"unix://{RUN_DIR / 'docker.sock'}"]
PREFIX = "turnout-test"
USERS = {"root": 0, "deploy": 1000}
# Docker's --privileged would ask for every capability, and this machine's bounding set
# lacks CAP_SYS_RESOURCE, so the hosts get all the others. systemd manages its own part
# of the cgroup v1 hierarchies through the writable bind mount.
RUN_FLAGS = [
    "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
    "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
    "--cgroupns=host", "--volume", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
    "--tmpfs", "/run", "--tmpfs", "/run/lock", "--tmpfs", "/tmp",
    "--stop-signal", "SIGRTMIN+3", "--stop-timeout", "20",
]
HOST_KEYS = [f"/etc/ssh/ssh_host_{kind}_key.pub" for kind in ("ed25519", "ecdsa", "rsa")]
BOOT_TIMEOUT = 120.0
BUILD_TIMEOUT = 900.0

T = TypeVar("T")


class HostError(RuntimeError):
    """A test host could not be made, reached or changed; the message says which and why."""


def default_cache() -> Path:
    """$TESTHOSTS_CACHE (the Makefile gives it; a relative path is taken from the repository),
    else ~/.cache/turnout/testhosts: outside the clone, so a fresh clone finds the image built."""
    given = os.environ.get("TESTHOSTS_CACHE")
    if given:
        return (REPO / given).resolve()
    return Path.home() / ".cache" / "turnout" / "testhosts"


def run(argv: list[str], *, timeout: float, input: str | None = None, check: bool = True,
        what: str = "") -> subprocess.CompletedProcess[str]:
    """Runs argv (no shell) within timeout; with check, a non-zero exit raises HostError."""
    try:
        done = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout,
                              check=False, stdin=None if input is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise HostError(f"{what or argv[0]}: {_show(argv)} did not finish within {timeout:g} s") from exc
    except OSError as exc:
        raise HostError(f"{what or argv[0]}: cannot run {argv[0]}: {exc}") from exc
    if check and done.returncode != 0:
        raise HostError(f"{what or argv[0]}: {_show(argv)} exited {done.returncode}: "
                        f"{(done.stderr or done.stdout).strip()[-2000:]}")
    return done


def docker(*args: str, timeout: float = 60.0, input: str | None = None,
           check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([*DOCKER, *args], timeout=timeout, input=input, check=check, what=f"docker {args[0]}")


def _show(argv: list[str]) -> str:
    return " ".join(argv)[:300]


@dataclass(frozen=True)
class Host:
    name: str  # container name
    address: str  # its IP on the private network: what ssh and the router use
    port: int = 22


class HostFleet:
    """Running test hosts; a context manager that removes them on exit."""

    def __init__(self, *, network: str, gateway: str, hosts: list[Host], identity: Path,
                 known_hosts: Path, cache: Path, lock: IO[bytes]) -> None:
        self.network = network
        self.gateway = gateway  # this machine's address on the hosts' network
        self.hosts = hosts
        self.user = "deploy"
        self.identity = identity
        self.known_hosts = known_hosts
        self._cache = cache
        self._lock: IO[bytes] | None = lock
        self._stopped: set[str] = set()
        self._cut: set[str] = set()
        self.image = ""

    @classmethod
    def start(cls, count: int, workdir: Path, *, cache: Path | None = None) -> HostFleet:
        if os.geteuid() != 0:
            raise HostError("test hosts need root (a private Docker daemon and debootstrap)")
        cache = cache or default_cache()
        lock = _share_daemon()
        try:
            run(["bash", str(SCRIPTS / "dockerd.sh"), "start", str(cache)], timeout=150,
                what="dockerd.sh")
            _remove_leftovers()
            built = run(["bash", str(SCRIPTS / "build-image.sh"), str(cache)], timeout=BUILD_TIMEOUT,
                        what="build-image.sh")
            image = built.stdout.strip().splitlines()[-1]
            identity = _make_identity(workdir)
            network, prefix = _create_network()
        except BaseException:
            lock.close()
            raise
        hosts = [Host(name=f"{network}-h{i}", address=f"{prefix}.{10 + i}") for i in range(count)]
        fleet = cls(network=network, gateway=f"{prefix}.1", hosts=hosts, identity=identity,
                    known_hosts=workdir / "known_hosts", cache=cache, lock=lock)
        fleet.image = image
        try:
            for index, host in enumerate(hosts):
                docker("run", "--detach", "--name", host.name, "--hostname", f"h{index}",
                       "--network", network, "--ip", host.address, "--label", f"{PREFIX}={network}",
                       *RUN_FLAGS, image)
            public = identity.with_suffix(".pub").read_text()
            keys = _each(hosts, lambda host: fleet._first_boot(host, public))
            fleet.known_hosts.write_text("".join(keys))
        except BaseException:
            fleet.close()
            raise
        return fleet

    def __enter__(self) -> HostFleet:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def exec(self, host: Host, argv: list[str], *, user: str = "root", timeout: float = 60.0,
             input: str | None = None, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Runs argv on host as user through docker exec (no shell); deploy gets its
        XDG_RUNTIME_DIR so `systemctl --user` works."""
        options = ["--user", user]
        if input is not None:
            options.append("--interactive")
        uid = USERS.get(user)
        if uid:
            options += ["--env", f"XDG_RUNTIME_DIR=/run/user/{uid}", "--workdir", f"/home/{user}"]
        return docker("exec", *options, host.name, *argv, timeout=timeout, input=input, check=check)

    def ssh_argv(self, host: Host, *, user: str = "deploy") -> list[str]:
        """The real ssh client's argv to reach host as user with strict host key checking."""
        return ["ssh", "-F", "/dev/null", "-i", str(self.identity), "-o", "IdentitiesOnly=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-p", str(host.port),
                f"{user}@{host.address}"]

    @contextlib.contextmanager
    def plain_host(self) -> Iterator[Host]:
        """One more host from the same image without systemd: sshd is its PID 1. Its keys
        are added to known_hosts; it is removed on exit."""
        prefix = self.gateway.rpartition(".")[0]
        host = Host(name=f"{self.network}-plain", address=f"{prefix}.{10 + len(self.hosts)}")
        docker("run", "--detach", "--name", host.name, "--hostname", "plain", "--network",
               self.network, "--ip", host.address, "--label", f"{PREFIX}={self.network}",
               "--tmpfs", "/run", "--tmpfs", "/tmp", self.image, "sh", "-c",
               "ssh-keygen -A >/dev/null && mkdir -p /run/sshd && exec /usr/sbin/sshd -D -e")
        saved = self.known_hosts.read_text()
        try:
            _wait_for_sshd(host)  # its host keys are made by then
            self.exec(host, ["python3", "-c", _AUTHORIZE_SCRIPT,
                             self.identity.with_suffix(".pub").read_text()], timeout=30, check=True)
            keys = self.exec(host, ["cat", *HOST_KEYS], timeout=30, check=True)
            self.known_hosts.write_text(saved + "".join(
                f"{host.address} {' '.join(line.split()[:2])}\n"
                for line in keys.stdout.splitlines() if line.strip()))
            yield host
        finally:
            self.known_hosts.write_text(saved)
            docker("rm", "--force", host.name, timeout=60, check=False)

    def stop_host(self, host: Host) -> None:
        docker("stop", host.name, timeout=60)
        self._stopped.add(host.name)

    def start_host(self, host: Host) -> None:
        docker("start", host.name, timeout=60)
        self._stopped.discard(host.name)
        self._wait_ready(host, reachable=host.name not in self._cut)

    def cut(self, host: Host) -> None:
        """Takes host off the network: connections to its address stop getting answers."""
        if host.name not in self._cut:
            docker("network", "disconnect", self.network, host.name)
            self._cut.add(host.name)

    def heal(self, host: Host) -> None:
        if host.name in self._cut:
            docker("network", "connect", "--ip", host.address, self.network, host.name)
            self._cut.discard(host.name)

    def reset(self) -> None:
        """Puts every host back as it started: on the network, running, no turnout-* unit,
        no failed unit, no router, /srv empty."""
        for host in self.hosts:
            self.heal(host)
        for host in self.hosts:
            if host.name in self._stopped:
                self.start_host(host)
        _each(self.hosts, lambda host: self.exec(host, ["python3", "-c", _RESET_SCRIPT], timeout=90,
                                                 check=True))

    def close(self) -> None:
        """Removes the containers and the network; stops the private daemon when no other
        fleet uses it. Safe to call twice."""
        if self._lock is None:
            return
        errors: list[str] = []
        removals = [["rm", "--force", "--volumes", *(host.name for host in self.hosts)]] if self.hosts else []
        for argv in [*removals, ["network", "rm", self.network]]:
            done = docker(*argv, timeout=120, check=False)
            if done.returncode != 0 and "No such" not in done.stderr:
                errors.append(done.stderr.strip())
        self._lock.close()
        self._lock = None
        _stop_daemon_if_unused(self._cache)
        if errors:
            raise HostError("could not remove the test hosts: " + "; ".join(errors))

    def _first_boot(self, host: Host, public_key: str) -> str:
        """Waits for host, installs the fleet's key for root and deploy, returns its
        known_hosts lines."""
        self._wait_ready(host, reachable=False)
        self.exec(host, ["python3", "-c", _AUTHORIZE_SCRIPT, public_key], timeout=30, check=True)
        keys = self.exec(host, ["cat", *HOST_KEYS], timeout=30, check=True)
        _wait_for_sshd(host)
        return "".join(f"{host.address} {' '.join(line.split()[:2])}\n"
                       for line in keys.stdout.splitlines() if line.strip())

    def _wait_ready(self, host: Host, *, reachable: bool) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT
        _until(deadline, host, "systemd did not finish booting",
               lambda: self._state(host, ["systemctl", "is-system-running", "--wait"], "root"))
        _until(deadline, host, "deploy's systemd user manager did not start",
               lambda: self._state(host, ["systemctl", "--user", "is-system-running", "--wait"], "deploy"))
        if reachable:
            _wait_for_sshd(host, deadline)

    def _state(self, host: Host, argv: list[str], user: str) -> str:
        """The manager's state once it is up; otherwise HostError saying what it was."""
        done = self.exec(host, argv, user=user, timeout=BOOT_TIMEOUT)
        state = done.stdout.strip()
        if state not in ("running", "degraded"):
            raise HostError(f"(last: {' '.join(argv)} as {user} said {state!r} {done.stderr.strip()})")
        return state


# Run as root on a host by reset(): stop and forget every turnout-* unit of the system and
# of deploy, clear failed units, empty /srv. Exits non-zero when a step fails.
_RESET_SCRIPT = r"""
import glob, os, shutil, subprocess, sys
USER = ["runuser", "-u", "deploy", "--", "env", "XDG_RUNTIME_DIR=/run/user/1000", "systemctl", "--user"]
SYSTEM = ["systemctl"]
def call(argv):
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)}: {done.stderr.strip()}")
for manager, folder in ((SYSTEM, "/etc/systemd/system"), (USER, "/home/deploy/.config/systemd/user")):
    call(manager + ["stop", "turnout-*"])
    files = glob.glob(folder + "/turnout-*")
    for path in files:
        shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)
    if files:
        call(manager + ["daemon-reload"])
    call(manager + ["reset-failed"])
# a router that a test left on a host, with its table and counters
subprocess.run(["pkill", "-KILL", "-u", "deploy", "-f", "turnout.routers.proxy"], timeout=30)
shutil.rmtree("/home/deploy/.local/state/turnout/routers", ignore_errors=True)
for entry in os.scandir("/srv"):
    shutil.rmtree(entry.path) if entry.is_dir(follow_symlinks=False) else os.unlink(entry.path)
os.chown("/srv", 1000, 1000)
"""

# Run as root on a host at first boot with the public key as argv[1].
_AUTHORIZE_SCRIPT = r"""
import os, sys
for home, uid in (("/root", 0), ("/home/deploy", 1000)):
    folder = os.path.join(home, ".ssh")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    path = os.path.join(folder, "authorized_keys")
    with open(path, "w") as out:
        out.write(sys.argv[1])
    for item in (folder, path):
        os.chown(item, uid, uid)
    os.chmod(path, 0o600)
"""


def _until(deadline: float, host: Host, problem: str, probe: Callable[[], str | None]) -> str:
    last = ""
    while time.monotonic() < deadline:
        try:
            state = probe()
        except HostError as exc:
            state, last = None, str(exc)
        if state is not None:
            return state
        time.sleep(0.2)
    raise HostError(f"{host.name} ({host.address}): {problem} within {BOOT_TIMEOUT:g} s {last}".strip())


def _wait_for_sshd(host: Host, deadline: float | None = None) -> None:
    deadline = deadline or time.monotonic() + BOOT_TIMEOUT

    def banner() -> str | None:
        try:
            with socket.create_connection((host.address, host.port), timeout=2) as sock:
                sock.settimeout(2)
                return "ok" if sock.recv(64).startswith(b"SSH-") else None
        except OSError:
            return None

    _until(deadline, host, f"sshd did not answer on port {host.port}", banner)


def _each(hosts: Iterable[Host], act: Callable[[Host], T]) -> list[T]:
    """Runs act on every host at once; the first failure is raised after all finish."""
    items = list(hosts)
    with ThreadPoolExecutor(max_workers=max(1, len(items))) as pool:
        futures = [pool.submit(act, host) for host in items]
    return [future.result() for future in futures]


def _make_identity(workdir: Path) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    identity = workdir / "id_ed25519"
    for path in (identity, identity.with_suffix(".pub")):
        path.unlink(missing_ok=True)
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "turnout-testhosts", "-f", str(identity)],
        timeout=30)
    identity.chmod(0o600)
    return identity


def _create_network() -> tuple[str, str]:
    """Creates a bridge network on a free 172.30.x.0/24; returns its name and "172.30.x"."""
    taken = _routed_networks()
    start = os.getpid() % 256
    for step in range(256):
        third = (start + step) % 256
        subnet = ipaddress.ip_network(f"172.30.{third}.0/24")
        if any(subnet.overlaps(other) for other in taken):
            continue
        name = f"{PREFIX}-{os.getpid()}-{third}"
        done = docker("network", "create", "--driver", "bridge", "--subnet", str(subnet),
                      "--gateway", f"172.30.{third}.1", "--label", f"{PREFIX}=1",
                      "--opt", "com.docker.network.bridge.enable_ip_masquerade=false", name, check=False)
        if done.returncode == 0:
            return name, f"172.30.{third}"
        if "overlap" not in done.stderr and "already exists" not in done.stderr:
            raise HostError(f"docker network create {name}: {done.stderr.strip()}")
    raise HostError("no free 172.30.x.0/24 subnet for the test hosts' network")


def _routed_networks() -> list[ipaddress.IPv4Network]:
    done = run(["ip", "-json", "-4", "route", "show", "table", "all"], timeout=10)
    found: list[ipaddress.IPv4Network] = []
    for route in json.loads(done.stdout or "[]"):
        dst = str(route.get("dst", ""))
        if dst and dst != "default" and ":" not in dst:
            found.append(ipaddress.IPv4Network(dst, strict=False))
    return [net for net in found if net.prefixlen > 0]


def _remove_leftovers() -> None:
    """Removes containers and networks of test sessions whose process is gone."""
    def dead(name: str) -> bool:
        pid = name.removeprefix(f"{PREFIX}-").split("-", 1)[0]
        return pid.isdigit() and not Path(f"/proc/{pid}").exists()

    names = docker("ps", "--all", "--filter", f"label={PREFIX}", "--format", "{{.Names}}").stdout.split()
    if stale := [name for name in names if dead(name)]:
        docker("rm", "--force", "--volumes", *stale, timeout=120)
    nets = docker("network", "ls", "--filter", f"label={PREFIX}", "--format", "{{.Name}}").stdout.split()
    for name in nets:
        if dead(name):
            docker("network", "rm", name, check=False)


def _share_daemon() -> IO[bytes]:
    """A shared lock held while a fleet uses the private daemon; whoever can take it
    exclusively knows nobody else does."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    lock = (RUN_DIR / "users.lock").open("ab")
    deadline = time.monotonic() + 120
    while True:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            return lock
        except BlockingIOError:
            if time.monotonic() > deadline:
                lock.close()
                raise HostError(f"{RUN_DIR / 'users.lock'} stayed locked for 120 s") from None
            time.sleep(0.2)


def _stop_daemon_if_unused(cache: Path) -> None:
    with (RUN_DIR / "users.lock").open("ab") as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        left = docker("ps", "--all", "--quiet", check=False)
        if left.returncode == 0 and not left.stdout.strip():
            run(["bash", str(SCRIPTS / "dockerd.sh"), "stop", str(cache)], timeout=60,
                what="dockerd.sh")
