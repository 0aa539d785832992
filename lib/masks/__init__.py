"""The six attention patterns of the paper, as block predicates.

Public API (used by kernels, notebooks and outside checks):

    PATTERNS                              names of the six patterns
    mask_mod(name, block_size=256, **config)
        FlexAttention-style ``mask_mod(b, h, q_idx, kv_idx) -> bool tensor``
    block_layout(name, num_blocks, **config)
        causal bool tensor [num_blocks, num_blocks] (query block x key block)
    compress_layout(layout)
        per-query-block key-block indices and counts, the form kernels read
    token_mask(name, seq_len, block_size=256, **config)
        dense bool [seq_len, seq_len] (for small sizes: plots and tests)
    flex_block_mask(layout, seq_len, block_size, device)
        FlexAttention BlockMask of a layout, without a dense mask

Config keywords are in blocks: ``window``, ``stride``, ``sink`` (and
``dilation`` for dilated, ``segments``/``dilations`` for LongNet). Defaults
are the Section 4.1 configurations; see each pattern's file for how we read
the paper's pseudo-code.
"""
from __future__ import annotations

from types import ModuleType
from typing import Callable, NamedTuple

import torch

from . import dilated, full, longnet, power, sliding_window, stride_slash
from ._common import check_int
from .flex import flex_block_mask
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

#: Human-readable names used in plots and tables.
LABELS = {
    "full": "Full attention",
    "sliding_window": "Sliding window",
    "stride_slash": "Stride slash",
    "dilated": "Dilated",
    "longnet": "LongNet",
    "power": "PowerAttention",
}


def resolve(name: str, **config) -> tuple[ModuleType, dict]:
    """Return the pattern's module and its validated, complete config."""
    if not isinstance(name, str) or name not in _MODULES:
        raise ValueError(f"unknown pattern {name!r}; expected one of {list(PATTERNS)}")
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
    predicate = block_predicate(name, **config)

    def _mask_mod(b, h, q_idx, kv_idx):
        causal = q_idx >= kv_idx
        return causal & predicate(q_idx // block_size, kv_idx // block_size)

    _mask_mod.__name__ = f"{name}_mask"
    _mask_mod.pattern = name
    _mask_mod.block_size = block_size
    _mask_mod.config = resolve(name, **config)[1]
    return _mask_mod


def block_layout(name: str, num_blocks: int, **config) -> torch.Tensor:
    """Causal block layout: bool ``[num_blocks, num_blocks]``, rows = query blocks."""
    num_blocks = check_int("num_blocks", num_blocks, 1, name)
    predicate = block_predicate(name, **config)
    q_blk = torch.arange(num_blocks).unsqueeze(1)
    kv_blk = torch.arange(num_blocks).unsqueeze(0)
    return (q_blk >= kv_blk) & predicate(q_blk, kv_blk)


def token_mask(name: str, seq_len: int, block_size: int = 256, **config) -> torch.Tensor:
    """Dense token mask ``[seq_len, seq_len]``; memory grows as seq_len**2."""
    seq_len = check_int("seq_len", seq_len, 1, name)
    idx = torch.arange(seq_len)
    return mask_mod(name, block_size, **config)(None, None, idx[:, None], idx[None, :])


class CompressedLayout(NamedTuple):
    """Per-query-block key-block lists, the form the kernels consume.

    kv_indices: int32 ``[num_q_blocks, max_count]``, ascending key-block indices,
        padded on the right with the row's last valid index (safe to load).
    kv_counts:  int32 ``[num_q_blocks]``, number of valid entries per row.
    """

    kv_indices: torch.Tensor
    kv_counts: torch.Tensor


def compress_layout(layout: torch.Tensor) -> CompressedLayout:
    """Turn a bool ``[..., nq, nk]`` block layout into (kv_indices, kv_counts)."""
    if not isinstance(layout, torch.Tensor) or layout.dtype != torch.bool or layout.dim() < 2:
        raise ValueError("layout must be a bool tensor of shape [..., num_q_blocks, num_kv_blocks]")
    counts = layout.sum(-1, dtype=torch.int32)
    max_count = max(int(counts.max().item()) if counts.numel() else 0, 1)
    nk = layout.shape[-1]
    # Stable sort puts the selected key blocks first, in ascending order.
    keys = (~layout).to(torch.int8)
    order = torch.sort(keys, dim=-1, stable=True).indices[..., :max_count].to(torch.int32)
    # Pad each row with its last valid index so a kernel may prefetch past the end safely.
    pos = torch.arange(max_count, device=layout.device)
    last = order.gather(-1, (counts.clamp(min=1) - 1).long().unsqueeze(-1))
    order = torch.where(pos < counts.unsqueeze(-1), order, last)
    order = order.clamp(max=max(nk - 1, 0))
    return CompressedLayout(order.contiguous(), counts.contiguous())


def blocks_per_row(name: str, num_blocks: int, **config) -> torch.Tensor:
    """Number of key blocks each query block attends to (its budget)."""
    return block_layout(name, num_blocks, **config).sum(-1)


__all__ = [
    "PATTERNS",
    "LABELS",
    "CompressedLayout",
    "block_layout",
    "block_predicate",
    "blocks_per_row",
    "compress_layout",
    "flex_block_mask",
    "mask_mod",
    "paper_stride",
    "resolve",
    "token_mask",
]
