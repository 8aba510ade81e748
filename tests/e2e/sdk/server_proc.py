"""Starts a real `turnout server` process on a free port of 127.0.0.1 for tests and benchmarks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

_LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")


@dataclass
class ServerProcess:
    proc: subprocess.Popen[str]
    url: str

    @classmethod
    def start(cls, database_url: str, *, prefix: Sequence[str] = (), timeout: float = 15.0,
              listen: str = "127.0.0.1:0", cwd: str | os.PathLike[str] | None = None) -> ServerProcess:
        env = {**os.environ, "TURNOUT_DATABASE_URL": database_url}
        proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "turnout", "server", "--listen", listen],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd,
        )
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            found = _LISTENING.search(line)
            if found:
                return cls(proc, found.group(1))
        proc.kill()
        proc.wait()
        raise RuntimeError("turnout server did not start:\n" + "".join(seen))

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait for a clean exit, and return the exit code."""
        self.proc.terminate()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()
        return code
