"""Device-side index tables the Triton kernels read, built once per layout and cached.

Forward / dQ: per query block, its key blocks (``lib.masks.compress_layout``).
dK/dV: per key block, the query blocks that attend to it (the transposed
layout), cut into chunks of at most ``chunk`` query blocks so that the sink
block (attended by every query block) is spread over many programs instead of
one long serial loop; chunks of one key block add into fp32 buffers atomically.
Decode: the union of key blocks the new tokens select, and which token may
use which of them.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from lib.masks import compress_layout

#: Tests set this to fill every kernel output with NaN before launch, so an
#: element the kernel forgets to write shows up instead of hiding as stale memory.
POISON = False


def empty(*shape, device, dtype):
    if POISON:
        return torch.full(shape, float("nan"), device=device, dtype=dtype)
    return torch.empty(*shape, device=device, dtype=dtype)


_CACHE: dict = {}
_MAX_CACHE = 64


class PrefillPlan(NamedTuple):
    kv_indices: torch.Tensor  # int32 [nq, max_count], ascending, padded with the last valid entry
    kv_counts: torch.Tensor   # int32 [nq]
    q_lists: torch.Tensor     # int32 flat: off-diagonal query blocks of each dK/dV work item
    items: torch.Tensor       # int32 [n_items, 4]: key block, offset into q_lists, count, has-diagonal
    num_blocks_computed: int  # selected (query block, key block) pairs


def _cached(key, build):
    if key is not None and key in _CACHE:
        return _CACHE[key]
    value = build()
    if key is not None:
        if len(_CACHE) >= _MAX_CACHE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = value
    return value


def prefill_plan(layout: torch.Tensor, device, chunk: int = 16, cache_key=None) -> PrefillPlan:
    key = None if cache_key is None else ("prefill", cache_key, tuple(layout.shape), str(device), chunk)

    def build():
        lay = layout.cpu()
        idx, cnt = compress_layout(lay)
        q_lists, items = [], []
        offset = 0
        for kb in range(lay.shape[1]):
            qbs = torch.nonzero(lay[:, kb]).flatten().tolist()
            diag = bool(qbs) and qbs[0] == kb
            off = qbs[1:] if diag else qbs
            first = True
            for s in range(0, max(len(off), 1), chunk):
                part = off[s:s + chunk]
                has_diag = diag and first
                if part or has_diag:
                    items.append((kb, offset, len(part), int(has_diag)))
                    q_lists.extend(part)
                    offset += len(part)
                first = False
        # Longest items first so the long tail of the grid is short.
        items.sort(key=lambda it: -(it[2] + it[3]))
        q_lists_t = torch.tensor(q_lists or [0], dtype=torch.int32)
        items_t = torch.tensor(items or [(0, 0, 0, 0)], dtype=torch.int32).reshape(-1, 4)
        return PrefillPlan(idx.to(device), cnt.to(device), q_lists_t.to(device), items_t.to(device),
                           int(lay.sum()))

    return _cached(key, build)


class DecodePlan(NamedTuple):
    blocks: torch.Tensor   # int32 [U]: union of the key blocks the new tokens select, ascending
    allowed: torch.Tensor  # int8 [T, U]: token t may use blocks[u]
    num_blocks: int


def decode_plan(layout: torch.Tensor, seq_len: int, num_tokens: int, block_size: int, device,
                cache_key=None) -> DecodePlan:
    key = None if cache_key is None else ("decode", cache_key, seq_len, num_tokens, block_size, str(device))

    def build():
        lay = layout.cpu()
        qblk = (torch.arange(seq_len - num_tokens, seq_len) // block_size)
        rows = lay[qblk]  # [T, nk]
        union = torch.nonzero(rows.any(0)).flatten()
        if union.numel() == 0:
            union = torch.zeros(1, dtype=torch.long)
            allowed = torch.zeros(num_tokens, 1, dtype=torch.int8)
        else:
            allowed = rows[:, union].to(torch.int8)
        return DecodePlan(union.to(torch.int32).to(device), allowed.contiguous().to(device), int(union.numel()))

    return _cached(key, build)
