"""``BlockLayout``: the one owner of a block-sparse pattern's metadata.

In the spirit of FlexAttention's ``BlockMask``: built once, from a pattern name
and its config or from a bool block layout, at a sequence length and block
size; validated where it is built; everything below the public API (kernels,
the transformers integration, FlexAttention, the context-parallel exchange)
takes the object and reads what it needs from it::

    from lib.masks import layout
    lay = layout("power", seq_len=8192, block_size=64)     # cached per (pattern, config, length, block size)
    lay.kv_indices, lay.kv_counts, lay.kv_full_counts      # per query block: its key blocks, full ones first
    lay.partial                                            # bool [nb, nb]: tiles that need the token mask
    lay.q_indices, lay.q_counts                            # transposed: per key block, the query blocks reading it
    lay.work_items(chunk=16)                               # dK/dV work items of the backward kernel
    lay.decode_plan(num_tokens)                            # host form: key blocks of the newest tokens
    lay.decode_rows(pos_tensor)                            # device form, fixed size (CUDA-graph safe)
    lay.tables(device)                                     # the device copies the kernels read (cached)
    lay.to_dense(), lay.token_mask(), lay.sparsity(), lay.to_flex_block_mask(device)

Full and partial blocks. A selected key block ``kb`` of query block ``qb`` is
*full* when every query of ``qb`` may see every key of ``kb`` (strictly below the
diagonal and entirely inside the sequence) and *partial* otherwise: the
diagonal block (token causality) and a key block that runs past the end of the
sequence (the tail, which with causality is only ever the last diagonal block).
Kernels run full blocks unmasked and apply the token mask on partial ones; rows
list full blocks first (ascending), then partial ones.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch

from ._common import check_int


def _freeze(value):
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(x) for x in value)
    return value


def frozen_config(config: dict) -> tuple:
    """Hashable, order-independent form of a pattern config (lists become tuples)."""
    return tuple(sorted((k, _freeze(v)) for k, v in config.items()))


def compress_rows(layout: torch.Tensor, max_count: int | None = None):
    """Per-row ascending column indices of a bool ``[..., n_rows, n_cols]`` layout and the row counts.

    Returns ``(indices int32 [..., n_rows, max_count], counts int32 [..., n_rows])``; each row is
    padded on the right with its last valid index (safe for a kernel to prefetch), rows with no
    entry with 0.
    """
    if not isinstance(layout, torch.Tensor) or layout.dtype != torch.bool or layout.dim() < 2:
        raise ValueError("layout must be a bool tensor of shape [..., num_rows, num_cols]")
    counts = layout.sum(-1, dtype=torch.int32)
    if max_count is None:
        max_count = max(int(counts.max().item()) if counts.numel() else 0, 1)
    n_cols = layout.shape[-1]
    order = torch.sort((~layout).to(torch.int8), dim=-1, stable=True).indices[..., :max_count].to(torch.int32)
    pos = torch.arange(order.shape[-1], device=layout.device)
    last = order.gather(-1, (counts.clamp(min=1) - 1).long().clamp(max=max(order.shape[-1] - 1, 0)).unsqueeze(-1))
    order = torch.where(pos < counts.unsqueeze(-1), order, last).clamp(max=max(n_cols - 1, 0))
    return order.contiguous(), counts.contiguous()


class DeviceTables(NamedTuple):
    """What the Triton kernels read, on one device."""

    kv_indices: torch.Tensor      # int32 [nb, max_count]: full key blocks first, then partial ones
    kv_counts: torch.Tensor       # int32 [nb]
    kv_full_counts: torch.Tensor  # int32 [nb]: entries [0, full) are full, [full, count) partial
    q_lists: torch.Tensor         # int32 flat: the off-diagonal query blocks of each dK/dV work item
    items: torch.Tensor           # int32 [n_items, 4]: key block, offset into q_lists, count, has-partial
    num_selected: int             # selected (query block, key block) pairs


class DecodePlan(NamedTuple):
    """Key blocks of the newest ``T`` tokens (host form, for ``kernels.sparse_decode``)."""

    blocks: torch.Tensor   # int32 [U]: union of the key blocks the new tokens select, ascending
    allowed: torch.Tensor  # int8 [T, U]: token t may use blocks[u]
    num_blocks: int


class BlockLayout:
    """A causal block-sparse layout at one sequence length and block size.

    Build it with :func:`lib.masks.layout` (named patterns, cached) or
    :meth:`BlockLayout.from_bool`; the constructor itself assumes checked input.
    """

    def __init__(self, dense: torch.Tensor, seq_len: int, block_size: int, pattern: str | None = None,
                 config: dict | None = None):
        self._dense = dense
        self.seq_len = seq_len
        self.block_size = block_size
        self.pattern = pattern
        self._config = dict(config or {})
        self._tables: dict = {}   # (device, chunk) -> DeviceTables
        self._decode: dict = {}   # (num_tokens, device) -> DecodePlan
        self._flex: dict = {}     # (device, flex_block) -> BlockMask (default mask_mod only)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pattern(cls, pattern: str, seq_len: int, block_size: int = 256, **config) -> "BlockLayout":
        """The layout of a named pattern (validated here; see ``lib.masks.layout`` for the cached form)."""
        from . import resolve  # late: lib.masks imports this module

        seq_len = check_int("seq_len", seq_len, 1, "BlockLayout")
        block_size = check_int("block_size", block_size, 1, "BlockLayout")
        module, cfg = resolve(pattern, **config)
        nb = math.ceil(seq_len / block_size)
        dense = _named_dense(pattern, nb, frozen_config(cfg))
        return cls(dense, seq_len, block_size, pattern, cfg)

    @classmethod
    def from_bool(cls, layout: torch.Tensor, seq_len: int, block_size: int = 256) -> "BlockLayout":
        """Wrap a bool ``[nb, nb]`` block layout (``nb = ceil(seq_len / block_size)``); blocks above
        the diagonal are dropped (token causality always applies)."""
        seq_len = check_int("seq_len", seq_len, 1, "BlockLayout")
        block_size = check_int("block_size", block_size, 1, "BlockLayout")
        nb = math.ceil(seq_len / block_size)
        if not isinstance(layout, torch.Tensor):
            raise TypeError(f"a layout must be a bool tensor, got {type(layout).__name__}")
        if layout.dtype != torch.bool or layout.dim() != 2:
            raise TypeError(f"a layout must be a 2-D bool tensor, got dtype {layout.dtype} and {layout.dim()} dims")
        if tuple(layout.shape) != (nb, nb):
            raise ValueError(f"layout has shape {tuple(layout.shape)} but seq_len={seq_len} with block_size={block_size} "
                             f"needs ({nb}, {nb}) (ceil(seq_len / block_size) blocks)")
        return cls(torch.tril(layout.detach().cpu()), seq_len, block_size, None, None)

    # ------------------------------------------------------------------ identity
    @property
    def num_blocks(self) -> int:
        return self._dense.shape[0]

    @property
    def config(self) -> dict:
        return dict(self._config)

    @property
    def key(self):
        """Hashable identity of a named layout (None for a layout built from a tensor)."""
        if self.pattern is None:
            return None
        return (self.pattern, frozen_config(self._config), self.seq_len, self.block_size)

    def __repr__(self) -> str:
        what = self.pattern or "custom"
        cfg = ", ".join(f"{k}={v}" for k, v in frozen_config(self._config))
        return (f"BlockLayout({what}{', ' + cfg if cfg else ''}; seq_len={self.seq_len}, block_size={self.block_size}, "
                f"{self.num_blocks} blocks, {self.num_selected} selected, sparsity {self.sparsity():.3f})")

    # ------------------------------------------------------------------ dense views
    def to_dense(self) -> torch.Tensor:
        """Bool ``[nb, nb]`` (query block x key block), causal; a copy."""
        return self._dense.clone()

    def token_mask(self) -> torch.Tensor:
        """Dense token mask ``[seq_len, seq_len]`` (causality and the layout); memory grows as seq_len**2."""
        idx = torch.arange(self.seq_len)
        return self.mask_mod()(None, None, idx[:, None], idx[None, :])

    def mask_mod(self, device=None):
        """FlexAttention ``mask_mod(b, h, q_idx, kv_idx)``: causal and a lookup in this layout."""
        table = self._dense if device is None else self._dense.to(device)
        bs = self.block_size

        def layout_mask_mod(b, h, q_idx, kv_idx):
            return (q_idx >= kv_idx) & table[q_idx // bs, kv_idx // bs]

        return layout_mask_mod

    @functools.cached_property
    def num_selected(self) -> int:
        return int(self._dense.sum())

    def sparsity(self, kind: str = "causal") -> float:
        """1 - selected / dense blocks: ``"causal"`` (vs the causal triangle), ``"square"`` (vs n^2) or
        ``"last_row"`` (what one decoding step at the end of the context skips)."""
        n = self.num_blocks
        if kind == "causal":
            return 1.0 - self.num_selected / (n * (n + 1) / 2)
        if kind == "square":
            return 1.0 - self.num_selected / (n * n)
        if kind == "last_row":
            return 1.0 - int(self._dense[-1].sum()) / n
        raise ValueError(f"sparsity kind must be 'causal', 'square' or 'last_row', got {kind!r}")

    # ------------------------------------------------------------------ full / partial
    @functools.cached_property
    def partial(self) -> torch.Tensor:
        """Bool ``[nb, nb]``: selected blocks that need the token mask (diagonal; sequence tail)."""
        n = self.num_blocks
        qb = torch.arange(n)[:, None]
        kb = torch.arange(n)[None, :]
        tail = (kb + 1) * self.block_size > self.seq_len
        return self._dense & ((qb == kb) | tail)

    @functools.cached_property
    def full(self) -> torch.Tensor:
        """Bool ``[nb, nb]``: selected blocks every query of the row sees entirely."""
        return self._dense & ~self.partial

    @functools.cached_property
    def _rows(self):
        # Full blocks first (ascending), then partial ones: sort by (partial, index).
        n = self.num_blocks
        key = self.partial.to(torch.int64) * n + torch.arange(n)[None, :]
        key = torch.where(self._dense, key, torch.full_like(key, 2 * n))
        counts = self._dense.sum(-1, dtype=torch.int32)
        full_counts = self.full.sum(-1, dtype=torch.int32)
        m = max(int(counts.max()) if n else 0, 1)
        order = torch.sort(key, dim=-1, stable=True).indices[:, :m].to(torch.int32)
        last = order.gather(-1, (counts.clamp(min=1) - 1).long().unsqueeze(-1))
        order = torch.where(torch.arange(m)[None, :] < counts[:, None], order, last)
        return order.contiguous(), counts.contiguous(), full_counts.contiguous()

    # The lists the kernels read (``_rows``: per query block; ``_transposed``: per key block).
    kv_indices = property(lambda self: self._rows[0], doc="int32 ``[nb, max_count]``: each query block's key "
                          "blocks, full ones first (ascending), then partial ones; padded with the row's last entry.")
    kv_counts = property(lambda self: self._rows[1], doc="int32 ``[nb]``: key blocks per query block.")
    kv_full_counts = property(lambda self: self._rows[2], doc="int32 ``[nb]``: full key blocks per query block.")
    q_indices = property(lambda self: self._transposed[0], doc="int32 ``[nb, max]``: per key block, the query "
                         "blocks that read it (ascending, padded).")
    q_counts = property(lambda self: self._transposed[1], doc="int32 ``[nb]``: query blocks per key block.")

    @property
    def max_count(self) -> int:
        """The largest number of key blocks of any query block (a row's budget)."""
        return int(self.kv_counts.max()) if self.num_blocks else 0

    @functools.cached_property
    def _transposed(self):
        return compress_rows(self._dense.t().contiguous())

    def work_items(self, chunk: int = 16):
        """dK/dV work items: per key block, its query blocks cut into chunks of at most ``chunk``
        (so the sink, read by every query block, spreads over many programs), longest first.

        Returns ``(q_lists int32 flat, items int32 [n_items, 4])`` with items ``(key block, offset
        into q_lists, count, has_partial)``; ``q_lists`` holds the query blocks for which the key
        block is full, and the partial one (the diagonal) is flagged on the item's first chunk.
        """
        chunk = check_int("chunk", chunk, 1, "BlockLayout.work_items")
        return self._work_items(chunk)

    @functools.lru_cache(maxsize=4)
    def _work_items(self, chunk: int):
        q_lists, items = [], []
        offset = 0
        full, partial = self.full, self.partial
        for kb in range(self.num_blocks):
            fulls = torch.nonzero(full[:, kb]).flatten().tolist()
            has_partial = bool(partial[:, kb].any())
            if has_partial and not bool(partial[kb, kb]):
                raise ValueError("a partial block off the diagonal: the backward kernel handles only the diagonal")
            first = True
            for s in range(0, max(len(fulls), 1), chunk):
                part = fulls[s:s + chunk]
                flag = has_partial and first
                if part or flag:
                    items.append((kb, offset, len(part), int(flag)))
                    q_lists.extend(part)
                    offset += len(part)
                first = False
        items.sort(key=lambda it: -(it[2] + it[3]))  # longest first: a short tail of the grid
        q_lists_t = torch.tensor(q_lists or [0], dtype=torch.int32)
        items_t = torch.tensor(items or [(0, 0, 0, 0)], dtype=torch.int32).reshape(-1, 4)
        return q_lists_t, items_t

    # ------------------------------------------------------------------ device tables
    def tables(self, device, chunk: int = 16) -> DeviceTables:
        """Device copies of the lists the kernels read, built once per (device, chunk)."""
        key = (str(torch.device(device)), chunk)
        if key not in self._tables:
            if any(self.partial.sum(-1) > 1):
                raise ValueError("a row with more than one partial block: the kernels mask only the diagonal")
            q_lists, items = self.work_items(chunk)
            self._tables[key] = DeviceTables(self.kv_indices.to(device), self.kv_counts.to(device),
                                             self.kv_full_counts.to(device), q_lists.to(device), items.to(device),
                                             self.num_selected)
        return self._tables[key]

    # ------------------------------------------------------------------ decode
    def decode_plan(self, num_tokens: int, device=None) -> DecodePlan:
        """Key blocks of the last ``num_tokens`` positions (host form, moved to ``device``)."""
        num_tokens = check_int("num_tokens", num_tokens, 1, "BlockLayout.decode_plan")
        key = (num_tokens, None if device is None else str(torch.device(device)))
        if key not in self._decode:  # every layer of a decoding step asks for the same plan
            self._decode[key] = self._decode_plan(num_tokens, device)
        return self._decode[key]

    def _decode_plan(self, num_tokens: int, device) -> DecodePlan:
        if num_tokens > self.seq_len:
            raise ValueError(f"{num_tokens} new tokens but the layout covers only {self.seq_len}")
        qblk = torch.arange(self.seq_len - num_tokens, self.seq_len) // self.block_size
        rows = self._dense[qblk]
        union = torch.nonzero(rows.any(0)).flatten()
        if union.numel() == 0:
            union = torch.zeros(1, dtype=torch.long)
            allowed = torch.zeros(num_tokens, 1, dtype=torch.int8)
        else:
            allowed = rows[:, union].to(torch.int8)
        blocks = union.to(torch.int32)
        if device is not None:
            blocks, allowed = blocks.to(device), allowed.contiguous().to(device)
        return DecodePlan(blocks, allowed.contiguous(), int(union.numel()))

    def decode_rows(self, pos: torch.Tensor):
        """Key blocks of the query at absolute position ``pos`` (a 1-element device tensor), fixed size.

        Returns ``(blocks int64 [M], valid bool [M])`` with ``M = max_count``, gathered on ``pos``'s
        device from :meth:`tables`, so shapes never depend on the position (CUDA-graph safe).
        Full blocks come first, the diagonal last.
        """
        t = self.tables(pos.device)
        qb = (pos.reshape(1) // self.block_size).long().clamp(max=self.num_blocks - 1)
        # index_select, not t.kv_indices[qb]: indexing with a 0-dim tensor reads it on the host (.item(), a
        # device sync), which a CUDA-graph capture does not allow (it invalidated notebook 09's decode capture).
        blocks = t.kv_indices.index_select(0, qb)[0].long()
        valid = torch.arange(blocks.numel(), device=pos.device) < t.kv_counts.index_select(0, qb)
        return blocks, valid

    # ------------------------------------------------------------------ FlexAttention
    def to_flex_block_mask(self, device, flex_block: int = 128, mask_mod=None):
        """FlexAttention ``BlockMask`` of this layout, written down without a seq x seq mask.

        Flex tiles are ``min(block_size, flex_block)`` tokens (one size must divide the other).
        Tiles strictly below the diagonal are full; diagonal tiles and a last key tile that sticks
        out of the sequence are partial (only there does compiled Flex call ``mask_mod``).
        ``mask_mod`` defaults to :meth:`mask_mod` (exact on every path, eager Flex included, which
        applies it to every pair); ``lib.masks.flex.causal_mask_mod`` is exact only when compiled.
        """
        from torch.nn.attention.flex_attention import BlockMask

        flex_block = check_int("flex_block", flex_block, 1, "to_flex_block_mask")
        key = (str(torch.device(device)), flex_block)
        if mask_mod is None and key in self._flex:
            return self._flex[key]
        bs, S = self.block_size, self.seq_len
        if bs % flex_block and flex_block % bs:
            raise ValueError(f"to_flex_block_mask: block_size {bs} and flex_block {flex_block} must divide one another")
        fb = min(bs, flex_block)
        nt = -(-S // fb)
        ours = torch.arange(nt) * fb // bs  # our block of each Flex tile (tiles never straddle blocks)
        chosen = self._dense[ours[:, None], ours[None, :]]
        qt, kt = torch.arange(nt)[:, None], torch.arange(nt)[None, :]
        full = chosen & (qt > kt)
        partial = chosen & (qt == kt)
        if S % fb:  # the last key tile is only partly inside the sequence
            partial[:, -1] |= full[:, -1]
            full[:, -1] = False
        default = mask_mod is None
        if default:
            mask_mod = self.mask_mod(device)
        # Flex reads the number of key tiles off the index width: keep all nt columns.
        kv_idx, kv_num = compress_rows(partial, max_count=nt)
        full_idx, full_num = compress_rows(full, max_count=nt)
        block_mask = BlockMask.from_kv_blocks(kv_num[None, None].to(device), kv_idx[None, None].to(device),
                                              full_num[None, None].to(device), full_idx[None, None].to(device),
                                              BLOCK_SIZE=fb, mask_mod=mask_mod, seq_lengths=(S, S))
        if default:
            self._flex[key] = block_mask
        return block_mask


@functools.lru_cache(maxsize=128)
def _named_dense(pattern: str, num_blocks: int, frozen: tuple) -> torch.Tensor:
    from . import block_predicate

    predicate = block_predicate(pattern, **dict(frozen))
    q_blk = torch.arange(num_blocks).unsqueeze(1)
    kv_blk = torch.arange(num_blocks).unsqueeze(0)
    out = (q_blk >= kv_blk) & predicate(q_blk, kv_blk)
    out.requires_grad_(False)
    return out


@functools.lru_cache(maxsize=256)
def _cached_layout(pattern: str, frozen: tuple, seq_len: int, block_size: int) -> BlockLayout:
    return BlockLayout.from_pattern(pattern, seq_len, block_size, **dict(frozen))


def layout(pattern, seq_len: int, block_size: int = 256, **config) -> BlockLayout:
    """The ``BlockLayout`` of ``pattern`` (a name, a bool block layout or a ``BlockLayout``).

    Names are validated (pattern and config keywords) and the object is cached per
    (pattern, config, seq_len, block_size), so its device tables are built once.
    A ``BlockLayout`` passes through (its seq_len and block_size must match).
    """
    if isinstance(pattern, BlockLayout):
        if config:
            raise ValueError(f"config keywords {sorted(config)} only apply to a named pattern, not to a BlockLayout")
        if pattern.seq_len != seq_len or pattern.block_size != block_size:
            raise ValueError(f"the BlockLayout is for seq_len={pattern.seq_len}, block_size={pattern.block_size}, "
                             f"but the call has seq_len={seq_len}, block_size={block_size}")
        return pattern
    if isinstance(pattern, torch.Tensor):
        if config:
            raise ValueError(f"config keywords {sorted(config)} only apply to a named pattern, not to a layout tensor")
        return BlockLayout.from_bool(pattern, seq_len, block_size)
    if isinstance(pattern, str):
        from . import resolve

        seq_len = check_int("seq_len", seq_len, 1, pattern)
        block_size = check_int("block_size", block_size, 1, pattern)
        cfg = resolve(pattern, **config)[1]  # raises on an unknown pattern or config keyword
        return _cached_layout(pattern, frozen_config(cfg), seq_len, block_size)
    from . import NAMES

    raise TypeError(f"pattern must be a name from {list(NAMES)}, a bool layout tensor or a BlockLayout, "
                    f"got {type(pattern).__name__}")


__all__ = ["BlockLayout", "DecodePlan", "DeviceTables", "compress_rows", "frozen_config", "layout"]
