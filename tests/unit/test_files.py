"""The one atomic write and the one spawn, on real files and real processes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from turnout import procs
from turnout.files import write_atomic


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("durable", [True, False])
def test_replaces_the_file_owner_only_and_leaves_nothing_beside_it(tmp_path: Path, durable: bool) -> None:
    path = tmp_path / "table.json"
    path.write_bytes(b"old")
    path.chmod(0o644)
    write_atomic(path, b"new" * 10_000, durable=durable)
    assert path.read_bytes() == b"new" * 10_000
    assert mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.json"]


def test_a_missing_folder_is_made_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "instances" / "a.json"
    write_atomic(path, b"{}")
    assert path.read_bytes() == b"{}" and mode(path.parent) == 0o700


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "flags.json"
    path.write_bytes(b"kept")
    with pytest.raises(TypeError):
        write_atomic(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == b"kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flags.json"]


def test_readers_never_see_half_a_file_while_two_processes_write(tmp_path: Path) -> None:
    path = tmp_path / "counters.json"
    write_atomic(path, b"a" * 200_000)
    writer = textwrap.dedent("""
        import sys
        from pathlib import Path
        from turnout.files import write_atomic
        path, letter = Path(sys.argv[1]), sys.argv[2].encode()
        for _ in range(150):
            write_atomic(path, letter * 200_000, durable=False)
    """)
    writers = [subprocess.Popen([sys.executable, "-c", writer, str(path), letter]) for letter in "bc"]
    seen = set()
    deadline = time.monotonic() + 30
    try:
        while any(w.poll() is None for w in writers) and time.monotonic() < deadline:
            data = path.read_bytes()
            assert len(data) == 200_000 and len(set(data)) == 1, "a torn or mixed file"
            seen.add(data[:1])
    finally:
        for w in writers:
            if w.poll() is None:
                w.kill()
            w.wait(timeout=10)
    # two writers never share a temporary file (one would lose its rename and fail)
    assert [w.returncode for w in writers] == [0, 0]
    assert seen and seen <= {b"a", b"b", b"c"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counters.json"]


def test_spawn_starts_its_own_session_and_logs_owner_only(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "child.log"
    pid = procs.spawn([sys.executable, "-c", "import os; print(os.getsid(0) == os.getpid())"],
                      cwd=tmp_path, env={"PATH": os.environ.get("PATH", "")}, log=log)
    deadline = time.monotonic() + 10
    while procs.is_running(pid, None) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not procs.is_running(pid, None)
    assert log.read_text().strip() == "True", "the child leads its own session"
    assert mode(log) == 0o600 and mode(log.parent) == 0o700
