"""Stride slash attention (Algorithm 3; Child et al. 2019's fixed stride).

Local window + sink + "slash" blocks at every multiple of ``stride`` blocks
of distance: ``(q_blk - kv_blk) % stride == 0``.

Section 4.1 gives "6-block local window, 1 block of sink tokens, and 3 blocks
of slash tokens" but no stride. We read it as: the stride that leaves 3 slash
blocks outside the window in the longest row. At the paper's 32K context
(128 blocks of 256 tokens) that is ``stride = 32`` (slashes at distances
32, 64, 96), our default. ``lib.masks.section41_config("stride_slash", n)``
uses ``paper_stride(n)``: the 3-slash-block (10 blocks per row) budget at n
blocks. A model is designed for one geometry, so the experiments call it once,
at the design block count (128), and keep that stride at every length.
"""
import math

from ._common import check_int, check_ints

DEFAULTS = dict(window=6, stride=32, sink=1)


def paper_stride(num_blocks: int, slash_blocks: int = 3) -> int:
    """Stride giving ``slash_blocks`` slash blocks at distances < num_blocks."""
    num_blocks = check_int("num_blocks", num_blocks, 1, "stride_slash")
    slash_blocks = check_int("slash_blocks", slash_blocks, 1, "stride_slash")
    return max(1, math.ceil(num_blocks / (slash_blocks + 1)))


def validate(window=6, stride=32, sink=1) -> dict:
    return check_ints("stride_slash", window=(window, 1), stride=(stride, 1), sink=(sink, 0))


def blocks(q_blk, kv_blk, *, window, stride, sink):
    dist = q_blk - kv_blk
    return (dist < window) | (dist % stride == 0) | (kv_blk < sink)
