"""`python -m turnout.routers.proxy`: run the builtin router (supervisor plus worker)."""

from __future__ import annotations

from turnout.routers.proxy.supervisor import main

if __name__ == "__main__":
    raise SystemExit(main())
