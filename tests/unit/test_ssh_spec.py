"""The ssh platform's spec (hosts, fleet size, release) and its systemd unit helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

from turnout import wiring
from turnout.errors import SpecError
from turnout.model import Instance
from turnout.platforms import systemd
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
