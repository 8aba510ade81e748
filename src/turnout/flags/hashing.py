"""Unleash's bucketing: MurmurHash3 (x86, 32-bit) of ``"{group}:{identifier}"``.

Every Unleash SDK puts a user in bucket ``murmur3(f"{group}:{id}", seed) % n + 1``:
seed 0 with n = 100 for percentage rollouts, seed 86028157 with n = the total variant
weight for variants. Matching that exactly is what keeps a user in the same cohort
whichever SDK or server evaluates the flag.
"""

from __future__ import annotations

import random

import mmh3

ROLLOUT_SEED = 0
VARIANT_SEED = 86028157

_random = random.Random()


def normalized_hash(group: str, identifier: str, normalizer: int = 100,
                    seed: int = ROLLOUT_SEED) -> int:
    """The bucket in ``1..normalizer`` that ``identifier`` falls into within ``group``."""
    return int(mmh3.hash(f"{group}:{identifier}", seed, signed=False)) % normalizer + 1


def variant_bucket(group: str, identifier: str, total_weight: int) -> int:
    """The point in ``1..total_weight`` that picks a variant (Unleash's variant seed)."""
    return normalized_hash(group, identifier, total_weight, VARIANT_SEED)


def random_bucket() -> int:
    """A uniformly random bucket in ``1..100``, for random stickiness."""
    return int(_random.random() * 100) + 1


def random_identifier() -> str:
    """A random stand-in identifier, for variants whose stickiness field is missing."""
    return str(int(_random.random() * 100000))
