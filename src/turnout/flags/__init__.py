"""Feature flags: an Unleash-compatible evaluation engine.

Compile Unleash's client API document once with ``FlagState.from_json`` (or apply
delta events with ``FlagState.apply``), then ask ``evaluate`` whether a flag is on and
``variant`` which variant a context gets. Both are pure, never raise, and say why
(``Reason``) and what went wrong (``ErrorCode``), after OpenFeature. Buckets match
every Unleash SDK: MurmurHash3 with Unleash's seeds.
"""

from __future__ import annotations

from turnout.flags.evaluate import evaluate, is_enabled, variant
from turnout.flags.model import Context, ErrorCode, Payload, Reason, Result, VariantResult
from turnout.flags.state import FlagState

__all__ = [
    "Context",
    "ErrorCode",
    "FlagState",
    "Payload",
    "Reason",
    "Result",
    "VariantResult",
    "evaluate",
    "is_enabled",
    "variant",
]
