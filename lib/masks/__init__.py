"""The six attention patterns of the paper, as block predicates.

Public API (used by kernels, notebooks and outside checks):

    PATTERNS                              names of the paper's six patterns
    NAMES                                 PATTERNS + ("distance_set",), the general pattern of issue 13
    section41_config(name, num_blocks=128)
        the paper's Section 4.1 configuration (the one place it is written)
    layout(name, seq_len, block_size=256, **config) -> BlockLayout
        the single owner of block-sparse metadata (kv lists, full/partial blocks,
        transposed lists, decode rows, device tables, FlexAttention BlockMask)
    mask_mod(name, block_size=256, **config)
        FlexAttention-style ``mask_mod(b, h, q_idx, kv_idx) -> bool tensor``
    block_layout(name, num_blocks, **config)
        causal bool tensor [num_blocks, num_blocks] (query block x key block)
    compress_layout(layout)
        per-query-block key-block indices and counts of a bool layout
    token_mask(name, seq_len, block_size=256, **config)
        dense bool [seq_len, seq_len] (for small sizes: plots and tests)
    flex_block_mask(layout, seq_len, block_size, device)
        FlexAttention BlockMask of a bool layout (BlockLayout.to_flex_block_mask)

Config keywords are in blocks: ``window``, ``stride``, ``sink`` (and
``dilation`` for dilated, ``segments``/``dilations`` for LongNet). Defaults
are the Section 4.1 configurations; see each pattern's file for how we read
the paper's pseudo-code.
"""
from __future__ import annotations

from types import ModuleType
from typing import Callable, NamedTuple

import torch

from . import dilated, distance_set, full, longnet, power, sliding_window, stride_slash
from ._common import check_int
from .layout import BlockLayout, _named_dense, compress_rows, frozen_config, layout
from .stride_slash import paper_stride

_MODULES: dict[str, ModuleType] = {
    "full": full,
    "sliding_window": sliding_window,
    "stride_slash": stride_slash,
    "dilated": dilated,
    "longnet": longnet,
    "power": power,
}
PATTERNS: tuple[str, ...] = tuple(_MODULES)
_MODULES["distance_set"] = distance_set
#: Every pattern name the masks, kernels and transformers integration accept.
NAMES: tuple[str, ...] = tuple(_MODULES)

#: Human-readable names used in plots and tables.
LABELS = {
    "full": "Full attention",
    "sliding_window": "Sliding window",
    "stride_slash": "Stride slash",
    "dilated": "Dilated",
    "longnet": "LongNet",
    "power": "PowerAttention",
    "distance_set": "Distance set",
}

#: The paper's design geometry: 32K tokens in blocks of 256 = 128 blocks (Figure 1a, Section 4.1).
DESIGN_BLOCKS = 128


def section41_config(name: str, num_blocks: int = DESIGN_BLOCKS) -> dict:
    """The Section 4.1 configuration of ``name`` (complete, validated), in blocks.

    The paper gives every pattern's budget in blocks except stride slash's stride ("3 blocks of
    slash tokens"): we take the stride that leaves 3 slash blocks in the longest row at
    ``num_blocks`` blocks (``paper_stride``: 32 at the paper's 128 blocks). A model is designed
    for one geometry, so experiments call this once, at their design block count, and keep the
    config fixed at every length (training stages and evaluation alike); notebook 01 also calls
    it per length to show how the budget would scale.
    """
    if name not in PATTERNS:
        raise ValueError(f"section41_config: unknown pattern {name!r}; the paper's patterns are {list(PATTERNS)}")
    num_blocks = check_int("num_blocks", num_blocks, 1, name)
    extra = {"stride": paper_stride(num_blocks)} if name == "stride_slash" else {}
    return resolve(name, **extra)[1]


