"""Small files written whole: a crash leaves the old file or the new one, never half.

Every such file turnout keeps (the router's table, flags and counters, its pid file, the
local platform's instance records, the reaper's record, the flag client's cache) goes
through `write_atomic`, and so does an adopted HAProxy's configuration, which keeps its
mode and owner. It imports only the standard library: the router's processes use it too.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

PRIVATE = 0o600


def write_atomic(path: Path, data: bytes, *, durable: bool = True,
                 like: os.stat_result | None = None) -> None:
    """Replace `path` with `data` in one rename, the file readable by its owner only (or,
    given `like`, with that file's mode and, where this process may, its owner and group:
    someone else's file that turnout keeps in step).

    The bytes go to a temporary file of a unique name beside `path` (so two writers never
    share one), which is then renamed over it. `durable` also survives a power loss (fsync
    of the file and of its folder); without it the file survives the process dying, which
    is all that counters need. A missing folder is made (0700). Raises OSError.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE)
    try:
        try:
            if like is not None:
                _same_as(fd, like)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _sync_folder(path.parent)


def _same_as(fd: int, like: os.stat_result) -> None:
    os.fchmod(fd, like.st_mode & 0o7777)
    with contextlib.suppress(PermissionError):  # not ours to give away: the mode stays
        os.fchown(fd, like.st_uid, like.st_gid)


def _sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
