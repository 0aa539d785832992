"""A general distance-set pattern: the family PowerAttention belongs to (beyond the paper).

Block ``j`` is read by query block ``i`` when ``i - j < window`` (the local
window, the diagonal included), or ``i - j`` is in ``distances``, or ``j < sink``;
causality is added by the caller. PowerAttention is ``distances = (8, 16, 32,
64)`` with ``window = 5, sink = 1`` at 128 blocks (its distances 1, 2, 4 lie in
the window); stride slash is the multiples of its stride. Any set found by
``lib.pattern_search`` runs through the kernels, FlexAttention and the
transformers integration as ``"distance_set"`` with these keywords.
"""
import numbers

from ._common import check_ints

DEFAULTS = dict(distances=(), window=1, sink=0)
MAX_DISTANCES = 256


def validate(distances=(), window=1, sink=0) -> dict:
    if isinstance(distances, (str, bytes)) or not hasattr(distances, "__iter__"):
        raise ValueError(f"distance_set: 'distances' must be a sequence of positive integers, got {distances!r}")
    values = []
    for d in distances:
        if isinstance(d, bool) or not isinstance(d, numbers.Integral) or int(d) < 1:
            raise ValueError(f"distance_set: every distance must be a positive integer (in blocks), got {d!r}")
        values.append(int(d))
    values = tuple(sorted(set(values)))
    if len(values) > MAX_DISTANCES:
        raise ValueError(f"distance_set: at most {MAX_DISTANCES} distances, got {len(values)}")
    return dict(distances=values, **check_ints("distance_set", window=(window, 1), sink=(sink, 0)))


def blocks(q_blk, kv_blk, *, distances, window, sink):
    dist = q_blk - kv_blk
    allowed = (dist < window) | (kv_blk < sink)
    for d in distances:
        allowed = allowed | (dist == d)
    return allowed
