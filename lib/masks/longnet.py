"""LongNet (Algorithm 5; Ding et al. 2023): overlaid dilated segments.

For each (segment ``w``, dilation ``r``): query block and key block lie in the
same aligned ``w``-block segment, and both are multiples of ``r``. Section
4.1: ``w = 8, 16, 32, 64, 128`` blocks with ``r = 1, 2, 4, 8, 16``; no sink.

How we read Algorithm 5 as printed:
* ``temp2_qk = q_idx_b * kv_idx_b`` is a misprint for XOR: for a power-of-two
  ``w``, ``(q ^ kv) < w`` says "same aligned segment of w blocks" (they agree
  on every bit above log2 w). A product has no such meaning.
* ``temp1_qk & 1 == 0`` (``& 3``, ``& 7``, ``& 15``): Python's ``&`` binds
  tighter than ``==``, so as printed this already is ``(temp1_qk & (r - 1)) == 0``
  (it would not be in C/CUDA): ``q | kv`` has its low log2(r) bits clear iff
  both indices are multiples of r.
Segments longer than 128 blocks do not exist in this configuration, so past
32K context (at 256-token blocks) LongNet cannot see across 128-block
segments: a property of the paper's configuration, kept as is.
"""
from ._common import check_int, is_power_of_two

DEFAULTS = dict(segments=(8, 16, 32, 64, 128), dilations=(1, 2, 4, 8, 16), sink=0)


def validate(segments=(8, 16, 32, 64, 128), dilations=(1, 2, 4, 8, 16), sink=0) -> dict:
    try:
        segments = tuple(segments)
        dilations = tuple(dilations)
    except TypeError:
        raise ValueError("longnet: 'segments' and 'dilations' must be sequences of integers") from None
    if len(segments) == 0 or len(segments) != len(dilations):
        raise ValueError(
            f"longnet: 'segments' and 'dilations' must be non-empty and of equal length, "
            f"got {len(segments)} and {len(dilations)}"
        )
    segs, dils = [], []
    for w, r in zip(segments, dilations):
        w = check_int("segments[i]", w, 1, "longnet")
        r = check_int("dilations[i]", r, 1, "longnet")
        if not is_power_of_two(w) or not is_power_of_two(r) or r > w:
            raise ValueError(
                f"longnet: each segment and dilation must be a power of two with dilation <= segment, "
                f"got segment={w}, dilation={r}"
            )
        segs.append(w)
        dils.append(r)
    return dict(segments=tuple(segs), dilations=tuple(dils), sink=check_int("sink", sink, 0, "longnet"))


def blocks(q_blk, kv_blk, *, segments, dilations, sink):
    same_bits = q_blk ^ kv_blk
    both_bits = q_blk | kv_blk
    allowed = kv_blk < sink
    for w, r in zip(segments, dilations):
        allowed = allowed | ((same_bits < w) & ((both_bits & (r - 1)) == 0))
    return allowed
