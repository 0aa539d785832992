"""Sliding window with attention sink (Algorithm 2; StreamingLLM / LM-Infinite).

Section 4.1: a 9-block local window plus 1 sink block = 10 blocks per row.
``window`` counts blocks *including* the query's own (diagonal) block:
``q_blk - kv_blk < window``.
"""
from ._common import check_ints

DEFAULTS = dict(window=9, sink=1)


def validate(window=9, sink=1) -> dict:
    return check_ints("sliding_window", window=(window, 1), sink=(sink, 0))


def blocks(q_blk, kv_blk, *, window, sink):
    dist = q_blk - kv_blk
    return (dist < window) | (kv_blk < sink)
