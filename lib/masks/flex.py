"""A FlexAttention ``BlockMask`` for a block layout, built without a seq x seq mask.

FlexAttention's ``create_block_mask`` evaluates the mask_mod on every token pair
unless compiled, which at 128K does not fit in memory. Our masks are block
structured, so the BlockMask can be written down directly: the layout is refined
to Flex's tile size; tiles strictly below the diagonal are *full* (compiled Flex
skips the mask_mod there), and the diagonal tiles, plus a last key tile that
sticks out of the sequence, are *partial*: only there does a compiled Flex kernel
call the mask_mod.

Which mask_mod: eager FlexAttention (CPU, no torch.compile) ignores the tile
structure and applies the mask_mod to every pair, so the default is exact
everywhere (causal and a lookup in the layout). Inside partial tiles only
causality matters (a pattern's choice is uniform inside a block, and every
pattern keeps the diagonal block), so for compiled Flex ``causal_mask_mod`` is
exact too, and the cheapest: the kernel benchmark uses it, to give Flex its
most favourable BlockMask.
"""
from __future__ import annotations

import torch

from ._common import check_int

FLEX_BLOCK = 128


def causal_mask_mod(b, h, q_idx, kv_idx):
    """Exact for our layouts only where unselected tiles are skipped (compiled Flex); see the module doc."""
    return q_idx >= kv_idx


def _compress(tiles: torch.Tensor, device):
    counts = tiles.sum(-1, dtype=torch.int32)
    idx = torch.sort((~tiles).to(torch.int8), dim=-1, stable=True).indices.to(torch.int32)
    return counts[None, None].to(device), idx[None, None].contiguous().to(device)


def flex_block_mask(layout: torch.Tensor, seq_len: int, block_size: int, device, flex_block: int = FLEX_BLOCK,
                    mask_mod=None):
    """BlockMask of ``layout`` (bool ``[nb, nb]``, ``nb = ceil(seq_len / block_size)``) for FlexAttention.

    Flex tiles are ``min(block_size, flex_block)`` tokens; one of the two sizes must divide the other.
    ``mask_mod`` is what partial tiles evaluate (default: causal and the layout, exact on every path).
    """
    from torch.nn.attention.flex_attention import BlockMask

    seq_len = check_int("seq_len", seq_len, 1, "flex_block_mask")
    block_size = check_int("block_size", block_size, 1, "flex_block_mask")
    flex_block = check_int("flex_block", flex_block, 1, "flex_block_mask")
    if block_size % flex_block and flex_block % block_size:
        raise ValueError(f"flex_block_mask: block_size {block_size} and flex_block {flex_block} must divide one another")
    nb = -(-seq_len // block_size)
    if not isinstance(layout, torch.Tensor) or layout.dtype != torch.bool or tuple(layout.shape) != (nb, nb):
        raise ValueError(f"flex_block_mask: layout must be a bool tensor of shape ({nb}, {nb}) for seq_len {seq_len} "
                         f"and block_size {block_size}")
    fb = min(block_size, flex_block)
    nt = -(-seq_len // fb)
    ours = torch.arange(nt) * fb // block_size  # our block of each Flex tile (tiles never straddle blocks)
    chosen = layout.cpu()[ours[:, None], ours[None, :]]
    qt, kt = torch.arange(nt)[:, None], torch.arange(nt)[None, :]
    full = chosen & (qt > kt)  # strictly below the diagonal: every token pair is causal
    partial = chosen & (qt == kt)
    if seq_len % fb:  # the last key tile is only partly inside the sequence
        partial[:, -1] |= full[:, -1]
        full[:, -1] = False
    if mask_mod is None:
        on_device = layout.to(device)

        def mask_mod(b, h, q_idx, kv_idx):
            return (q_idx >= kv_idx) & on_device[q_idx // block_size, kv_idx // block_size]

    kv_num, kv_idx = _compress(partial, device)
    full_num, full_idx = _compress(full, device)
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=fb, mask_mod=mask_mod,
                                    seq_lengths=(seq_len, seq_len))
