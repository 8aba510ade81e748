"""Fetches Unleash's client specification (pinned) and loads its cases.

The specification is the npm package ``@unleash/client-specification``; ``npm pack``
downloads its tarball into ``.cache/client-specification/<version>/`` at the top of the
repository (gitignored), its SHA-256 is checked against the pinned one, and it is
unpacked there once. If the download or the check fails, collection fails loudly:
a conformance suite that silently skips proves nothing.

Run it alone (``python tests/conformance/unleash_spec.py``) to fetch the cache ahead
of time and print the number of cases.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PACKAGE = "@unleash/client-specification"
VERSION = "6.1.0"
TARBALL_SHA256 = "88e154a8dd69b3c856b694332f0b4af75a4b985977b259600f94a0328b29e2fb"
EXPECTED_FILES = 22
EXPECTED_CASES = 279

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "client-specification" / VERSION


@dataclass(frozen=True)
class SpecCase:
    """One test of the specification: a state, a context, a flag and the answer."""

    file: str
    kind: str  # "enabled" or "variant"
    description: str
    state: dict[str, Any]
    context: dict[str, Any]
    toggle: str
    expected: Any

    @property
    def id(self) -> str:
        kind = " [variant]" if self.kind == "variant" else ""
        return f"{Path(self.file).stem} :: {self.description}{kind}"


def _download(into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is needed to fetch the Unleash client specification")
    done = subprocess.run(
        [npm, "pack", f"{PACKAGE}@{VERSION}", "--json", "--pack-destination", str(into)],
        capture_output=True, text=True, timeout=180, check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"npm pack {PACKAGE}@{VERSION} failed:\n{done.stderr[-2000:]}")
    tarball = into / str(json.loads(done.stdout)[0]["filename"])
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    if digest != TARBALL_SHA256:
        raise RuntimeError(f"{tarball.name} has SHA-256 {digest}, expected {TARBALL_SHA256}")
    return tarball


def specification_dir() -> Path:
    """The unpacked ``specifications`` folder, downloading it on first use. Runs that start
    together (pytest-xdist's workers each collect) take turns on a lock: one downloads, the
    others then find it there."""
    target = CACHE / "package" / "specifications"
    if (target / "index.json").is_file():
        return target
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    with (CACHE.parent / f".{VERSION}.lock").open("ab") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        if not (target / "index.json").is_file():
            _fetch(target)
    return target


def _fetch(target: Path) -> None:
    """Download and check the package, unpack it beside CACHE and move it in whole."""
    with tempfile.TemporaryDirectory(dir=CACHE.parent) as tmp:
        tarball = _download(Path(tmp) / "download")
        unpacked = Path(tmp) / "unpacked"
        with tarfile.open(tarball) as archive:
            archive.extractall(unpacked, filter="data")
        CACHE.mkdir(exist_ok=True)
        shutil.rmtree(CACHE / "package", ignore_errors=True)  # what a killed run left half done
        (unpacked / "package").rename(CACHE / "package")


def load_cases() -> list[SpecCase]:
    """Every case of every specification file, in the index's order."""
    folder = specification_dir()
    cases = []
    for file in json.loads((folder / "index.json").read_text(encoding="utf-8")):
        spec = json.loads((folder / file).read_text(encoding="utf-8"))
        for kind, key in (("enabled", "tests"), ("variant", "variantTests")):
            for test in spec.get(key, []):
                cases.append(SpecCase(file, kind, test["description"], spec["state"],
                                      test.get("context", {}), test["toggleName"],
                                      test["expectedResult"]))
    return cases


if __name__ == "__main__":
    print(f"{len(load_cases())} cases in {specification_dir()}")
