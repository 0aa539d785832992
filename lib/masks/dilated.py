"""Dilated attention (Algorithm 4; Longformer's dilated window).

Every ``(dilation + 1)``-th block inside a ``window``-block span:
``dist % (dilation + 1) == 0 and dist < window``. Section 4.1: window 20,
dilation 1 block, i.e. distances 0, 2, ..., 18 = 10 blocks per row, no sink.

How we read Algorithm 4 as printed:
* ``blk_qk & 1 == 0``: Python's ``&`` binds tighter than ``==``, so as printed
  this already is ``(blk_qk & 1) == 0`` (even distance; it would not be in C/CUDA).
* ``mask_window`` is used but never defined. Any dense local window would
  break the paper's own statements (10-block budget; "all tokens at distances
  2k+1 are unreachable", "only access 50% of the tokens"), so we read it as
  empty: the diagonal block (distance 0) is already in the dilated set.
"""
from ._common import check_ints

DEFAULTS = dict(window=20, dilation=1, sink=0)


def validate(window=20, dilation=1, sink=0) -> dict:
    return check_ints("dilated", window=(window, 1), dilation=(dilation, 0), sink=(sink, 0))


def blocks(q_blk, kv_blk, *, window, dilation, sink):
    dist = q_blk - kv_blk
    return ((dist % (dilation + 1) == 0) & (dist < window)) | (kv_blk < sink)
