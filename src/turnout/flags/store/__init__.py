"""The flag store: flags, segments, their audit trail, API tokens and one revision counter.

A synchronous API on the same database (and the same migrations) as ``turnout.store.db``.
Every change is one write transaction that validates the new definition, bumps the
flag's own version and the global revision, and appends an audit record, so a reader
either sees all of a change or none of it. The revision is what servers poll to notice
changes made by another process (the CLI beside a running ``turnout server``); reading
it is one primary-key lookup. A change that would leave the definition as it was is not
a change: nothing is written and the record comes back as it was.

Definitions are checked by ``turnout.flags.definition``; what needs the database
(segments and parent flags that must exist) is checked here, inside the transaction.
Database errors leave this package only as ``StoreError``.

One class, `FlagStore` (``db``), over three modules: its flag methods, and the segment
(``segments``) and token (``tokens``) mixins; ``queries`` holds the checks and writes
they share and ``records`` what they return and raise.
"""

from __future__ import annotations

from turnout.flags.definition import FlagError, validate_flag
from turnout.flags.store.db import FlagStore
from turnout.flags.store.records import (
    AuditRecord,
    FlagExists,
    FlagNotFound,
    FlagRecord,
    Token,
    TokenRecord,
    VersionConflict,
)

__all__ = ["AuditRecord", "FlagError", "FlagExists", "FlagNotFound", "FlagRecord", "FlagStore",
           "Token", "TokenRecord", "VersionConflict", "validate_flag"]
