"""The builtin router on a chosen host of the ssh platform (`router: {kind: builtin, host: ...}`).

`HostedRouter` is a `BuiltinRouter` whose proxy runs on `router.host` and whose admin API
is reached over the platform's SSH login: the proxy's admin socket on the host is
forwarded to a private socket on this machine (asyncssh's UNIX socket forwarding, opened
again when the connection is), and every admin call goes through it unchanged.

The proxy needs turnout and the libraries it imports on the host. `code_files` asks this
environment's Python which ones the proxy's modules load beyond the standard library and
lists their files; they go to `~/.local/share/turnout/router-code/<digest>` as a release
bundle (`platforms.release`: checksummed, sent only when missing), the digest of their
contents naming the folder, so another turnout version goes beside it. Several of them are
compiled (uvloop, httptools, pydantic-core, mmh3, re2), so the host must run the same
Python (cache tag such as `cpython-311`) on the same machine type; `ensure_running` checks
it and says what it found. The proxy's state (table, flags, counters, log) is in
`~/.local/state/turnout/routers/<service>` on the host, and `turnout.routers.proxy.control`
starts and stops it there with the same code this machine uses for its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import httpx

from turnout.errors import PlatformError, RouterError
from turnout.platforms import release
from turnout.platforms.ssh import login_for
from turnout.platforms.ssh_link import HostLink, Output
from turnout.routers.base import Capability, Router, RouterInfo
from turnout.routers.builtin import BuiltinRouter
from turnout.spec import Spec
from turnout.spec.hosts import SshPlatformSpec, host_address
from turnout.spec.routing import RouterChoice
from turnout.statedir import StateDir

if TYPE_CHECKING:
    import asyncssh

# The proxy's entry points: what the host must be able to import.
ENTRY = ("turnout.routers.proxy.supervisor", "turnout.routers.proxy.worker",
         "turnout.routers.proxy.control")
CODE_BASE = ".local/share/turnout/router-code"  # under the login's home
STATE_BASE = ".local/state/turnout/routers"
CONTROL_SECONDS = 30.0  # a stop waits for the proxy's drain (10 s) and its kill

# Constant scripts; paths reach them as positional arguments, quoted by the link.
_ABOUT = ('printf "%s\\n" "$HOME" && exec python3 -c '
          '"import platform, sys; print(sys.implementation.cache_tag, platform.machine())"')
_CONTROL = ('code="$1"; shift; [ -d "$code" ] || { echo "no router code in $code" >&2; exit 3; }; '
            'PYTHONPATH="$code" exec python3 -s -m turnout.routers.proxy.control "$@"')
_LINK_CODE = 'mkdir -p -m 700 -- "$2" && ln -sfn -- "$1" "$2/code"'
_PROBE = ("import json, sys; before = set(sys.modules); [__import__(m) for m in sys.argv[1:]]; "
          "print(json.dumps(sorted({n.partition('.')[0] for n in set(sys.modules) - before})))")


def code_files() -> list[tuple[str, Path]]:
    """Every file the proxy needs beyond the standard library, as (path in the bundle, file)."""
    probe = subprocess.run([sys.executable, "-c", _PROBE, *ENTRY], capture_output=True,
                           text=True, timeout=120, check=False)
    if probe.returncode != 0:
        raise RouterError(f"cannot list the router's code: {probe.stderr.strip()[-500:]}")
    base = {"base": sys.base_prefix, "platbase": sys.base_exec_prefix}  # not a venv's
    stdlib = {Path(sysconfig.get_path(key, vars=base)).resolve() for key in ("stdlib", "platstdlib")}
    owners = importlib.metadata.packages_distributions()
    found: dict[str, Path] = {}
    for top in json.loads(probe.stdout):
        if top in sys.stdlib_module_names or top in sys.builtin_module_names:
            continue
        try:
            spec = importlib.util.find_spec(top)
        except ValueError:  # loaded here with no spec (cython's helpers): made at run time
            continue
        if spec is None or spec.origin in (None, "built-in", "frozen"):
            continue  # made at run time (cython's helpers), nothing to copy
        origin = Path(spec.origin).resolve()
        if any(origin.is_relative_to(folder) for folder in stdlib):
            continue
        dists = owners.get(top, [])
        files = [f for d in dists for f in importlib.metadata.distribution(d).files or ()]
        shipped = [f for f in files if (f.parts and f.parts[0] == top) or f.name.startswith(f"{top}.")]
        if shipped:  # an installed distribution: its own files, with any libraries it vendors
            for f in files:
                name = f.as_posix()
                if not (name.startswith("..") or ".dist-info/" in name or "__pycache__" in name):
                    found[name] = Path(str(f.locate()))
        elif spec.submodule_search_locations:  # a package from a source tree (turnout in development)
            for path in sorted(origin.parent.rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts:
                    found[f"{top}/{path.relative_to(origin.parent).as_posix()}"] = path
        else:
            found[origin.name] = origin
    return sorted(found.items())


@cache
def code_bundle(home: str) -> release.Bundle:
    """The router's code for a host whose login's home is `home` (built once per command)."""
    files = code_files()
    digest = hashlib.sha256()
    for name, path in files:
        digest.update(f"{name}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    return release.Bundle.of_files(files, f"{home}/{CODE_BASE}/{digest.hexdigest()[:16]}")


def python_here() -> str:
    return f"{sys.implementation.cache_tag} {platform.machine()}"


class HostedRouter(BuiltinRouter):
    """The builtin router on one host, steered over SSH (see the module docstring)."""

    @classmethod
    def build(cls, spec: Spec, state: StateDir) -> HostedRouter:
        settings = spec.platform
        host = spec.router.host
        if host is None or not isinstance(settings, SshPlatformSpec):
            raise RouterError("router.host needs `platform: {kind: ssh}`")
        link = HostLink(host, *host_address(host), login_for(settings, state.spec_dir))
        return cls(link, service=spec.service, listen=spec.listen,
                   preview_listen=spec.preview_listen(), state_dir=state.router.path)

    def __init__(self, link: HostLink, *, service: str, listen: str, preview_listen: str | None,
                 state_dir: Path) -> None:
        super().__init__(state_dir, listen=listen, preview_listen=preview_listen)
        self.link = link
        self.remote_dir = f"~/{STATE_BASE}/{service}"  # shown; `_home` makes it absolute
        self.where = f"on host {link.name}"
        self._home: str | None = None
        self._tunnel: tuple[asyncssh.SSHClientConnection, asyncssh.SSHListener, Path] | None = None

    # --- the admin API, through a forwarded socket
    async def _http(self) -> httpx.AsyncClient:
        import asyncssh  # with the connection: see turnout.platforms.ssh_link
        try:
            conn = await self.link.connection()
            home = await self._host_home()
        except PlatformError as exc:
            raise RouterError(f"builtin router {self.where} unreachable: {exc}") from exc
        if self._tunnel is None or self._tunnel[0] is not conn:
            await self._close_tunnel()
            folder = Path(tempfile.mkdtemp(prefix="turnout-router-"))  # 0700, a short path
            local = folder / "admin.sock"
            try:
                listener = await conn.forward_local_path(str(local), f"{self._state(home)}/admin.sock")
            except (asyncssh.Error, OSError) as exc:
                shutil.rmtree(folder, ignore_errors=True)
                raise RouterError(f"builtin router {self.where}: cannot forward its admin socket: "
                                  f"{exc}") from exc
            self._tunnel = (conn, listener, folder)
            self.socket_path = local
        return await super()._http()

    async def _close_tunnel(self) -> None:
        await super().aclose()  # the HTTP client over the old socket
        if self._tunnel is not None:
            _, listener, folder = self._tunnel
            self._tunnel = None
            listener.close()
            shutil.rmtree(folder, ignore_errors=True)

    async def aclose(self) -> None:
        await self._close_tunnel()
        await self.link.aclose()

    # --- the process, over SSH
    async def _host_home(self) -> str:
        """The login's home on the host, once its Python is known to run the router's code."""
        if self._home is None:
            out = await self.link.run(["sh", "-c", _ABOUT, "about"])
            lines = out.stdout.splitlines()
            if not out.ok or len(lines) < 2:
                raise PlatformError(f"host {self.link.name}: cannot run python3 ({out.reason()})")
            if lines[1].strip() != python_here():
                raise PlatformError(
                    f"host {self.link.name} runs {lines[1].strip()}; the router's code is built for "
                    f"{python_here()} (the Python turnout runs on here): install that Python there, "
                    "or run the router on this machine (leave out router.host)")
            self._home = lines[0].rstrip("/")
        return self._home

    def _state(self, home: str) -> str:
        return f"{home}/{self.remote_dir.removeprefix('~/')}"

    async def _control(self, code: str, *args: str) -> Output:
        home = await self._host_home()
        return await self.link.run(["sh", "-c", _CONTROL, "control", code, *args,
                                    "--state-dir", self._state(home)], limit=CONTROL_SECONDS)

    async def ensure_running(self) -> None:
        """Send the code if the host lacks it, start the proxy unless it answers, and wait for it."""
        if await self.healthy():
            return
        try:
            home = await self._host_home()
            bundle = await asyncio.to_thread(code_bundle, home)
            await release.ensure(self.link, bundle)
            await self.link.check(["sh", "-c", _LINK_CODE, "link", bundle.remote, self._state(home)],
                                  what="record the router's code")
            preview = ["--preview-listen", self.preview_listen] if self.preview_listen else []
            out = await self._control(bundle.remote, "start", "--listen", self.listen, *preview)
        except PlatformError as exc:
            raise RouterError(f"cannot start the builtin router {self.where}: {exc}") from exc
        if not out.ok:
            raise RouterError(f"builtin router {self.where} did not start:\n{out.stderr.strip()}")
        if await self._until_healthy(lambda: True):
            return
        raise RouterError(f"builtin router {self.where} started but does not answer its admin "
                          f"socket:\n{await self._log_tail()}")

    async def _log_tail(self) -> str:
        with contextlib.suppress(PlatformError):
            home = await self._host_home()
            out = await self._control(f"{self._state(home)}/code", "log")
            return out.stdout.strip() or out.stderr.strip()
        return "(no log)"

    async def stop(self) -> None:
        """Stop the proxy on the host (drained, then killed if it lingers)."""
        try:
            home = await self._host_home()
            out = await self._control(f"{self._state(home)}/code", "stop")
        except PlatformError as exc:
            raise RouterError(f"cannot stop the builtin router {self.where}: {exc}") from exc
        if not out.ok and out.status != 3:  # 3: no code there, so it never ran
            raise RouterError(f"cannot stop the builtin router {self.where}: {out.reason()}")
        await self._close_tunnel()

    def pid(self) -> int | None:
        return None  # not on this machine: `describe` asks the proxy itself

    async def describe(self) -> RouterInfo:
        """Kind, host, pid and where its admin socket and log are on the host."""
        health = await self._answer()
        details = {"host": self.link.name}
        if health is not None:
            details["pid"] = str(health.get("pid", "?"))
        details |= {"admin": f"{self.remote_dir}/admin.sock", "log": f"{self.remote_dir}/proxy.log"}
        return self._info(running=health is not None, health=health, details=details)

class BuiltinKind:
    """The `builtin` router kind for `turnout.wiring`: on this machine, or on `router.host`."""

    capabilities: ClassVar[frozenset[Capability]] = BuiltinRouter.capabilities

    @staticmethod
    def capabilities_for(choice: RouterChoice) -> frozenset[Capability]:
        return BuiltinRouter.capabilities  # the same wherever it runs

    @staticmethod
    def build(spec: Spec, state: StateDir) -> Router:
        if spec.router.host is None:
            return BuiltinRouter.build(spec, state)
        return HostedRouter.build(spec, state)
