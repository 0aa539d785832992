"""Sparse context parallelism: block-sparse causal attention over a sequence sharded across ranks.

Public API::

    context_parallel_attention(q, k, v, pattern, block_size=256, group=None, *, scale=None,
                               compute="reference", overlap=None, timeout=60.0, stats=None, **config)

Why. Ring attention passes every rank's keys and values around the ring, so each rank receives the
whole sequence's KV. A static block-sparse pattern tells every rank in advance which key blocks its
queries read: a PowerAttention query block reads the sink, a short window and one block per power of
two of distance, O(log n) blocks. So each rank fetches exactly the remote key blocks its queries
select, once each, in one all-to-all, and nothing else.

Sharding (the default and only assignment). Every rank passes its local shard
``[batch, heads, local_len, head_dim]`` (q with ``Hq`` heads, k/v with ``Hkv`` heads, GQA). The ranks
first all-gather their shard shapes; the global length is ``S = sum(local_len)`` in rank order, the
sequence has ``nb = ceil(S / block_size)`` blocks, and rank ``r`` must hold blocks
``[r * bpr, min((r + 1) * bpr, nb))`` with ``bpr = ceil(nb / world_size)``: equal block-aligned
slices, the last one shorter (it holds the sequence tail) and non-empty. :func:`shard_bounds` gives
the token slices; a shard list that does not fit raises the same error on every rank. Block
alignment means a key block has one owner and is sent whole. Contiguous slices keep the window
local, and a sparse pattern's rows cost about the same at every position (unlike full causal
attention), so compute is balanced without a zigzag/striped assignment (``rank_profile`` reports the
per-rank work). A striped (block-cyclic) assignment over a power-of-two world size would make every
power-of-two distance >= W local but send each query block's window blocks instead: for
PowerAttention's 5-block window at 8 ranks and 1M tokens about 2x the bytes of contiguous slices.

What is exchanged. Everyone derives the same exchange plan from the global ``BlockLayout``
(``lib.masks.layout``): rank ``r`` needs the key blocks ``< b0(r)`` selected by any of its query
blocks (causality: never a later rank's block). Rank ``s`` sends rank ``r`` the blocks of its slice
in that set, K and V packed together, ascending; one ``all_to_all_single`` with split sizes moves
them all (no index lists are sent: the plan is a function of agreed metadata).

Overlap. With ``overlap=True`` the all-to-all is started asynchronously, the attention of the
local queries to the local key blocks (the window and the near power-of-two blocks: most of the
work) runs while the remote blocks are in flight, then the attention to the received blocks runs
and the two partial results are merged by their log-sum-exp (as ring attention does). The merge
uses the compute's LSE, float32 in ``kernels.reference`` (as in the kernels), so float64 results
agree with a single-process float64 run to ~1e-7 relative, not 1e-15; and the merge's gradients
need a compute whose LSE is differentiable: the reference's is, the Triton kernels' is not (they
mark it non-differentiable), so ``overlap=True`` with gradients on the Triton path raises instead of
returning wrong gradients. ``overlap=False`` makes one call on the compacted keys
``[received blocks..., local blocks]`` with an explicit layout (exact; no overlap). The default
``overlap=None`` overlaps when that is exact enough and differentiable: not for float64 inputs, and
with gradients only for the reference compute.

Gradients. The received blocks enter autograd through :class:`_ReceivedKV`, whose backward sends
the gradient of every received block back to its owner (the same all-to-all with the splits
reversed), where it is added into the owner's ``dk``/``dv`` (a block read by several ranks gets the
sum). Every rank must therefore run backward through its output, like any collective in backward
(DDP, tensor parallelism); a rank that does not makes the others fail after ``timeout`` seconds
instead of hanging forever.

Bad input. Local checks run first but do not raise; every rank then all-gathers a small metadata
vector (shapes, dtype, block size, grad flags, a digest of pattern/config/scale), waited on with
``timeout``; if any rank's input is bad or the ranks disagree, every rank raises the same
``ValueError`` naming the ranks and the problem. A group that is not initialised raises
``RuntimeError`` at once (no collective is attempted).

Compute (pluggable). ``compute`` is ``"reference"`` (``kernels.reference.reference_attention``
in query chunks, float32/float64: the CPU path), ``"sparse_attention"`` (the public
``kernels.sparse_attention`` on the problem padded to a square one: the Triton kernels on CUDA, see
:func:`sparse_attention_compute`), or any callable with ``reference_attention``'s signature ``f(q, k, v, layout, block_size, *,
q_offset, scale, return_lse)`` where ``layout`` is bool ``[q_offset // block_size + n_q_blocks,
ceil(k_len / block_size)]`` and query ``t`` sits at position ``q_offset + t`` of the key sequence.
A dedicated GPU path needs a kernel taking ``q_offset`` and a rectangular layout (the Triton
kernels already index keys through per-row block lists, so this is a query-block offset and a
separate key length) and, for ``overlap=True``, gradients through the returned LSE.

Accounting. :func:`communication_volume` gives, from the plan alone, the bytes every rank sends
and receives in the sparse exchange and in a ring exchange of all KV; ``stats=dict()`` makes a
call record what it actually put on the wire (tests check the two agree). The multi-process helpers
at the end (:func:`run_ranks`, :func:`measure_worker`) spawn CPU gloo ranks for tests and notebooks.
"""
from __future__ import annotations

import datetime
import functools
import hashlib
import math
import os
import tempfile
import time
from typing import Callable, NamedTuple

import torch
import torch.distributed as dist

from lib import masks as _masks

from .reference import reference_attention

COMPUTES = ("reference", "sparse_attention")
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_DTYPE_CODE = {d: i + 1 for i, d in enumerate(_DTYPES)}
# Metadata vector all-gathered before anything else (int64).
_META = ("error_len", "desc_len", "batch", "q_heads", "kv_heads", "q_len", "k_len", "head_dim", "dtype", "block_size",
         "device", "q_grad", "k_grad", "v_grad", "digest")


