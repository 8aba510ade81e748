"""Instances as plain detached processes, for hosts without systemd (`supervisor: detached`).

The local platform's way, run over SSH: each instance is started without a shell in a
session of its own, its output appended to a log file, and a record of its pid, start time
(in clock ticks since boot, from /proc) and boot id kept on the host, so only that very
process is ever signalled and a reused pid is not. Nothing restarts a crashed instance
and nothing survives a reboot: that is what `supervisor: systemd` is for.

The host side is `_HELPER`, a constant Python program (python3 is needed on the host) run
as `python3 -c _HELPER VERB` with its arguments as JSON on standard input, so no spec value
is ever part of a command line. Records and logs live in `~/.local/state/turnout/` there.
"""

from __future__ import annotations

import json
from typing import Any

from turnout.errors import PlatformError
from turnout.model import Instance
from turnout.platforms.ssh_link import HostLink
from turnout.platforms.supervisor import Launch, instance_from_meta, instance_meta

_HELPER = r'''
import json, os, signal, sys, time
STATE = os.path.expanduser("~/.local/state/turnout")
RECORDS, LOGS = os.path.join(STATE, "instances"), os.path.join(STATE, "logs")

def boot():
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()

def ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None

def record(name):
    try:
        with open(os.path.join(RECORDS, name + ".json")) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    alive = data.get("boot") == boot() and ticks(data["pid"]) == data["ticks"]
    return data if alive else None

def start(a):
    found = record(a["name"])
    if found:
        return found
    os.makedirs(RECORDS, 0o700, exist_ok=True)
    os.makedirs(LOGS, 0o700, exist_ok=True)
    log = os.open(os.path.join(LOGS, a["name"] + ".log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    read, write = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            os.chdir(a["cwd"] or os.path.expanduser("~"))
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0); os.dup2(log, 1); os.dup2(log, 2)
            os.execvpe(a["command"][0], a["command"], a["env"])
        except OSError as exc:
            os.write(write, f"{a['command'][0]}: {exc.strerror}".encode())
        os._exit(127)
    os.close(write)
    failed = os.read(read, 4096).decode()
    if failed:
        os.waitpid(pid, 0)
        raise SystemExit("cannot start: " + failed)
    data = {"pid": pid, "ticks": ticks(pid), "boot": boot(), "instance": a["instance"]}
    path = os.path.join(RECORDS, a["name"] + ".json")
    with open(path + ".new", "w") as f:
        json.dump(data, f)
    os.replace(path + ".new", path)
    return data

def stop(a):
    found = record(a["name"])
    if found:
        pid, deadline = found["pid"], time.monotonic() + a["grace"]
        os.killpg(pid, signal.SIGTERM)
        while ticks(pid) == found["ticks"] and time.monotonic() < deadline:
            time.sleep(0.05)
        if ticks(pid) == found["ticks"]:
            os.killpg(pid, signal.SIGKILL)
    try:
        os.unlink(os.path.join(RECORDS, a["name"] + ".json"))
    except FileNotFoundError:
        pass
    return bool(found)

def listed(a):
    found = []
    for entry in sorted(os.listdir(RECORDS)) if os.path.isdir(RECORDS) else []:
        name = entry[:-len(".json")]
        if entry.endswith(".json") and name.startswith(a["prefix"]):
            data = record(name)
            if data:
                found.append(data)
            else:
                os.unlink(os.path.join(RECORDS, entry))
    return found

def tail(a):
    try:
        with open(os.path.join(LOGS, a["name"] + ".log"), "rb") as f:
            f.seek(0, 2); f.seek(max(0, f.tell() - 65536))
            return b"".join(f.read().splitlines(True)[-a["lines"]:]).decode("utf-8", "replace")
    except OSError:
        return ""

verbs = {"start": start, "stop": stop, "alive": lambda a: bool(record(a["name"])),
         "list": listed, "tail": tail}
print(json.dumps(verbs[sys.argv[1]](json.load(sys.stdin))))
'''


def record_name(instance: Instance) -> str:
    """A file name for the instance: its service and id, anything odd written as `_xx`."""
    raw = f"{instance.service}-{instance.id}"
    return "".join(c if c.isalnum() or c in "._-" else f"_{ord(c):02x}" for c in raw)[:200]


class Detached:
    """Instances as detached processes on the host (see the module docstring)."""

    async def launch(self, link: HostLink, instance: Instance, launch: Launch) -> Instance | None:
        found = await self._call(link, "start", {
            "name": record_name(instance), "cwd": launch.cwd, "env": dict(launch.env),
            "command": launch.command, "instance": instance_meta(instance)}, what=f"start {instance.id}")
        return _instance(found, link.host)

    async def alive(self, link: HostLink, instance: Instance) -> bool:
        return bool(await self._call(link, "alive", {"name": record_name(instance)}, what="check it"))

    async def stop(self, link: HostLink, instance: Instance, *, grace: float) -> None:
        await self._call(link, "stop", {"name": record_name(instance), "grace": grace},
                         what=f"stop {instance.id}", limit=grace + 15.0)

    async def listed(self, link: HostLink, service: str) -> list[Instance]:
        records = await self._call(link, "list", {"prefix": f"{service}-"}, what="list the instances")
        found = [_instance(r, link.host) for r in records]
        return [i for i in found if i is not None and i.service == service]

    async def log_tail(self, link: HostLink, instance: Instance, *, lines: int) -> str:
        text = await self._call(link, "tail", {"name": record_name(instance), "lines": lines},
                                what="read its log")
        return str(text)

    async def _call(self, link: HostLink, verb: str, args: dict[str, Any], *, what: str,
                    limit: float | None = None) -> Any:
        out = await link.run(["python3", "-c", _HELPER, verb], stdin=json.dumps(args).encode(),
                             limit=limit)
        if not out.ok:
            raise PlatformError(f"host {link.name}: cannot {what}: {out.reason()}")
        try:
            return json.loads(out.stdout)
        except ValueError:
            raise PlatformError(f"host {link.name}: cannot {what}: unreadable answer") from None


def _instance(found: Any, host: str) -> Instance | None:
    """The instance of a record the helper gave back; None if the record is damaged."""
    try:
        meta, pid, ticks = found["instance"], int(found["pid"]), float(found["ticks"])
    except (TypeError, KeyError, ValueError):
        return None
    return instance_from_meta(meta, host=host, pid=pid, started=ticks)
