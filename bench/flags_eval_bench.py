"""Nanoseconds per flag evaluation: turnout's in-process engine against the Unleash Python SDK.

Both evaluate the same flag kinds (default, user list, 50% sticky rollout, constraints,
variants, a flag depending on another) over the same rotating set of contexts. The SDK
(``UnleashClient``, which evaluates through its Yggdrasil engine) is bootstrapped from a
dict in a temporary cache folder and never initialised, so it makes no network call at
all; metrics and registration are off anyway and its URL is a closed 127.0.0.1 port.
Before timing, both must agree on every context's answer.

Usage: .venv/bin/python bench/flags_eval_bench.py [--calls 200000] [--repeat 5]
Prints a table and writes bench/results/flags_eval.json. Best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from UnleashClient import UnleashClient
from UnleashClient.cache import FileCache
from UnleashClient.utils import InstanceAllowType

from turnout.flags import FlagState, evaluate, variant

RESULTS = Path(__file__).parent / "results" / "flags_eval.json"
USERS = [f"user-{i}" for i in range(64)]

FLAGS: list[dict[str, Any]] = [
    {"name": "k-default", "enabled": True, "strategies": [{"name": "default"}]},
    {"name": "k-users", "enabled": True, "strategies": [
        {"name": "userWithId", "parameters": {"userIds": ",".join(USERS[::3])}}]},
    {"name": "k-rollout", "enabled": True, "strategies": [
        {"name": "flexibleRollout",
         "parameters": {"rollout": "50", "stickiness": "default", "groupId": "k-rollout"}}]},
    {"name": "k-constraints", "enabled": True, "strategies": [{"name": "default", "constraints": [
        {"contextName": "environment", "operator": "IN", "values": ["prod", "staging"]},
        {"contextName": "plan", "operator": "IN", "values": ["gold", "silver"]},
        {"contextName": "age", "operator": "NUM_GT", "value": "20"}]}]},
    {"name": "k-variants", "enabled": True, "strategies": [{"name": "default", "variants": [
        {"name": name, "weight": weight, "stickiness": "default", "weightType": "fix",
         "payload": {"type": "string", "value": name.upper()}}
        for name, weight in (("red", 300), ("green", 300), ("blue", 400))]}]},
    {"name": "k-dependent", "enabled": True, "strategies": [{"name": "default"}],
     "dependencies": [{"feature": "k-rollout"}]},
]
KINDS = [("default", "k-default", "enabled"), ("user list", "k-users", "enabled"),
         ("50% rollout", "k-rollout", "enabled"), ("constraints", "k-constraints", "enabled"),
         ("variants", "k-variants", "variant"), ("dependent flag", "k-dependent", "enabled")]


def contexts() -> list[dict[str, Any]]:
    out = []
    for i, user in enumerate(USERS):
        out.append({"userId": user, "sessionId": f"s{i}", "environment": ("prod", "dev")[i % 2],
                    "appName": "shop",
                    "properties": {"plan": ("gold", "free", "silver")[i % 3], "age": str(15 + i)}})
    return out


def unleash_sdk(doc: dict[str, Any], folder: str) -> UnleashClient:
    cache = FileCache("turnout-bench", directory=folder)
    cache.bootstrap_from_dict(doc)
    return UnleashClient(url="http://127.0.0.1:9/api", app_name="turnout-bench", environment="prod",
                         disable_metrics=True, disable_registration=True, cache=cache,
                         multiple_instance_mode=InstanceAllowType.SILENTLY_ALLOW)


def time_calls(call: Callable[[dict[str, Any]], object], ctxs: list[dict[str, Any]],
               calls: int, repeat: int) -> float:
    """Best-of-``repeat`` nanoseconds per call over ``calls`` calls cycling through ``ctxs``."""
    rounds = max(1, calls // len(ctxs))
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter_ns()
        for _ in range(rounds):
            for ctx in ctxs:
                call(ctx)
        best = min(best, (time.perf_counter_ns() - start) / (rounds * len(ctxs)))
    return best


def callers(state: FlagState, sdk: UnleashClient, flag: str, how: str
            ) -> tuple[Callable[[dict[str, Any]], object], Callable[[dict[str, Any]], object]]:
    if how == "variant":
        return (lambda ctx: variant(state, flag, ctx)), (lambda ctx: sdk.get_variant(flag, ctx))
    return (lambda ctx: evaluate(state, flag, ctx)), (lambda ctx: sdk.is_enabled(flag, ctx))


def check_agreement(state: FlagState, sdk: UnleashClient, ctxs: list[dict[str, Any]]) -> None:
    for _, flag, how in KINDS:
        for ctx in ctxs:
            if how == "variant":
                ours, theirs = variant(state, flag, ctx).name, sdk.get_variant(flag, ctx)["name"]
            else:
                ours, theirs = evaluate(state, flag, ctx).enabled, sdk.is_enabled(flag, ctx)
            if ours != theirs:
                raise SystemExit(f"disagreement on {flag} for {ctx}: turnout {ours!r}, SDK {theirs!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    logging.getLogger("UnleashClient").setLevel(logging.ERROR)
    doc = {"version": 2, "features": FLAGS, "segments": []}
    state = FlagState.from_json(doc)
    ctxs = contexts()
    with tempfile.TemporaryDirectory() as folder:
        sdk = unleash_sdk(doc, folder)
        try:
            check_agreement(state, sdk, ctxs)
            rows = []
            for kind, flag, how in KINDS:
                ours, theirs = callers(state, sdk, flag, how)
                ns_ours = time_calls(ours, ctxs, args.calls, args.repeat)
                ns_sdk = time_calls(theirs, ctxs, max(args.calls // 10, len(ctxs)), args.repeat)
                rows.append({"kind": kind, "flag": flag, "call": how, "turnout_ns": round(ns_ours, 1),
                             "unleash_sdk_ns": round(ns_sdk, 1), "speedup": round(ns_sdk / ns_ours, 1)})
        finally:
            sdk.destroy()
    print(f"{'kind':<16}{'call':<9}{'turnout ns':>12}{'SDK ns':>12}{'SDK/turnout':>13}")
    for row in rows:
        print(f"{row['kind']:<16}{row['call']:<9}{row['turnout_ns']:>12.0f}{row['unleash_sdk_ns']:>12.0f}"
              f"{row['speedup']:>12.1f}x")
    ok = all(r["turnout_ns"] < 3000 and r["speedup"] >= 10 for r in rows)
    print("goal (< 3 µs and >= 10x faster, every kind):", "met" if ok else "NOT met")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "python": platform.python_version(), "machine": platform.machine(),
        "calls": args.calls, "repeat": args.repeat, "contexts": len(ctxs), "goal_met": ok,
        "rows": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
