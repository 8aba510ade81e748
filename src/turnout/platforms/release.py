"""A release folder on every host: uploaded and checksummed, or checked to be there.

`Bundle.of(folder, remote)` reads a local folder once: a gzipped tar of it and a manifest
in `sha256sum` format (one line per file, with the file's path on the host), which the tar
carries as `.turnout-release.sha256`. On a host, `ensure` skips the upload when the folder
already holds that very manifest and every file still matches it; otherwise it unpacks the
tar into `<folder>.partial`, swaps that in for the folder, and checks every file with
`sha256sum -c`: a mismatch is an error before any instance starts there. Three commands
per host at most, each an argv through a `HostLink`; a failure names the host.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from turnout.errors import PlatformError
from turnout.platforms.ssh_link import HostLink

MANIFEST = ".turnout-release.sha256"
UPLOAD_TIMEOUT = 300.0


@dataclass(frozen=True, slots=True)
class Bundle:
    """A local folder ready to go to one remote folder."""

    remote: str
    manifest: str  # sha256sum lines naming files under `remote`
    tar: bytes  # gzipped, manifest included

    @classmethod
    def of(cls, folder: Path, remote: str) -> Bundle:
        """Read `folder` (regular files and folders; a link or odd name is refused)."""
        if not folder.is_dir():
            raise PlatformError(f"release.upload: {folder} is not a folder")
        files = sorted(p for p in folder.rglob("*") if not p.is_dir())
        for path in files:
            if path.is_symlink() or not path.is_file():
                raise PlatformError(f"release.upload: {path.relative_to(folder)} is not a regular file")
        return cls.of_files(((path.relative_to(folder).as_posix(), path) for path in files), remote)

    @classmethod
    def of_files(cls, files: Iterable[tuple[str, Path]], remote: str) -> Bundle:
        """Regular files, each `(path in the folder, local file)`, for the folder `remote`."""
        lines = []
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as tar:
            for relative, path in files:
                if any(c in relative for c in "\n\r\\"):
                    raise PlatformError(
                        f"release.upload: {relative!r}: a file name with a newline or backslash")
                data = path.read_bytes()
                lines.append(f"{hashlib.sha256(data).hexdigest()}  {PurePosixPath(remote) / relative}\n")
                info = tar.gettarinfo(str(path), arcname=relative)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
            manifest = "".join(lines)
            info = tarfile.TarInfo(MANIFEST)
            info.size = len(manifest.encode())
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(manifest.encode()))
        return cls(remote=remote, manifest=manifest, tar=buffer.getvalue())


# Constant scripts; every path reaches them as a positional argument ("$1", "$2"), quoted
# by the link like any argv, so no spec value is ever part of a script.
_UNPACK = ('rm -rf -- "$1" && mkdir -p -- "$1" && tar -xzf - -C "$1" --no-same-owner '
           '&& rm -rf -- "$2" && mv -T -- "$1" "$2"')
_MATCHES = 'cmp -s -- "$1" - && sha256sum --quiet --strict -c -- "$1"'


async def ensure(link: HostLink, bundle: Bundle) -> bool:
    """The bundle's folder on the host; True when it was uploaded, False when already there."""
    if await _matches(link, bundle.remote, bundle.manifest):
        return False
    partial = f"{bundle.remote}.partial"
    await link.check(["sh", "-c", _UNPACK, "unpack", partial, bundle.remote], stdin=bundle.tar,
                     limit=UPLOAD_TIMEOUT, what=f"unpack the release into {bundle.remote}")
    if not await _matches(link, bundle.remote, bundle.manifest):
        raise PlatformError(f"host {link.name}: the release in {bundle.remote} does not match its checksums")
    return True


async def require(link: HostLink, folder: str) -> None:
    """A release folder that must already be on the host."""
    out = await link.run(["test", "-d", folder])
    if not out.ok:
        raise PlatformError(f"host {link.name}: the release folder {folder} does not exist")


async def _matches(link: HostLink, remote: str, manifest: str) -> bool:
    """The host's folder holds this manifest, and every file it lists matches it."""
    path = f"{remote}/{MANIFEST}"
    if not manifest:  # an empty folder: the manifest alone says it is there
        return (await link.run(["sh", "-c", 'cmp -s -- "$1" -', "match", path], stdin=b"")).ok
    out = await link.run(["sh", "-c", _MATCHES, "match", path], stdin=manifest.encode(),
                         limit=UPLOAD_TIMEOUT)
    return out.ok
