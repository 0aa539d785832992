"""Triton decode: a few new tokens against a long KV cache, reading only selected blocks.

The new tokens are the newest ``T`` positions of the cache. The union of key
blocks their layout rows select is split evenly (in ``BLOCK_N`` tiles) over
``num_splits`` programs per key/value head; each program packs all query heads
of the GQA group times the ``T`` tokens into the rows of one tile (one K/V read
serves the whole group), runs the forward's online-softmax step
(``kernels._jit.attend_tile``, masked: a row sees a key iff its block is
allowed for that token and the key is not after the token), and writes a
partial softmax (normalised output and base-2 LSE). A second small kernel
merges the splits. Time therefore follows the number of selected blocks, not
the context length.

Fused variant (tile setting ``FUSED=1``, issue 11): at batch 1 a call is a few
microseconds, mostly the launch latency of the two kernels, so the merge moves
into the split kernel and a call is one launch. After writing its partial, each
split program adds 1 to an int32 counter of its (batch, key/value head)
(``tl.debug_barrier()`` first, so all its threads' stores are issued; then
``tl.atomic_add(sem="acq_rel", scope="gpu")``, whose release publishes them);
the program that reads ``NUM_SPLITS - 1`` is the last, merges that head's rows
(the merge kernel's arithmetic, ``_merge_row``, loading through L2 with ".cg")
and sets the counter back to 0 for the next call or graph replay. The counters
are persistent zeroed buffers (``_counters``): one per (device, stream) for
eager calls and one per device for CUDA-graph captures, made by eager calls
only; a call under capture with no big-enough buffer (no eager call before it)
falls back to the unfused two launches. The interpreter runs the programs one
after another, so there the last split program merges.

Programmatic dependent launch (tile setting ``PDL``, issue 11; Hopper and later, ignored elsewhere):
with ``PDL >= 1`` the merge kernel is launched while the split kernel still runs (its programs are
placed once every split program has started, ``gdc_launch_dependents``) and waits in ``gdc_wait``,
which returns when the split grid has finished and its stores are visible, so the merge's launch
latency hides behind the split kernel. ``PDL = 2`` also launches the split kernel so, waiting
(``gdc_wait``) before its first read for whatever kernel ran before it (the model's cache write, say).

Two entry points, one launcher (``_launch``) and one tile setting
(``kernels.tiles``, kernel ``"decode"``):

* ``triton_sparse_decode`` (``kernels.sparse_decode``): the newest token is the cache's
  last slot; the key blocks come from ``BlockLayout.decode_plan`` on the host.
* ``decode_at_position``: one token whose position is read from a device tensor, with a
  fixed-length key-block list (``BlockLayout.decode_rows``), so the launch does not depend on
  the position and one CUDA-graph capture serves every decoding step (a static KV cache
  whose slots past the position are ignored).
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from ._jit import LOG2E, attend_tile, dot_precision, finish_rows
from .plan import empty
from .tiles import check_overrides, tiles_for


@triton.jit
def _merge_row(OP, LP, O, pid_bh, r, s_ob, s_oh, s_os, H_KV, GROUP, T, NUM_SPLITS,
               BLOCK_H: tl.constexpr, HEAD_DIM: tl.constexpr, SPLITS_P2: tl.constexpr, CACHE: tl.constexpr):
    """Merge the ``NUM_SPLITS`` partials of row ``r`` of key/value head ``pid_bh`` into its output row.

    All splits are loaded at once, one ``[SPLITS_P2, HEAD_DIM]`` tile (no serial chain of loads), and
    weighted by ``2^(lse - max lse)``. ``CACHE``: the loads' ``cache_modifier`` ("" as a plain load;
    the fused kernel's ".cg" reads at L2, past any L1 line of this SM that another program's partial
    may have made stale).
    """
    b = pid_bh // H_KV
    hk = pid_bh % H_KV
    sp = tl.arange(0, SPLITS_P2)
    offs_d = tl.arange(0, HEAD_DIM)
    base = (pid_bh * NUM_SPLITS + sp).to(tl.int64) * BLOCK_H + r
    ok = sp < NUM_SPLITS
    lse = tl.load(LP + base, mask=ok, other=float("-inf"), cache_modifier=CACHE)
    o = tl.load(OP + base[:, None] * HEAD_DIM + offs_d[None, :], mask=ok[:, None], other=0.0, cache_modifier=CACHE)
    m = tl.max(lse, 0)
    m = tl.where(m == float("-inf"), 0.0, m)
    w = tl.math.exp2(lse - m)
    l = tl.sum(w, 0)
    out = tl.sum(w[:, None] * o, 0) / tl.where(l > 0.0, l, 1.0)
    h = hk * GROUP + r // T
    t = r % T
    tl.store(O + b.to(tl.int64) * s_ob + h.to(tl.int64) * s_oh + t * s_os + offs_d, out.to(O.dtype.element_ty))


@triton.jit
def _decode_split_kernel(Q, K, V, OP, LP, BLOCKS, ALLOWED, POS,
                         s_qb, s_qh, s_qs, s_kb, s_kh, s_ks, s_vb, s_vh, s_vs,
                         H_Q, H_KV, GROUP, T, S, U, NUM_SPLITS, qk_scale, O, COUNTERS, s_ob, s_oh, s_os,
                         BLOCK_SIZE: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,
                         HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr, POS_IN_MEMORY: tl.constexpr,
                         FUSED: tl.constexpr, SPLITS_P2: tl.constexpr, PDL: tl.constexpr = 0):
    TILES: tl.constexpr = BLOCK_SIZE // BLOCK_N
    if PDL >= 2:  # launched early: the kernel before this one may still be writing q, the cache or POS
        gdc_wait()
    if PDL >= 1:  # let the merge kernel be placed now; it waits (gdc_wait) for this whole grid to finish
        gdc_launch_dependents()
    pid_bh = tl.program_id(0)
    split = tl.program_id(1)
    b = pid_bh // H_KV
    hk = pid_bh % H_KV
    # Row r of the tile is query head hk * GROUP + r // T at new token r % T.
    rows = tl.arange(0, BLOCK_H)
    row_ok = rows < GROUP * T
    g = rows // T
    t = rows % T
    h = hk * GROUP + g
    # Position of the newest token: the cache's end, or (graph replay) a device scalar that
    # changes between replays while the launch stays the same; cache slots after it are ignored.
    if POS_IN_MEMORY:
        last = tl.minimum(tl.load(POS), S - 1)
    else:
        last = S - 1
    pos = last - (T - 1) + t
    offs_d = tl.arange(0, HEAD_DIM)
    offs_n = tl.arange(0, BLOCK_N)
    q = tl.load(Q + b.to(tl.int64) * s_qb + h[:, None].to(tl.int64) * s_qh + t[:, None] * s_qs + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)
    k_base = K + b.to(tl.int64) * s_kb + hk.to(tl.int64) * s_kh
    v_base = V + b.to(tl.int64) * s_vb + hk.to(tl.int64) * s_vh

    # This program's share of the U selected blocks' tiles.
    n_tiles = U * TILES
    per = tl.cdiv(n_tiles, NUM_SPLITS)
    lo = split * per
    hi = tl.minimum(lo + per, n_tiles)
    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, HEAD_DIM], tl.float32)
    for it in range(lo, hi):
        j = it // TILES
        kb = tl.load(BLOCKS + j)
        start_n = kb * BLOCK_SIZE + (it % TILES) * BLOCK_N
        # Rows (tokens) whose layout row does not select block j see none of it.
        allowed = tl.load(ALLOWED + t * U + j, mask=row_ok, other=0) != 0
        m_i, l_i, acc = attend_tile(q, k_base, v_base, start_n, start_n + offs_n, offs_d, s_ks, s_vs, pos, last + 1,
                                    allowed, m_i, l_i, acc, qk_scale, MASKED=True, USE_TMA=False, PRECISION=PRECISION)
    out, lse = finish_rows(acc, m_i, l_i)
    base = (pid_bh * NUM_SPLITS + split).to(tl.int64) * BLOCK_H
    tl.store(OP + (base + rows[:, None]) * HEAD_DIM + offs_d[None, :], out)
    tl.store(LP + base + rows, lse)
    if FUSED:
        # The last of the NUM_SPLITS programs of this key/value head to finish merges its GROUP * T rows.
        # The barrier: every thread's partial stores are issued before the atomic (made by one thread);
        # the atomic's release at GPU scope publishes them, and the last program's acquire sees them all.
        tl.debug_barrier()
        done = tl.atomic_add(COUNTERS + pid_bh, 1, sem="acq_rel", scope="gpu")
        if done == NUM_SPLITS - 1:
            for r in range(0, GROUP * T):  # one row at a time: a [SPLITS_P2, HEAD_DIM] tile, as the merge kernel
                _merge_row(OP, LP, O, pid_bh, r, s_ob, s_oh, s_os, H_KV, GROUP, T, NUM_SPLITS,
                           BLOCK_H=BLOCK_H, HEAD_DIM=HEAD_DIM, SPLITS_P2=SPLITS_P2, CACHE=".cg")
            # Every program of this head has counted: zero the counter for the next launch (or graph replay).
            tl.store(COUNTERS + pid_bh, 0)


@triton.jit
def _decode_merge_kernel(OP, LP, O, s_ob, s_oh, s_os, H_KV, GROUP, T, NUM_SPLITS,
                         BLOCK_H: tl.constexpr, HEAD_DIM: tl.constexpr, SPLITS_P2: tl.constexpr,
                         PDL: tl.constexpr = 0):
    # One program per output row. Launched early (PDL): wait until every split program's partials are written.
    if PDL >= 1:
        gdc_wait()
    _merge_row(OP, LP, O, tl.program_id(0), tl.program_id(1), s_ob, s_oh, s_os, H_KV, GROUP, T, NUM_SPLITS,
               BLOCK_H=BLOCK_H, HEAD_DIM=HEAD_DIM, SPLITS_P2=SPLITS_P2, CACHE="")


@functools.lru_cache(maxsize=8)
def _pdl_capable(device) -> bool:
    """Programmatic dependent launch exists on Hopper (compute capability 9) and later GPUs; not in the interpreter."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9