# ---------------------------------------------------------------------------------------------- sharding
class Sharding(NamedTuple):
    """The default contiguous, block-aligned assignment of a sequence to ranks."""

    seq_len: int
    block_size: int
    world_size: int
    num_blocks: int
    blocks_per_rank: int
    block_ranges: tuple   # ((b0, b1), ...) per rank: the key/query blocks it owns
    bounds: tuple         # ((start, end), ...) per rank: its token slice

    @property
    def lengths(self) -> tuple:
        return tuple(e - s for s, e in self.bounds)

    def owner(self, block: int) -> int:
        return block // self.blocks_per_rank


def shard_bounds(seq_len: int, world_size: int, block_size: int = 256) -> Sharding:
    """Token slices of the default assignment: ``bpr = ceil(nb / world_size)`` whole blocks per rank,
    the last rank holds the rest (fewer blocks, the sequence tail) and must not be empty."""
    for name, val, lo in (("seq_len", seq_len, 1), ("world_size", world_size, 1), ("block_size", block_size, 1)):
        if isinstance(val, bool) or not isinstance(val, int) or val < lo:
            raise ValueError(f"shard_bounds: {name} must be an integer >= {lo}, got {val!r}")
    nb = math.ceil(seq_len / block_size)
    bpr = math.ceil(nb / world_size)
    if (world_size - 1) * bpr >= nb:
        raise ValueError(
            f"{seq_len} tokens = {nb} blocks of {block_size} cannot be split over {world_size} ranks as equal "
            f"slices of ceil({nb}/{world_size}) = {bpr} blocks with a non-empty last slice (the last rank would get "
            f"nothing); use a length of more than {(world_size - 1) * bpr * block_size} tokens, or fewer ranks")
    ranges = tuple((r * bpr, min((r + 1) * bpr, nb)) for r in range(world_size))
    bounds = tuple((b0 * block_size, min(b1 * block_size, seq_len)) for b0, b1 in ranges)
    return Sharding(seq_len, block_size, world_size, nb, bpr, ranges, bounds)


def shard(x: torch.Tensor, rank: int, world_size: int, block_size: int = 256, dim: int = 2) -> torch.Tensor:
    """Rank ``rank``'s slice of a full-sequence tensor (sequence along ``dim``) under the default assignment."""
    s, e = shard_bounds(x.shape[dim], world_size, block_size).bounds[rank]
    return x.narrow(dim, s, e - s)


# ---------------------------------------------------------------------------------------------- plan
class RankProfile(NamedTuple):
    """What rank ``r``'s query blocks read, by source rank (from the layout; no communication)."""

    recv_blocks: torch.Tensor   # int64, ascending: remote key blocks (< b0) some local query block selects
    pairs_by_source: tuple      # visible (query, key) token pairs per source rank (per head and batch)
    remote_refs_max: int        # most remote blocks any single local query block selects (no dedup)
    remote_refs_mean: float     # mean over local query blocks
    blocks_by_source: tuple     # selected (query block, key block) pairs per source rank


def _layout_rows(dense: torch.Tensor):
    return lambda rows, ncols: dense[rows, :ncols]


def _predicate_rows(pattern: str, num_blocks: int, config: dict):
    pred = _masks.block_predicate(pattern, **config)
    cols = torch.arange(num_blocks, dtype=torch.int32)[None, :]

    def rows_fn(rows, ncols):
        r, c = rows.to(torch.int32)[:, None], cols[:, :ncols]
        return (r >= c) & pred(r, c)

    return rows_fn


