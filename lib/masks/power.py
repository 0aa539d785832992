"""PowerAttention (Algorithm 1): key blocks at power-of-two block distances.

``dist & (dist - 1) == 0`` holds for dist = 0, 1, 2, 4, 8, ... . With the
Section 4.1 configuration (5-block window, 1 sink block) a row of 128 blocks
attends 5 window blocks (distances 0-4), the sink, and distances 8, 16, 32,
64: 10 blocks, each extra doubling of the context adding one block.
"""
from ._common import check_ints

DEFAULTS = dict(window=5, sink=1)


def validate(window=5, sink=1) -> dict:
    return check_ints("power", window=(window, 1), sink=(sink, 0))


def blocks(q_blk, kv_blk, *, window, sink):
    dist = q_blk - kv_blk
    return (dist < window) | ((dist & (dist - 1)) == 0) | (kv_blk < sink)