@functools.lru_cache(maxsize=8)
def _sm_count(device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 2


#: Fused-decode completion counters (``FUSED=1``), int32 and zero between launches: one per (batch, key/value
#: head) of a launch. Keyed by (device, stream handle) for eager calls (two streams never share counters), and
#: by (device, "graph") for calls under CUDA-graph capture; ``None`` stands for the stream on CPU.
_COUNTERS: dict = {}
#: Every counter buffer ever handed out: a captured graph keeps the raw address of the one it was captured
#: with, so a buffer replaced by a bigger one must stay allocated (a few bytes each).
_KEPT: list = []


def _counters(device, n: int):
    """``n`` zeroed int32 completion counters for a fused launch on the current stream, or None (unfused).

    Eager calls (and the interpreter on CPU) get their stream's buffer, made or grown here with
    ``torch.zeros``. The same call also makes sure the device's graph buffer has ``n`` entries: under
    CUDA-graph capture nothing may be allocated (it would come from the graph's private pool, and its
    zero-fill would become a node replayed with the graph), so a captured launch uses the graph buffer
    as the eager calls before the capture left it, or, if it is missing or too small, returns None and
    the launch falls back to the unfused split + merge. The usual warm-up before a capture, on any
    stream, is enough (``triton.testing.do_bench_cudagraph`` and ``lib.latency`` warm up on a side
    stream and capture on torch's capture stream: a per-stream buffer would never be found there).
    Every graph captured with a fused decode shares the graph buffer: such graphs must not replay
    concurrently on different streams.
    """
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        buf = _COUNTERS.get((device, "graph"))
        return buf if buf is not None and buf.numel() >= n else None
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else None
    keys = [(device, stream)] + ([(device, "graph")] if device.type == "cuda" else [])
    for key in keys:
        buf = _COUNTERS.get(key)
        if buf is None or buf.numel() < n:
            size = max(n, 64, 0 if buf is None else 2 * buf.numel())
            _COUNTERS[key] = torch.zeros(size, dtype=torch.int32, device=device)
            _KEPT.append(_COUNTERS[key])
    return _COUNTERS[keys[0]]


def _launch(q, k, v, blocks, allowed, pos, num_blocks, block_size, scale, kernel_config):
    """Split + merge launch shared by both entry points (one fused launch with the tile setting ``FUSED=1``).

    ``blocks`` int ``[num_blocks]`` key-block indices; ``allowed`` int8 ``[T, num_blocks]`` (token t may
    use ``blocks[u]``); ``pos`` None (the newest token is the cache's last slot) or a device int tensor
    ``[1]`` read by the kernel. Nothing here reads device memory, so the launch is graph-capturable.
    """
    B, Hq, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    group = Hq // Hkv
    cfg = tiles_for("decode", D, q.dtype, block_size, check_overrides(kernel_config).get("decode"))
    block_n = cfg.kwargs["BLOCK_N"]
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    n_tiles = num_blocks * (block_size // block_n)
    splits = cfg.kwargs["NUM_SPLITS"] or triton.cdiv(2 * _sm_count(q.device), B * Hkv)  # auto: ~2 waves
    splits = max(1, min(splits, n_tiles))
    block_h = max(16, triton.next_power_of_2(group * T))  # rows of a tile: >= 16 for tl.dot
    splits_p2 = max(2, triton.next_power_of_2(splits))
    counters = _counters(q.device, B * Hkv) if cfg.kwargs.get("FUSED", 0) else None
    op = empty(B * Hkv * splits * block_h * D, device=q.device, dtype=torch.float32)
    lp = empty(B * Hkv * splits * block_h, device=q.device, dtype=torch.float32)
    out = empty(*q.shape, device=q.device, dtype=q.dtype)
    sm_scale = D ** -0.5 if scale is None else float(scale)
    fused = counters is not None
    pdl = cfg.kwargs.get("PDL", 0) if _pdl_capable(q.device) else 0
    launch = dict(launch_pdl=True) if pdl >= 2 else {}  # a Triton launch option: only where it is used
    _decode_split_kernel[(B * Hkv, splits)](
        q, k, v, op, lp, blocks, allowed, blocks if pos is None else pos,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        Hq, Hkv, group, T, S, num_blocks, splits, sm_scale * LOG2E,
        out, counters if fused else blocks, out.stride(0), out.stride(1), out.stride(2),
        BLOCK_SIZE=block_size, BLOCK_H=block_h, BLOCK_N=block_n, HEAD_DIM=D, PRECISION=dot_precision(q.dtype),
        POS_IN_MEMORY=pos is not None, FUSED=fused, SPLITS_P2=splits_p2 if fused else 2,
        PDL=0 if fused and pdl < 2 else pdl, num_warps=cfg.num_warps, num_stages=cfg.num_stages, **launch)
    if not fused:
        _decode_merge_kernel[(B * Hkv, group * T)](op, lp, out, out.stride(0), out.stride(1), out.stride(2), Hkv,
                                                   group, T, splits, BLOCK_H=block_h, HEAD_DIM=D,
                                                   SPLITS_P2=splits_p2, PDL=min(pdl, 1), num_warps=4,
                                                   **(dict(launch_pdl=True) if pdl else {}))
    return out


def triton_sparse_decode(q, k, v, layout, *, scale=None, kernel_config=None):
    """Triton path of ``kernels.sparse_decode`` (inputs already validated; ``layout`` a ``BlockLayout``)."""
    plan = layout.decode_plan(q.shape[2], q.device)
    return _launch(q, k, v, plan.blocks, plan.allowed, None, plan.num_blocks, layout.block_size, scale, kernel_config)


def decode_at_position(q, k, v, blocks, valid, pos, block_size, *, scale=None, kernel_config=None):
    """One new token per sequence at position ``pos`` (a device int tensor ``[1]``, shared by the batch).

    q ``[B, Hq, 1, D]``; k, v ``[B, Hkv, S, D]``: a static cache whose slots past ``pos`` are ignored;
    ``blocks`` int ``[M]`` key-block indices and ``valid`` bool ``[M]`` (padding entries False), both
    on the device with a fixed ``M`` (``BlockLayout.decode_rows``), so the launch is the same at every
    position (CUDA-graph safe). ``kernel_config``: as for ``kernels.sparse_decode`` (its ``"decode"``
    entry). Returns ``[B, Hq, 1, D]`` in q's dtype.
    """
    if q.shape[2] != 1:
        raise ValueError(f"decode_at_position takes one query token per sequence, got {q.shape[2]}")
    if blocks.dim() != 1 or valid.shape != blocks.shape:
        raise ValueError(f"blocks and valid must be 1-D of equal length, got {tuple(blocks.shape)} and {tuple(valid.shape)}")
    # A bool mask is read as int8 in place (same bytes): no conversion kernel per layer and step.
    allowed = (valid.view(torch.int8) if valid.dtype == torch.bool else valid.to(torch.int8)).reshape(1, -1)
    return _launch(q, k, v, blocks, allowed, pos, blocks.numel(), block_size, scale, kernel_config)
