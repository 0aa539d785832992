"""Sliding window with attention sink (Algorithm 2; StreamingLLM / LM-Infinite).

Section 4.1: a 9-block local window plus 1 sink block = 10 blocks per row.
``window`` counts blocks *including* the query's own (diagonal) block:
``q_blk - kv_blk < window``.
"""
from ._common import check_int

DEFAULTS = dict(window=9, sink=1)


def validate(window=9, sink=1) -> dict:
    return dict(
        window=check_int("window", window, 1, "sliding_window"),
        sink=check_int("sink", sink, 0, "sliding_window"),
    )


def blocks(q_blk, kv_blk, *, window, sink):
    dist = q_blk - kv_blk
    return (dist < window) | (kv_blk < sink)