def _profile(rows_fn, sharding: Sharding, rank: int, max_elems: int = 1 << 24) -> RankProfile:
    """Scan rank ``rank``'s rows of the layout in chunks (memory ``max_elems`` booleans)."""
    bs, nb, W, bpr = sharding.block_size, sharding.num_blocks, sharding.world_size, sharding.blocks_per_rank
    b0, b1 = sharding.block_ranges[rank]
    last_len = sharding.seq_len - (nb - 1) * bs
    needed = torch.zeros(b0, dtype=torch.bool)
    blocks = torch.zeros(W, dtype=torch.int64)
    pairs = torch.zeros(W, dtype=torch.int64)
    ref_max, ref_sum = 0, 0
    chunk = max(1, max_elems // max(nb, 1))
    for start in range(b0, b1, chunk):
        rows = torch.arange(start, min(start + chunk, b1))
        ncols = int(rows[-1]) + 1  # causal: nothing right of the chunk's last diagonal
        sel = torch.nn.functional.pad(rows_fn(rows, ncols), (0, nb - ncols))  # bool [len(rows), nb]
        if b0:
            rem = sel[:, :b0]
            needed |= rem.any(0)
            refs = rem.sum(-1)
            ref_max = max(ref_max, int(refs.max()))
            ref_sum += int(refs.sum())
        off = (sel & (torch.arange(nb)[None, :] < rows[:, None])).to(torch.int32)
        padded = torch.nn.functional.pad(off, (0, W * bpr - nb)).view(len(rows), W, bpr).sum(-1).long()  # [rows, W]
        qsize = torch.where(rows == nb - 1, last_len, bs)
        blocks += padded.sum(0)
        pairs += (padded * (qsize[:, None] * bs)).sum(0)
        diag = sel[torch.arange(len(rows)), rows]
        blocks[rank] += int(diag.sum())
        pairs[rank] += int((qsize * (qsize + 1) // 2)[diag].sum())
    nq = b1 - b0
    return RankProfile(torch.nonzero(needed).flatten(), tuple(int(x) for x in pairs), ref_max,
                       ref_sum / nq if nq else 0.0, tuple(int(x) for x in blocks))


def rank_profile(pattern, seq_len: int, block_size: int, world_size: int, **config) -> list[RankProfile]:
    """Per-rank :class:`RankProfile` of a pattern (a name, a bool layout or a ``BlockLayout``).

    Named patterns are scanned through their block predicate, chunk by chunk, so the model works at
    millions of tokens without an ``nb x nb`` layout in memory; other patterns through the layout.
    """
    sh = shard_bounds(seq_len, world_size, block_size)
    if isinstance(pattern, str):
        cfg = _masks.resolve(pattern, **config)[1]
        return list(_named_profiles(pattern, _masks.frozen_config(cfg), sh))
    rows_fn = _layout_rows(_masks.layout(pattern, seq_len, block_size, **config).to_dense())
    return [_profile(rows_fn, sh, r) for r in range(world_size)]


@functools.lru_cache(maxsize=64)
def _named_profiles(pattern: str, frozen: tuple, sh: Sharding) -> tuple:
    rows_fn = _predicate_rows(pattern, sh.num_blocks, dict(frozen))
    return tuple(_profile(rows_fn, sh, r) for r in range(sh.world_size))


class ExchangePlan(NamedTuple):
    """Who sends which key blocks to whom. Identical on every rank (computed from agreed metadata)."""

    sharding: Sharding
    recv_blocks: tuple    # per rank r: int64 ascending global block ids it receives (grouped by owner)
    recv_counts: tuple    # [r][s]: blocks r receives from s
    send_local: tuple     # per rank s: int64 local block indices it sends, destinations in rank order
    send_counts: tuple    # [s][r]: blocks s sends to r (= recv_counts[r][s])
    profiles: tuple       # RankProfile per rank

    @property
    def exchanged_blocks(self) -> int:
        return sum(len(b) for b in self.recv_blocks)


def _plan_from_profiles(sh: Sharding, profiles) -> ExchangePlan:
    W = sh.world_size
    recv_blocks = tuple(p.recv_blocks for p in profiles)
    owners = [torch.div(b, sh.blocks_per_rank, rounding_mode="floor") for b in recv_blocks]
    recv_counts = tuple(tuple(int((o == s).sum()) for s in range(W)) for o in owners)
    send_counts = tuple(tuple(recv_counts[r][s] for r in range(W)) for s in range(W))
    send_local = []
    for s in range(W):
        b0 = sh.block_ranges[s][0]
        parts = [recv_blocks[r][owners[r] == s] - b0 for r in range(W)]
        send_local.append(torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64))
    return ExchangePlan(sh, recv_blocks, recv_counts, tuple(send_local), send_counts, tuple(profiles))


def exchange_plan(layout, world_size: int) -> ExchangePlan:
    """The exchange plan of a ``lib.masks.BlockLayout`` over ``world_size`` ranks (default sharding)."""
    if layout.key is not None:
        return _cached_plan(layout, layout.key, world_size)
    return _build_plan(layout, world_size)


def _build_plan(layout, world_size: int) -> ExchangePlan:
    sh = shard_bounds(layout.seq_len, world_size, layout.block_size)
    rows_fn = _layout_rows(layout.to_dense())
    return _plan_from_profiles(sh, [_profile(rows_fn, sh, r) for r in range(world_size)])


@functools.lru_cache(maxsize=64)
def _cached_plan(layout, key, world_size: int) -> ExchangePlan:
    return _build_plan(layout, world_size)


# ---------------------------------------------------------------------------------------------- accounting
def block_bytes(block_size: int, kv_heads: int, head_dim: int, dtype_bytes: int, batch: int = 1) -> int:
    """Bytes of one key block's K and V (what the sparse exchange moves per block)."""
    return 2 * batch * kv_heads * block_size * head_dim * dtype_bytes


def communication_volume(pattern, seq_len: int, block_size: int, world_size: int, kv_heads: int, head_dim: int,
                         dtype_bytes: int, batch: int = 1, **config) -> dict:
    """Forward bytes each rank sends/receives: sparse exchange vs a ring exchange of all KV.

    Sparse: rank r receives ``len(recv_blocks[r])`` whole blocks of K and V and sends the blocks of
    its slice the others need. Ring: W-1 hops, each passing one whole shard to the next rank, so every
    rank receives every other rank's shard (``S - L_r`` tokens of K and V) and sends all shards but
    the one that arrives at its successor last. Backward of the sparse exchange moves the same bytes in
    the reverse direction (the gradients of the received blocks, same dtype); a ring attention's
    backward typically circulates K/V and dK/dV (about twice its forward bytes): see
    ``lib.context_parallel_model``.
    Returns lists per rank (``*_send_bytes``, ``*_recv_bytes``, ``sparse_recv_blocks``,
    ``sparse_send_blocks``, ``remote_refs_max``) and totals.
    """
    profiles = rank_profile(pattern, seq_len, block_size, world_size, **config)
    sh = shard_bounds(seq_len, world_size, block_size)
    return volume_from_profiles(sh, profiles, kv_heads, head_dim, dtype_bytes, batch)


def volume_from_profiles(sh: Sharding, profiles, kv_heads: int, head_dim: int, dtype_bytes: int,
                         batch: int = 1) -> dict:
    """:func:`communication_volume` from already computed per-rank profiles."""
    seq_len, block_size, world_size = sh.seq_len, sh.block_size, sh.world_size
    plan = _plan_from_profiles(sh, profiles)
    bb = block_bytes(block_size, kv_heads, head_dim, dtype_bytes, batch)
    tok = 2 * batch * kv_heads * head_dim * dtype_bytes  # K and V bytes per token
    L = sh.lengths
    W = world_size
    recv_blocks = [len(b) for b in plan.recv_blocks]
    send_blocks = [len(s) for s in plan.send_local]
    ring_recv = [tok * (seq_len - L[r]) for r in range(W)]
    # Rank r forwards, at hop h = 0..W-2, the shard of rank (r - h) mod W; the last one it receives is not sent.
    ring_send = [tok * sum(L[(r - h) % W] for h in range(W - 1)) for r in range(W)]
    out = dict(
        world_size=W, seq_len=seq_len, block_size=block_size, num_blocks=sh.num_blocks, lengths=list(L),
        block_bytes=bb, sparse_recv_blocks=recv_blocks, sparse_send_blocks=send_blocks,
        sparse_recv_bytes=[bb * n for n in recv_blocks], sparse_send_bytes=[bb * n for n in send_blocks],
        ring_recv_bytes=ring_recv, ring_send_bytes=ring_send,
        remote_refs_max=[p.remote_refs_max for p in profiles],
        remote_refs_mean=[p.remote_refs_mean for p in profiles],
        recv_counts=[list(c) for c in plan.recv_counts],
    )
    out["sparse_total_bytes"] = sum(out["sparse_recv_bytes"])
    out["ring_total_bytes"] = sum(ring_recv)
    return out


# ---------------------------------------------------------------------------------------------- compute
def sparse_attention_compute(backend: str = "auto") -> Callable:
    """A compute function that runs the public ``kernels.sparse_attention`` (Triton on CUDA).

    ``sparse_attention`` takes square causal problems, so the rank's problem (queries at a
    block-aligned offset against a compacted key sequence) is zero-padded to one: ``q_offset``
    leading query rows whose layout rows are empty (output 0, skipped by the kernels) and keys up to
    ``q_offset + T``. Correct, but the padding costs memory (``q_offset`` rows of q and the output);
    a kernel with a query offset and a rectangular layout would remove it. The Triton kernels return
    a non-differentiable LSE, so with gradients this compute needs ``overlap=False`` (the default
    ``overlap=None`` picks it; ``overlap=True`` raises rather than return wrong gradients).
    """
    from . import sparse_attention

    def compute(q, k, v, layout, block_size, *, q_offset=0, scale=None, return_lse=False):
        T, S = q.shape[2], k.shape[2]
        n = q_offset + T
        if q_offset % block_size or S > n:
            raise ValueError("sparse_attention_compute needs a block-aligned q_offset and keys no longer than q_offset + T")
        nb = math.ceil(n / block_size)
        q0 = q_offset // block_size
        lay = torch.zeros(nb, nb, dtype=torch.bool)
        lay[q0:, :layout.shape[1]] = layout[q0:nb].cpu()
        pad = torch.nn.functional.pad
        res = sparse_attention(pad(q, (0, 0, q_offset, 0)), pad(k, (0, 0, 0, n - S)), pad(v, (0, 0, 0, n - S)),
                               lay, block_size, backend=backend, scale=scale, return_lse=return_lse)
        if return_lse:
            return res[0][:, :, q_offset:], res[1][:, :, q_offset:]
        return res[:, :, q_offset:]

    compute.__name__ = f"sparse_attention_compute[{backend}]"
    return compute


def reference_compute(q, k, v, layout, block_size, *, q_offset=0, scale=None, return_lse=False):
    """``kernels.reference.reference_attention`` in query chunks of ``max(256, block_size)`` rows: each
    chunk gathers only the key blocks its rows select, so memory follows the pattern, not ``T x S``."""
    return reference_attention(q, k, v, layout, block_size, q_offset=q_offset, scale=scale, return_lse=return_lse,
                               chunk_size=max(256, block_size))


def _resolve_compute(compute):
    if callable(compute):
        return compute
    if compute == "reference":
        return reference_compute
    if compute == "sparse_attention":
        return sparse_attention_compute("auto")
    raise ValueError(f"compute must be one of {COMPUTES} or a callable, got {compute!r}")


def merge_partials(out_a, lse_a, out_b, lse_b):
    """Softmax-merge two partial attentions over disjoint key sets by their natural-log LSE.

    Rows with no key in either part (both LSE ``-inf``) give 0, never NaN. Differentiable."""
    lse = torch.logaddexp(lse_a, lse_b)
    safe = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    wa = torch.exp(lse_a - safe).unsqueeze(-1)
    wb = torch.exp(lse_b - safe).unsqueeze(-1)
    dt = torch.promote_types(out_a.dtype, torch.float32)
    return (out_a.to(dt) * wa + out_b.to(dt) * wb).to(out_a.dtype), lse


# ---------------------------------------------------------------------------------------------- autograd
class _Route(NamedTuple):
    group: object
    send_local: torch.Tensor   # local block indices this rank sent in forward (dest order)
    send_counts: list          # blocks sent to each rank
    recv_counts: list          # blocks received from each rank
    timeout: float
    kv_grad: bool              # do k/v need gradients (agreed by all ranks)
    block_size: int
    stats: dict | None


def _wait(work, timeout: float, what: str, rank: int):
    try:
        work.wait(timeout=datetime.timedelta(seconds=timeout))
    except RuntimeError as e:
        raise TimeoutError(f"context_parallel_attention: rank {rank}: the {what} failed or timed out (limit {timeout:g} s): "
                           f"{e}; did every rank of the group make the same call (and run backward)?") from e


def _exchange(send: torch.Tensor, recv_rows: int, send_counts, recv_counts, group, async_op: bool):
    recv = send.new_empty((recv_rows,) + tuple(send.shape[1:]))
    work = dist.all_to_all_single(recv, send, output_split_sizes=list(recv_counts),
                                  input_split_sizes=list(send_counts), group=group, async_op=async_op)
    return recv, work


class _ReceivedKV(torch.autograd.Function):
    """Attach received key/value blocks to autograd; backward returns their gradients to the owners.

    ``carrier`` passes through unchanged (as a view): it is a tensor the rank's output always depends
    on, so this node's backward (a collective) runs on every rank even where nothing was received.
    """

    @staticmethod
    def forward(ctx, carrier, k, v, recv, route):
        ctx.route = route
        ctx.k_shape = k.shape
        m, _, B, H, bs, D = recv.shape
        kr = recv[:, 0].permute(1, 2, 0, 3, 4).reshape(B, H, m * bs, D)
        vr = recv[:, 1].permute(1, 2, 0, 3, 4).reshape(B, H, m * bs, D)
        return carrier.view_as(carrier), kr, vr

    @staticmethod
    def backward(ctx, g_carrier, g_kr, g_vr):
        route = ctx.route
        if not route.kv_grad:
            return g_carrier, None, None, None, None
        B, H, L, D = ctx.k_shape
        m = sum(route.recv_counts)
        bs = route.block_size
        send = torch.stack([g_kr.reshape(B, H, m, bs, D), g_vr.reshape(B, H, m, bs, D)], 0)
        send = send.permute(3, 0, 1, 2, 4, 5).contiguous()
        back, work = _exchange(send, len(route.send_local), route.recv_counts, route.send_counts, route.group, True)
        _wait(work, route.timeout, "gradient return (backward all-to-all)", dist.get_rank(route.group))
        gk = g_kr.new_zeros(ctx.k_shape)
        gv = g_vr.new_zeros(ctx.k_shape)
        n = len(route.send_local)
        if n:
            bs = back.shape[4]
            nfull = L // bs
            idx = route.send_local.to(gk.device)
            gk[:, :, :nfull * bs].view(B, H, nfull, bs, D).index_add_(2, idx, back[:, 0].permute(1, 2, 0, 3, 4))
            gv[:, :, :nfull * bs].view(B, H, nfull, bs, D).index_add_(2, idx, back[:, 1].permute(1, 2, 0, 3, 4))
        if route.stats is not None:
            route.stats["bwd_sent_bytes"] = route.stats.get("bwd_sent_bytes", 0) + send.numel() * send.element_size()
            route.stats["bwd_recv_bytes"] = route.stats.get("bwd_recv_bytes", 0) + back.numel() * back.element_size()
        return g_carrier, gk, gv, None, None


# ---------------------------------------------------------------------------------------------- validation
def _digest(pattern, config, scale, overlap, compute) -> tuple[int, str]:
    """A 56-bit digest of what every rank must agree on, and a readable description of it."""
    if isinstance(pattern, str):
        what = f"{pattern} {dict(_masks.frozen_config(_masks.resolve(pattern, **config)[1]))}"
        payload = what.encode()
    else:
        t = (pattern.to_dense() if isinstance(pattern, _masks.BlockLayout) else pattern.detach().cpu()).contiguous()
        payload = t.to(torch.uint8).numpy().tobytes()
        kind = (f"BlockLayout(seq_len={pattern.seq_len})" if isinstance(pattern, _masks.BlockLayout)
                else "bool layout")
        what = f"{kind} {tuple(t.shape)} sha256:{hashlib.sha256(payload).hexdigest()[:8]}"
    name = compute if isinstance(compute, str) else getattr(compute, "__qualname__", type(compute).__name__)
    what += f", scale={scale}, overlap={overlap}, compute={name}"
    h = hashlib.sha256(payload + what.encode())
    return int.from_bytes(h.digest()[:7], "big"), what


def _local_checks(q, k, v, pattern, block_size, scale, overlap, compute, config):
    """Return (metadata values, error message or "", description) for this rank's input; never raises."""
    meta = dict.fromkeys(_META, 0)
    try:
        from . import _check_tensors  # the entry points' shared checks: types, 4-D, device, dtype, GQA, lengths

        _check_tensors(q, k, v, "reference")
        if q.shape[2] != k.shape[2]:
            raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree in the local length")
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
        if isinstance(pattern, str):
            if pattern not in _masks.NAMES:
                raise ValueError(f"unknown pattern {pattern!r}; expected one of {list(_masks.NAMES)}, a bool layout "
                                 "tensor or a BlockLayout")
            _masks.resolve(pattern, **config)
        elif isinstance(pattern, (torch.Tensor, _masks.BlockLayout)):
            if config:
                raise ValueError(f"config keywords {sorted(config)} only apply to a named pattern")
            if isinstance(pattern, torch.Tensor) and (pattern.dtype != torch.bool or pattern.dim() != 2):
                raise TypeError(f"a layout pattern must be a 2-D bool tensor, got {pattern.dtype}, {pattern.dim()} dims")
        else:
            raise TypeError(f"pattern must be a name, a bool layout tensor or a BlockLayout, got {type(pattern).__name__}")
        if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be None or a positive finite number, got {scale!r}")
        grad = torch.is_grad_enabled()
        if overlap not in (None, True, False):
            raise ValueError(f"overlap must be None, True or False, got {overlap!r}")
        digest, what = _digest(pattern, config, scale, overlap, compute)
        meta.update(batch=q.shape[0], q_heads=q.shape[1], kv_heads=k.shape[1], q_len=q.shape[2], k_len=k.shape[2],
                    head_dim=q.shape[3], dtype=_DTYPE_CODE[q.dtype], block_size=block_size,
                    device=1 + (q.device.type == "cuda"),
                    q_grad=int(grad and q.requires_grad), k_grad=int(grad and k.requires_grad),
                    v_grad=int(grad and v.requires_grad), digest=digest)
        return meta, "", what
    except (TypeError, ValueError) as e:
        return meta, f"{type(e).__name__}: {e}", ""


def _gather_texts(text: str, rows: list, field: str, device, group, timeout, what, rank, world) -> list:
    """All-gather one short string per rank (lengths already known from the metadata ``field``)."""
    n = max(r[field] for r in rows)
    data = text.encode()[:n]
    buf = torch.zeros(n, dtype=torch.uint8, device=device)
    if data:
        buf[:len(data)] = torch.tensor(list(data), dtype=torch.uint8)
    return [bytes(t.cpu().tolist()).rstrip(b"\0").decode(errors="replace")
            for t in _all_gather(buf, group, timeout, what, rank, world)]


def _all_gather(t: torch.Tensor, group, timeout: float, what: str, rank: int, world: int) -> list:
    out = [torch.empty_like(t) for _ in range(world)]
    work = dist.all_gather(out, t, group=group, async_op=True)
    _wait(work, timeout, what, rank)
    return out


def _agree(q, k, v, pattern, block_size, group, scale, overlap, compute, timeout, config):
    """Cheap collective validation: every rank returns the same metadata or raises the same error."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    meta, err, desc = _local_checks(q, k, v, pattern, block_size, scale, overlap, compute, config)
    err, desc = err[:2000], desc[:500]
    meta["error_len"] = len(err.encode()) + (1 if err else 0)
    meta["desc_len"] = len(desc.encode())
    device = (torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl"
              else torch.device("cpu"))
    vec = torch.tensor([meta[f] for f in _META], dtype=torch.int64, device=device)
    rows = [dict(zip(_META, t.tolist())) for t in _all_gather(vec, group, timeout, "metadata exchange", rank, world)]
    if max(r["error_len"] for r in rows):
        texts = _gather_texts(err, rows, "error_len", device, group, timeout, "error exchange", rank, world)
        bad = [(r, t) for r, t in enumerate(texts) if rows[r]["error_len"]]
        if len({t for _, t in bad}) == 1:
            where = "every rank" if len(bad) == world else f"rank(s) {[r for r, _ in bad]}"
            raise ValueError(f"context_parallel_attention: invalid input on {where}: {bad[0][1]}")
        raise ValueError("context_parallel_attention: invalid input: " + "; ".join(f"rank {r}: {t}" for r, t in bad))
    for field in ("batch", "q_heads", "kv_heads", "head_dim", "dtype", "device", "block_size", "q_grad", "k_grad",
                  "v_grad", "digest"):
        vals = [r[field] for r in rows]
        if len(set(vals)) > 1:
            what = {"digest": "the pattern, its config, scale, overlap or compute", "device": "device type",
                    "q_grad": "q.requires_grad",
                    "k_grad": "k.requires_grad", "v_grad": "v.requires_grad"}.get(field, field)
            if field == "digest":
                shown = _gather_texts(desc, rows, "desc_len", device, group, timeout, "pattern exchange", rank, world)
            elif field == "dtype":
                shown = [str(_DTYPES[x - 1]) for x in vals]
            elif field == "device":
                shown = ["cuda" if x == 2 else "cpu" for x in vals]
            elif field.endswith("_grad"):
                shown = [bool(x) for x in vals]
            else:
                shown = vals
            raise ValueError(f"context_parallel_attention: the ranks disagree on {what}: per rank {shown}")
    lengths = [r["q_len"] for r in rows]
    S = sum(lengths)
    try:
        sh = shard_bounds(S, world, block_size)
    except ValueError as e:
        raise ValueError(f"context_parallel_attention: local lengths {lengths} (global {S}) do not fit the default "
                         f"assignment: {e}") from None
    if list(sh.lengths) != lengths:
        raise ValueError(
            f"context_parallel_attention: local lengths {lengths} do not fit the default assignment of {S} tokens "
            f"over {world} ranks in blocks of {block_size}: rank r must hold tokens "
            f"{[list(b) for b in sh.bounds]} (ceil({sh.num_blocks}/{world}) = {sh.blocks_per_rank} whole blocks "
            f"per rank, the last rank the rest); see kernels.context_parallel.shard_bounds")
    return sh, rows[0], (vec.numel() * vec.element_size() * (world - 1))


# ---------------------------------------------------------------------------------------------- entry point
def context_parallel_attention(q, k, v, pattern, block_size=256, group=None, *, scale=None, compute="reference",
                               overlap=None, timeout=60.0, stats=None, **config):
    """Block-sparse causal attention of the sequence sharded over ``group`` (see the module docstring).

    Every rank of ``group`` calls this with its shard: q ``[B, Hq, L_r, D]``, k/v ``[B, Hkv, L_r, D]``,
    rank ``r`` holding tokens ``shard_bounds(S, W, block_size).bounds[r]`` of the global sequence.
    Returns the local output shard ``[B, Hq, L_r, D]`` (q's dtype), equal to the matching rows of
    ``kernels.sparse_attention`` on the whole sequence; differentiable in q, k, v (every rank must
    backprop through its output). ``stats``: a dict to fill with what was exchanged
    (``fwd_sent_bytes``/``fwd_recv_bytes`` and, after backward, ``bwd_sent_bytes``/``bwd_recv_bytes``;
    only the K/V payloads of the all-to-all, the metadata exchange is ``meta_bytes``).
    ``overlap``: True = local blocks computed while the remote ones are in flight, then an LSE merge
    (needs a compute with a differentiable LSE when gradients are needed); False = one exact call on
    the compacted keys; None (default) = True except for float64 inputs (the merge's float32 LSE
    would cost precision, ~1e-7 relative) and, when gradients are needed, for computes other than
    the reference.
    ``timeout`` (seconds) bounds every wait on another rank.
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("context_parallel_attention: torch.distributed is not initialised "
                           "(call torch.distributed.init_process_group on every rank first)")
    if group is not None and dist.get_rank(group) < 0:
        raise RuntimeError("context_parallel_attention: this process is not a member of the given group")
    compute_fn = _resolve_compute(compute)
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    t_start = time.perf_counter()
    sh, meta, meta_bytes = _agree(q, k, v, pattern, block_size, group, scale, overlap, compute, float(timeout),
                                  config)
    # From here on everything is a function of agreed data: an error is raised identically on every rank.
    lay = _masks.layout(pattern, sh.seq_len, block_size, **config)
    plan = exchange_plan(lay, world)
    b0, b1 = sh.block_ranges[rank]
    recv_blocks = plan.recv_blocks[rank]
    m = len(recv_blocks)
    B, Hkv, L, D = k.shape
    bs = block_size
    need_grad = bool(meta["q_grad"] or meta["k_grad"] or meta["v_grad"])
    kv_grad = bool(meta["k_grad"] or meta["v_grad"])
    if overlap is None:  # resolved from agreed metadata: the same on every rank
        overlap = q.dtype != torch.float64 and (not need_grad or compute_fn is reference_compute)

    # Pack the blocks the others need: [n_send, 2 (K, V), B, Hkv, bs, D], destinations in rank order.
    send_idx = plan.send_local[rank].to(k.device)
    nfull = L // bs
    with torch.no_grad():
        kb = k.detach()[:, :, :nfull * bs].reshape(B, Hkv, nfull, bs, D).index_select(2, send_idx)
        vb = v.detach()[:, :, :nfull * bs].reshape(B, Hkv, nfull, bs, D).index_select(2, send_idx)
        send = torch.stack([kb.permute(2, 0, 1, 3, 4), vb.permute(2, 0, 1, 3, 4)], 1).contiguous()
    communicate = plan.exchanged_blocks > 0  # the same on every rank
    if communicate:
        recv, work = _exchange(send, m, plan.send_counts[rank], plan.recv_counts[rank], group, True)
    else:
        recv, work = send.new_empty((0, 2, B, Hkv, bs, D)), None

    dense = lay.to_dense()
    rows = dense[b0:b1]
    local_layout = rows[:, b0:b1].to(q.device)
    remote_layout = torch.zeros(m + (b1 - b0), m, dtype=torch.bool)
    remote_layout[m:] = rows[:, recv_blocks]
    remote_layout = remote_layout.to(q.device)
    route = _Route(group, plan.send_local[rank], list(plan.send_counts[rank]), list(plan.recv_counts[rank]),
                   float(timeout), kv_grad, bs, stats)
    attach = _ReceivedKV.apply if (need_grad and communicate) else (
        lambda carrier, k_, v_, recv_, route_: _ReceivedKV.forward(_NoCtx(), carrier, k_, v_, recv_, route_))

    if overlap:
        # The local part runs while the remote blocks are in flight.
        out_l, lse_l = compute_fn(q, k, v, local_layout, bs, q_offset=0, scale=scale, return_lse=True)
        if work is not None:
            _wait(work, float(timeout), "key/value exchange (forward all-to-all)", rank)
        if need_grad and out_l.requires_grad and not lse_l.requires_grad:
            # The merge's gradient flows through the LSE: a compute that detaches it (the Triton kernels
            # mark it non-differentiable) would silently give wrong gradients. Same outcome on every rank.
            raise ValueError(f"context_parallel_attention: overlap=True needs gradients through the compute's LSE, "
                             f"which {getattr(compute_fn, '__name__', compute_fn)!s} does not provide on "
                             f"{q.device.type}; use overlap=False (one exact call, no LSE merge)")
        out_l, k_r, v_r = attach(out_l, k, v, recv, route)
        if m:
            out_r, lse_r = compute_fn(q, k_r, v_r, remote_layout, bs, q_offset=m * bs, scale=scale, return_lse=True)
            out, _ = merge_partials(out_l, lse_l, out_r, lse_r)
        else:
            out = out_l
    else:
        if work is not None:
            _wait(work, float(timeout), "key/value exchange (forward all-to-all)", rank)
        k_l, k_r, v_r = attach(k, k, v, recv, route)
        v_l = v
        layout_c = torch.zeros(m + (b1 - b0), m + (b1 - b0), dtype=torch.bool)
        layout_c[m:, :m] = rows[:, recv_blocks]
        layout_c[m:, m:] = rows[:, b0:b1]
        out = compute_fn(q, torch.cat([k_r, k_l], 2), torch.cat([v_r, v_l], 2), layout_c.to(q.device), bs,
                         q_offset=m * bs, scale=scale, return_lse=False)
    if stats is not None:
        stats.update(bwd_sent_bytes=0, bwd_recv_bytes=0)  # the backward adds its gradient return here
        stats.update(rank=rank, world_size=world, seq_len=sh.seq_len, block_range=(b0, b1), recv_blocks=m,
                     send_blocks=len(plan.send_local[rank]), recv_block_ids=recv_blocks.tolist(),
                     fwd_sent_bytes=send.numel() * send.element_size() if communicate else 0,
                     fwd_recv_bytes=recv.numel() * recv.element_size() if communicate else 0,
                     meta_bytes=meta_bytes, seconds=time.perf_counter() - t_start)
    return out


class _NoCtx:
    """Stand-in ctx to run ``_ReceivedKV.forward`` without recording a graph (no grad needed)."""


# ---------------------------------------------------------------------------------------------- ring (for comparison)
def ring_exchange(k: torch.Tensor, v: torch.Tensor, group=None, *, timeout: float = 60.0):
    """Pass every rank's K and V around the ring (W-1 hops, as ring attention does) and return the
    whole sequence's K and V plus the bytes this rank sent and received. Only for measuring what a
    ring exchange of all KV moves: no attention is computed."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    lengths = [int(t) for t in _all_gather(torch.tensor([k.shape[2]]), group, timeout, "ring lengths", rank, world)]
    cur = torch.stack([k.detach(), v.detach()], 0).contiguous()
    pieces = {rank: cur}
    sent = recvd = 0
    nxt, prv = (rank + 1) % world, (rank - 1) % world
    to_global = (lambda r: dist.get_global_rank(group, r)) if group is not None else (lambda r: r)
    for h in range(world - 1):
        src = (rank - h - 1) % world
        shape = list(cur.shape)
        shape[3] = lengths[src]
        buf = cur.new_empty(shape)
        ops = [dist.P2POp(dist.isend, cur, to_global(nxt), group), dist.P2POp(dist.irecv, buf, to_global(prv), group)]
        for w in dist.batch_isend_irecv(ops):
            _wait(w, timeout, "ring hop", rank)
        sent += cur.numel() * cur.element_size()
        recvd += buf.numel() * buf.element_size()
        pieces[src] = buf
        cur = buf
    full = torch.cat([pieces[r] for r in range(world)], 3)
    return full[0], full[1], dict(ring_sent_bytes=sent, ring_recv_bytes=recvd)


# ---------------------------------------------------------------------------------------------- multi-process helpers
def _rank_main(rank, world, init_file, out_dir, fn, args, pg_timeout, threads, final_barrier):
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=pg_timeout))
    try:
        dist.barrier()  # every pair connected before anyone can finish (a rank exiting early breaks the mesh)
        result = fn(rank, world, *args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
        if final_barrier:
            dist.barrier()  # nobody tears the group down while a peer still talks to it
    finally:
        dist.destroy_process_group()


def run_ranks(world_size: int, fn: Callable, args=(), *, timeout: float = 120.0, pg_timeout: float = 30.0,
              threads: int = 1, final_barrier: bool = True) -> list:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` spawned CPU gloo ranks; return the results.

    ``fn`` must be importable (a module-level function, not one defined in a notebook). The ranks
    meet through a ``file://`` store in a fresh temporary directory (no ports). After ``timeout``
    seconds the ranks are terminated and ``TimeoutError`` is raised, so a bug never hangs a caller;
    a rank's exception is re-raised with its traceback (``torch.multiprocessing.ProcessRaisedException``).
    ``final_barrier=False`` for an ``fn`` that leaves the group broken on purpose (a timeout test).
    """
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="cp_ranks_") as tmp:
        ctx = mp.start_processes(_rank_main, args=(world_size, os.path.join(tmp, "store"), tmp, fn, tuple(args),
                                                   pg_timeout, threads, final_barrier),
                                 nprocs=world_size, join=False, start_method="spawn")
        deadline = time.monotonic() + timeout
        try:
            while not ctx.join(timeout=max(0.1, min(1.0, deadline - time.monotonic()))):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"run_ranks: {world_size} ranks of {getattr(fn, '__name__', fn)} did not finish "
                                       f"within {timeout:g} s")
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.terminate()
                    p.join(5)
        return [torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=False) for r in range(world_size)]


