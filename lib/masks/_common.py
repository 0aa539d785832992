"""Validation shared by the pattern files.

Every pattern is a *block predicate*: a function of the query-block index and
key-block index (integer tensors that broadcast) that says whether the key
block is in the query block's budget. Token-level causality (q_idx >= kv_idx)
is added on top by ``lib.masks.mask_mod`` / ``lib.masks.block_layout``, so the
token mask and the block layout agree by construction.
"""
from __future__ import annotations

import numbers


def check_int(name: str, value, minimum: int, pattern: str) -> int:
    """Return ``value`` as int, or raise ValueError naming the parameter and range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(
            f"{pattern}: '{name}' must be an integer >= {minimum}, got {value!r} "
            f"({type(value).__name__})"
        )
    value = int(value)
    if value < minimum:
        raise ValueError(f"{pattern}: '{name}' must be an integer >= {minimum}, got {value}")
    return value


def check_ints(pattern: str, **specs) -> dict:
    """``{name: (value, minimum)}`` -> ``{name: int}``, each checked by ``check_int`` (a pattern's ``validate``)."""
    return {name: check_int(name, value, minimum, pattern) for name, (value, minimum) in specs.items()}


def is_power_of_two(x: int) -> bool:
    return x >= 1 and (x & (x - 1)) == 0