def resolve(name: str, **config) -> tuple[ModuleType, dict]:
    """Return the pattern's module and its validated, complete config."""
    if not isinstance(name, str) or name not in _MODULES:
        raise ValueError(f"unknown pattern {name!r}; expected one of {list(NAMES)}")
    module = _MODULES[name]
    unknown = set(config) - set(module.DEFAULTS)
    if unknown:
        accepted = sorted(module.DEFAULTS) or "none"
        raise ValueError(
            f"{name}: unknown config keyword(s) {sorted(unknown)}; accepted: {accepted}"
        )
    return module, module.validate(**config)


def block_predicate(name: str, **config) -> Callable:
    """``f(q_blk, kv_blk) -> bool`` (no causality) for the pattern and config."""
    module, cfg = resolve(name, **config)
    return lambda q_blk, kv_blk: module.blocks(q_blk, kv_blk, **cfg)


def mask_mod(name: str, block_size: int = 256, **config) -> Callable:
    """FlexAttention-compatible ``mask_mod(b, h, q_idx, kv_idx)``.

    Works on broadcast integer index tensors and inside
    ``torch.nn.attention.flex_attention.create_block_mask``.
    """
    block_size = check_int("block_size", block_size, 1, name)
    module, cfg = resolve(name, **config)

    def _mask_mod(b, h, q_idx, kv_idx):
        causal = q_idx >= kv_idx
        return causal & module.blocks(q_idx // block_size, kv_idx // block_size, **cfg)

    _mask_mod.__name__ = f"{name}_mask"
    _mask_mod.pattern = name
    _mask_mod.block_size = block_size
    _mask_mod.config = cfg
    return _mask_mod


def block_layout(name: str, num_blocks: int, **config) -> torch.Tensor:
    """Causal block layout: bool ``[num_blocks, num_blocks]``, rows = query blocks (a fresh copy)."""
    num_blocks = check_int("num_blocks", num_blocks, 1, name)
    cfg = resolve(name, **config)[1]
    return _named_dense(name, num_blocks, frozen_config(cfg)).clone()


def token_mask(name: str, seq_len: int, block_size: int = 256, **config) -> torch.Tensor:
    """Dense token mask ``[seq_len, seq_len]``; memory grows as seq_len**2."""
    seq_len = check_int("seq_len", seq_len, 1, name)
    idx = torch.arange(seq_len)
    return mask_mod(name, block_size, **config)(None, None, idx[:, None], idx[None, :])


class CompressedLayout(NamedTuple):
    """Per-query-block key-block lists of a bool layout.

    kv_indices: int32 ``[num_q_blocks, max_count]``, ascending key-block indices,
        padded on the right with the row's last valid index (safe to load).
    kv_counts:  int32 ``[num_q_blocks]``, number of valid entries per row.
    """

    kv_indices: torch.Tensor
    kv_counts: torch.Tensor


def compress_layout(layout: torch.Tensor) -> CompressedLayout:
    """Turn a bool ``[..., nq, nk]`` block layout into (kv_indices, kv_counts)."""
    return CompressedLayout(*compress_rows(layout))


def flex_block_mask(layout: torch.Tensor, seq_len: int, block_size: int, device, flex_block: int = 128,
                    mask_mod=None):
    """FlexAttention BlockMask of a bool layout: ``BlockLayout.to_flex_block_mask`` (see there)."""
    return BlockLayout.from_bool(layout, seq_len, block_size).to_flex_block_mask(device, flex_block, mask_mod)


def blocks_per_row(name: str, num_blocks: int, **config) -> torch.Tensor:
    """Number of key blocks each query block attends to (its budget)."""
    return block_layout(name, num_blocks, **config).sum(-1)


__all__ = [
    "PATTERNS",
    "NAMES",
    "LABELS",
    "DESIGN_BLOCKS",
    "BlockLayout",
    "CompressedLayout",
    "block_layout",
    "block_predicate",
    "blocks_per_row",
    "compress_layout",
    "flex_block_mask",
    "layout",
    "section41_config",
    "mask_mod",
    "paper_stride",
    "resolve",
    "token_mask",
]