def _global_inputs(case: dict):
    g = torch.Generator().manual_seed(case["seed"])
    dt = getattr(torch, case.get("dtype", "float64"))
    B, Hq, Hkv, S, D = case["batch"], case["q_heads"], case["kv_heads"], case["seq_len"], case["head_dim"]
    q, k, v, do = (torch.randn(B, h, S, D, generator=g, dtype=torch.float64).to(dt) for h in (Hq, Hkv, Hkv, Hq))
    return q, k, v, do


def measure_worker(rank: int, world: int, cases: list) -> list:
    """One rank of a measurement: for each case (a dict: pattern, config, seq_len, block_size, batch,
    q_heads, kv_heads, head_dim, dtype, seed, overlap, check, ring), run the sparse context-parallel
    attention forward and backward, record the bytes actually exchanged, and with ``check=True``
    compare this rank's output and q/k/v gradients with the single-process reference on the whole
    sequence (the matching slice; relative Frobenius errors ``err_*``); with ``ring=True`` also do a
    ring exchange of all KV for comparison."""
    rows = []
    for case in cases:
        q, k, v, do = _global_inputs(case)
        bs, cfg = case["block_size"], dict(case.get("config") or {})
        s, e = shard_bounds(case["seq_len"], world, bs).bounds[rank]
        ql, kl, vl = (t[:, :, s:e].clone().requires_grad_(True) for t in (q, k, v))
        stats = {}
        dist.barrier()
        t0 = time.perf_counter()
        out = context_parallel_attention(ql, kl, vl, case["pattern"], bs, overlap=case.get("overlap"),
                                         compute=case.get("compute", "reference"), stats=stats, **cfg)
        t_fwd = time.perf_counter() - t0
        (out * do[:, :, s:e]).sum().backward()
        t_fb = time.perf_counter() - t0
        row = dict(case, rank=rank, world_size=world, local_len=e - s, fwd_seconds=t_fwd, fwd_bwd_seconds=t_fb,
                   **{k_: stats.get(k_, 0) for k_ in ("fwd_sent_bytes", "fwd_recv_bytes", "bwd_sent_bytes",
                                                      "bwd_recv_bytes", "recv_blocks", "send_blocks", "meta_bytes")})
        if case.get("check", True):
            qr, kr, vr = (t.clone().requires_grad_(True) for t in (q, k, v))
            lay = _masks.layout(case["pattern"], case["seq_len"], bs, **cfg).to_dense()
            ref = reference_attention(qr, kr, vr, lay, bs, chunk_size=max(256, bs))
            (ref * do).sum().backward()

            def rel(a, b):
                a, b = a.detach().double(), b.detach().double()
                return float((a - b).norm() / b.norm().clamp_min(1e-300))

            row.update(err_out=rel(out, ref[:, :, s:e]), err_dq=rel(ql.grad, qr.grad[:, :, s:e]),
                       err_dk=rel(kl.grad, kr.grad[:, :, s:e]), err_dv=rel(vl.grad, vr.grad[:, :, s:e]))
        if case.get("ring", False):
            dist.barrier()
            t0 = time.perf_counter()
            kf, vf, ring = ring_exchange(k[:, :, s:e], v[:, :, s:e])
            row.update(ring, ring_seconds=time.perf_counter() - t0,
                       ring_ok=bool(torch.equal(kf, k) and torch.equal(vf, v)))
        rows.append(row)
    return rows


__all__ = ["COMPUTES", "ExchangePlan", "RankProfile", "Sharding", "block_bytes", "communication_volume",
           "context_parallel_attention", "exchange_plan", "measure_worker", "merge_partials", "rank_profile",
           "reference_compute", "ring_exchange", "run_ranks", "shard", "shard_bounds", "sparse_attention_compute",
           "volume_from_profiles"]
