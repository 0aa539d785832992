"""FlexAttention helpers (the BlockMask itself is ``BlockLayout.to_flex_block_mask``).

Which mask_mod a BlockMask carries: eager FlexAttention (CPU, no torch.compile)
ignores the tile structure and applies the mask_mod to every pair, so the
layout's own ``mask_mod`` (causal and a lookup in the layout) is the default and
is exact everywhere. Inside partial tiles only causality matters (a pattern's
choice is uniform inside a block, and every pattern keeps the diagonal block),
so for compiled Flex ``causal_mask_mod`` is exact too, and the cheapest: the
kernel benchmark uses it, to give Flex its most favourable BlockMask.
"""
from __future__ import annotations

FLEX_BLOCK = 128


def causal_mask_mod(b, h, q_idx, kv_idx):
    """Exact for our layouts only where unselected tiles are skipped (compiled Flex); see the module doc."""
    return q_idx >= kv_idx
