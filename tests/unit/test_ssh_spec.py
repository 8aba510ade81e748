"""The ssh platform's spec (hosts, fleet size, release), its systemd unit helpers and how
both supervisors read an instance back from the host."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import cast

import pytest

from turnout import wiring
from turnout.errors import RouterError, SpecError
from turnout.model import Instance
from turnout.platforms import systemd
from turnout.platforms.detached import Detached
from turnout.platforms.ssh_link import HostLink, Output
from turnout.platforms.supervisor import instance_meta
from turnout.routers.hosted import HostedRouter, code_files, python_here
from turnout.spec.hosts import SshPlatformSpec, host_address

BASE = "service: shop\nrun:\n  command: [app, '{port}']\n"
SSH = "platform:\n  kind: ssh\n  hosts: [web1, web2, '10.9.9.9:2222']\n  instances_per_host: 2\n"


def spec_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "turnout.yaml"
    path.write_text(text)
    return path


def refusal(path: Path) -> list[str]:
    with pytest.raises(SpecError) as caught:
        wiring.load_spec(path)
    return str(caught.value).splitlines()


def test_the_fleet_is_hosts_times_instances_per_host(tmp_path: Path) -> None:
    spec = wiring.load_spec(spec_file(tmp_path, BASE + SSH))
    assert isinstance(spec.platform, SshPlatformSpec)
    assert spec.instances == 6 == spec.platform.fleet_size
    assert host_address("10.9.9.9:2222") == ("10.9.9.9", 2222)
    assert host_address("web1") == ("web1", 22)
    assert host_address("fd00::7") == ("fd00::7", 22)
    assert host_address("[fd00::7]:2200") == ("fd00::7", 2200)


def test_a_different_instance_count_is_refused_at_its_line(tmp_path: Path) -> None:
    lines = refusal(spec_file(tmp_path, BASE + "instances: 4\n" + SSH))
    assert any("turnout.yaml:4: instances: the ssh platform runs hosts x instances_per_host = 6"
               in line for line in lines), lines


@pytest.mark.parametrize(("platform", "field"), [
    ("  hosts: []\n", "platform.hosts"),
    ("  hosts: [web1, web1]\n", "platform.hosts"),
    ("  hosts: ['web1:99999']\n", "platform.hosts"),
    ("  hosts: [web1]\n  user: 'bad user'\n", "platform.user"),
    ("  hosts: [web1]\n  release: {upload: ./b}\n", "platform.release"),
    ("  hosts: [web1]\n  release: {path: relative/dir}\n", "platform.release.path"),
    ("  hosts: [web1]\n  release: {path: /a, upload: ./b, to: /c}\n", "platform.release"),
    ("  hosts: [web1]\n  max_unavailable_hosts: 1\n", "platform"),
    ("  hosts: [web1]\n  colour: blue\n", "platform.colour"),
])
def test_bad_ssh_platforms_are_refused_naming_the_field(
    tmp_path: Path, platform: str, field: str
) -> None:
    lines = refusal(spec_file(tmp_path, BASE + "platform:\n  kind: ssh\n" + platform))
    assert any(f": {field}:" in line for line in lines), lines


def test_a_relative_cwd_needs_a_release_folder(tmp_path: Path) -> None:
    text = BASE.replace("run:\n", "run:\n  cwd: app\n") + SSH
    assert any("run.cwd: with the ssh platform" in line for line in refusal(spec_file(tmp_path, text)))
    release = SSH + "  release: {path: '/srv/shop/{version}'}\n"
    spec = wiring.load_spec(spec_file(tmp_path, BASE.replace("run:\n", "run:\n  cwd: app\n") + release))
    assert isinstance(spec.platform, SshPlatformSpec) and spec.platform.release is not None
    assert spec.platform.release.remote_folder("v2") == "/srv/shop/v2"


def instance(version: str = "v2", slot: int = 3) -> Instance:
    return Instance(service="shop", revision=f"{version}-abcdef12", version=version, slot=slot,
                    host="10.0.0.1", port=41000)


def test_a_router_host_is_one_of_the_platform_hosts(tmp_path: Path) -> None:
    spec = wiring.load_spec(spec_file(
        tmp_path, BASE + "listen: 0.0.0.0:80\nrouter: {kind: builtin, host: '10.9.9.9:2222'}\n" + SSH))
    assert spec.router.host == "10.9.9.9:2222"
    assert spec.reachable(spec.listen) == "10.9.9.9:80"  # the host's address, not its SSH port
    assert spec.reachable(spec.preview_listen()) == "10.9.9.9:81"
    assert spec.reachable("127.0.0.1:80") == "127.0.0.1:80"  # a chosen address stays
    lines = refusal(spec_file(tmp_path, BASE + "router: {kind: builtin, host: web9}\n" + SSH))
    assert any("turnout.yaml:4: router.host: 'web9' is not one of platform.hosts (web1, web2, "
               "10.9.9.9:2222)" in line for line in lines), lines
    lines = refusal(spec_file(tmp_path, BASE + "router: {kind: builtin, host: web1}\n"))
    assert any("router.host: needs `platform: {kind: ssh}`" in line for line in lines), lines


def test_the_router_code_for_a_host_is_turnout_and_what_the_proxy_imports() -> None:
    files = dict(code_files())
    names = {name.partition("/")[0] for name in files}
    assert {"turnout", "pydantic", "pydantic_core", "uvloop", "httptools", "re2",
            "typing_extensions.py"} <= names
    assert "turnout/routers/proxy/control.py" in files
    assert any(name.startswith("mmh3") and name.endswith(".so") for name in files)
    assert not [n for n in files if "__pycache__" in n or ".dist-info/" in n or n.startswith("..")]
    assert not names & {"httpx", "sqlalchemy", "asyncssh", "yaml"}  # the control plane's alone
    assert all(path.is_file() for path in files.values())


def test_unit_names_are_valid_and_the_description_gives_the_instance_back() -> None:
    odd = instance(version="v2+build/7 ü")
    name = systemd.unit_name(odd)
    assert name.startswith("turnout-shop-v2_2bbuild_2f7_20_c3_bc-abcdef12-3") and name.endswith(".service")
    assert all(c.isalnum() or c in "._-" for c in name)
    state = systemd.UnitState(name=name, description=systemd.describe(odd), active="active",
                              sub="running", pid=77, started=12.0)
    again = state.instance("10.0.0.1")
    assert again is not None and (again.id, again.port, again.pid) == (odd.id, 41000, 77)
    assert systemd.UnitState(name=name, description="someone else's", active="active", sub="running",
                             pid=1, started=1.0).instance("h") is None


def test_a_unit_description_keeps_its_exact_text() -> None:
    """Running units are found again by this text: a change would lose the fleet on every host."""
    odd = instance(version='v2 ü "q"')
    assert systemd.describe(odd) == ('turnout {"port":41000,"revision":"v2 \\u00fc \\"q\\"-abcdef12",'
                                     '"service":"shop","slot":3,"version":"v2 \\u00fc \\"q\\""}')
    for broken in ('turnout {"service":"shop"}', 'turnout {"service":"shop","revision":"r","version":"v",'
                   '"slot":"x","port":1}', "turnout [1]", "turnout {"):
        state = systemd.UnitState(name="turnout-x.service", description=broken, active="active",
                                  sub="running", pid=5, started=1.0)
        assert state.instance("h") is None, broken


class _Records:
    """A host link whose detached helper answers `list` with the given records."""

    name = "web1"
    host = "10.0.0.1"

    def __init__(self, records: list[object]) -> None:
        self.records = records

    async def run(self, argv: list[str], **_: object) -> Output:
        assert argv[:2] == ["python3", "-c"] and argv[3] == "list"
        return Output(status=0, stdout=json.dumps(self.records), stderr="")


async def test_detached_records_give_their_instances_back_and_damaged_ones_are_skipped() -> None:
    mine = instance(version="v2 ü")
    good = {"pid": 41, "ticks": 900, "instance": instance_meta(mine)}
    records: list[object] = [good, {**good, "pid": "x"}, {"pid": 42, "ticks": 1}, "junk",
                             {**good, "instance": {**instance_meta(mine), "port": None}},
                             {**good, "instance": {**instance_meta(mine), "service": "other"}}]
    found = await Detached().listed(cast(HostLink, _Records(records)), "shop")
    assert found == [replace(mine, pid=41, started=900.0)]


def test_systemd_run_escapes_what_systemd_would_expand() -> None:
    settings = systemd.UnitSettings(name="turnout-x.service", description="turnout {}", cwd="/srv/a",
                                    env={"GREETING": "$HOME %n"}, grace=2.5, user_manager=True)
    argv = systemd.run_argv(settings, ["app", "$(rm -rf /)", "100%", "${PATH}"])
    assert argv[:2] == ["systemd-run", "--user"]
    assert "--property=TimeoutStopSec=2500ms" in argv
    assert "--setenv=GREETING=$HOME %n" in argv
    assert argv[argv.index("--") + 1:] == ["app", "$$(rm -rf /)", "100%", "$${PATH}"]


def test_systemctl_show_output_is_read_per_unit() -> None:
    text = ("Id=turnout-a.service\nDescription=turnout {}\nActiveState=active\nSubState=running\n"
            "MainPID=12\nExecMainStartTimestampMonotonic=99\n\n"
            "Id=turnout-b.service\nDescription=x\nActiveState=inactive\nSubState=dead\nMainPID=0\n")
    a, b = systemd.parse_show(text)
    assert (a.name, a.running, a.pid, a.started) == ("turnout-a.service", True, 12, 99.0)
    assert (b.running, b.present) == (False, False)
    listed = "turnout-a.service loaded active running x\n● turnout-b.service loaded failed failed y\n"
    assert systemd.parse_list(listed) == ["turnout-a.service", "turnout-b.service"]


class _OtherPython:
    """A host link whose host runs another Python (a stand-in: only `run` is used)."""

    name = "web1"

    async def connection(self) -> object:
        return object()

    async def run(self, argv: list[str], **_: object) -> Output:
        return Output(status=0, stdout="/home/deploy\ncpython-312 aarch64\n", stderr="")


async def test_a_router_host_with_another_python_is_refused_saying_both(tmp_path: Path) -> None:
    router = HostedRouter(cast(HostLink, _OtherPython()), service="shop", listen="0.0.0.0:80",
                          preview_listen=None, state_dir=tmp_path)
    with pytest.raises(RouterError) as caught:
        await router.ensure_running()
    said = str(caught.value)
    assert "host web1 runs cpython-312 aarch64" in said and python_here() in said, said
