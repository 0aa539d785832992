"""Full (dense causal) attention: every earlier block is in the budget."""

DEFAULTS: dict = {}


def validate() -> dict:
    return {}


def blocks(q_blk, kv_blk):
    # Causality is applied by the caller; everything else is allowed.
    return (q_blk >= 0) | (kv_blk >= 0)
