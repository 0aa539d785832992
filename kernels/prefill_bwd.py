"""Triton backward of block-sparse causal attention: dQ, and dK/dV.

Both recompute the probabilities from the forward's saved base-2 LSE
(``kernels._jit.probs``) instead of storing them, and both split their tiles as
the forward does: full blocks run an unmasked step, and only the partial block,
the diagonal (the causal boundary, and the sequence tail), runs the same step
with ``MASKED=True``.

dQ: one program per query tile and query head, sweeping the same key blocks as
the forward; ``_dq_tile`` is one key tile's contribution.

dK/dV: one program per key tile, key/value head and *work item*. A work item is
a key block with a chunk of at most ``chunk`` of the query blocks that attend
to it (the transposed layout, ``BlockLayout.work_items``), so the sink block,
which every query block attends to, is split over many programs instead of one
serial loop. The program loops over the query heads of its GQA group and the
item's query tiles (``_dkdv_tile`` is one query tile's contribution),
accumulating dK/dV in registers, then adds them into fp32 buffers (atomically:
a heavy key block has several items).
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._jit import key_blocks, load_tile, probs, query_tile, tile_source


@triton.jit
def _dq_tile(dq, q, do, lse, delta, k_src, v_src, start_n, offs_n, offs_m, row_ok, offs_d, s_ks, s_vs, S, qk_scale,
             MASKED: tl.constexpr, USE_TMA: tl.constexpr, PRECISION: tl.constexpr):
    """dQ += dS @ K for the keys ``offs_n`` (dS = P * (dO @ V^T - delta)). ``MASKED``: keys past the
    sequence end read as 0, and P is zeroed outside the causal mask (and on rows past the end)."""
    if MASKED:
        kmask = offs_n[None, :] < S
    else:
        kmask = None
    kt = load_tile(k_src, start_n, offs_n, offs_d, s_ks, mask=kmask, MASKED=MASKED, USE_TMA=USE_TMA, TRANSPOSED=True)
    vt = load_tile(v_src, start_n, offs_n, offs_d, s_vs, mask=kmask, MASKED=MASKED, USE_TMA=USE_TMA, TRANSPOSED=True)
    if MASKED:
        visible = (offs_m[:, None] >= offs_n[None, :]) & kmask & row_ok[:, None]
    else:
        visible = None
    p = probs(q, kt, lse, qk_scale, visible, TRANSPOSED=False, MASKED=MASKED, PRECISION=PRECISION)
    dp = tl.dot(do, vt, input_precision=PRECISION)
    ds = p * (dp - delta[:, None])
    return tl.dot(ds.to(kt.dtype), tl.trans(kt), dq, input_precision=PRECISION)


@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, DQ, LSE, DELTA, KV_IDX, KV_CNT, KV_FULL,
                   s_qb, s_qh, s_qs, s_kb, s_kh, s_ks, s_vb, s_vh, s_vs, s_db, s_dh, s_ds,
                   s_idx, H_Q, GROUP, S, qk_scale, sm_scale,
                   BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr, USE_TMA: tl.constexpr):
    # DO has its own strides (s_db..); DQ is written contiguous [B, Hq, S, D].
    pid_bh, b, h, hk, qb, start_m, offs_m = query_tile(H_Q, GROUP, BLOCK_M, BLOCK_SIZE)
    TILES: tl.constexpr = BLOCK_SIZE // BLOCK_N  # tiles per key block
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < S
    q = load_tile(Q + b.to(tl.int64) * s_qb + h.to(tl.int64) * s_qh, start_m, offs_m, offs_d, s_qs,
                  mask=row_ok[:, None], MASKED=True, USE_TMA=False, TRANSPOSED=False)
    do = load_tile(DO + b.to(tl.int64) * s_db + h.to(tl.int64) * s_dh, start_m, offs_m, offs_d, s_ds,
                   mask=row_ok[:, None], MASKED=True, USE_TMA=False, TRANSPOSED=False)
    lse = tl.load(LSE + pid_bh.to(tl.int64) * S + offs_m, mask=row_ok, other=0.0)
    lse = tl.where(lse == float("-inf"), float("inf"), lse)  # empty rows: P = 0
    delta = tl.load(DELTA + pid_bh.to(tl.int64) * S + offs_m, mask=row_ok, other=0.0)
    k_base = K + b.to(tl.int64) * s_kb + hk.to(tl.int64) * s_kh
    v_base = V + b.to(tl.int64) * s_vb + hk.to(tl.int64) * s_vh
    k_src = tile_source(k_base, S, s_ks, BLOCK_N, HEAD_DIM, USE_TMA)
    v_src = tile_source(v_base, S, s_vs, BLOCK_N, HEAD_DIM, USE_TMA)

    idx_row, n_full, has_diag = key_blocks(KV_IDX, KV_CNT, KV_FULL, qb, s_idx)  # full ones, then the diagonal
    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)

    # Full key blocks: no mask.
    for it in range(0, n_full * TILES):
        kb = tl.load(idx_row + it // TILES)
        start_n = kb * BLOCK_SIZE + (it % TILES) * BLOCK_N
        dq = _dq_tile(dq, q, do, lse, delta, k_src, v_src, start_n, start_n + offs_n, offs_m, row_ok, offs_d, s_ks, s_vs,
                      S, qk_scale, MASKED=False, USE_TMA=USE_TMA, PRECISION=PRECISION)

    # Diagonal block: causal and sequence-tail mask; its tiles right of this query tile are skipped.
    if has_diag:
        diag_start = qb * BLOCK_SIZE
        n_diag = tl.cdiv(start_m + BLOCK_M - diag_start, BLOCK_N)
        for t in range(0, n_diag):
            start_n = diag_start + t * BLOCK_N
            dq = _dq_tile(dq, q, do, lse, delta, k_src, v_src, start_n, start_n + offs_n, offs_m, row_ok, offs_d, s_ks,
                          s_vs, S, qk_scale, MASKED=True, USE_TMA=USE_TMA, PRECISION=PRECISION)

    tl.store(DQ + pid_bh.to(tl.int64) * S * HEAD_DIM + offs_m[:, None].to(tl.int64) * HEAD_DIM + offs_d[None, :],
             (dq * sm_scale).to(DQ.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _dkdv_tile(dk, dv, k, v, q_src, do_src, lse_base, delta_base, start_m, offs_m, offs_n, offs_d, s_qs, s_ds, S,
               col_ok, qk_scale, MASKED: tl.constexpr, USE_TMA: tl.constexpr, PRECISION: tl.constexpr):
    """dV += P^T @ dO and dK += dS^T @ Q for the queries ``offs_m``, transposed so that the key tile
    stays in registers. Query rows past the sequence end (the last block's tail) always read as
    0 with LSE +inf (P = 0); ``MASKED`` adds the causal mask of the diagonal block."""
    row_ok = offs_m < S
    q = load_tile(q_src, start_m, offs_m, offs_d, s_qs, mask=row_ok[:, None], MASKED=True, USE_TMA=USE_TMA,
                  TRANSPOSED=False)
    do = load_tile(do_src, start_m, offs_m, offs_d, s_ds, mask=row_ok[:, None], MASKED=True, USE_TMA=USE_TMA,
                   TRANSPOSED=False)
    lse = tl.load(lse_base + offs_m, mask=row_ok, other=float("inf"))
    delta = tl.load(delta_base + offs_m, mask=row_ok, other=0.0)
    if MASKED:
        visible = (offs_m[None, :] >= offs_n[:, None]) & row_ok[None, :] & col_ok[:, None]
    else:
        visible = None
    pt = probs(k, tl.trans(q), lse, qk_scale, visible, TRANSPOSED=True, MASKED=MASKED, PRECISION=PRECISION)
    dv = tl.dot(pt.to(do.dtype), do, dv, input_precision=PRECISION)
    dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
    dst = pt * (dpt - delta[None, :])
    dk = tl.dot(dst.to(q.dtype), q, dk, input_precision=PRECISION)
    return dk, dv


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, DK, DV, LSE, DELTA, Q_LISTS, ITEMS,
                     s_qb, s_qh, s_qs, s_kb, s_kh, s_ks, s_vb, s_vh, s_vs, s_db, s_dh, s_ds,
                     H_Q, H_KV, GROUP, S, qk_scale, sm_scale,
                     BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr, USE_TMA: tl.constexpr):
    TILES_N: tl.constexpr = BLOCK_SIZE // BLOCK_N
    TILES_M: tl.constexpr = BLOCK_SIZE // BLOCK_M
    pid = tl.program_id(0)
    pid_bh = tl.program_id(1)
    item = pid // TILES_N
    b = pid_bh // H_KV
    hk = pid_bh % H_KV
    # Work item: (key block, offset into Q_LISTS, number of full query blocks, has the diagonal).
    kb = tl.load(ITEMS + item * 4)
    q_off = tl.load(ITEMS + item * 4 + 1)
    n_q = tl.load(ITEMS + item * 4 + 2)
    has_diag = tl.load(ITEMS + item * 4 + 3)
    start_n = kb * BLOCK_SIZE + (pid % TILES_N) * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_mm = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    col_ok = offs_n < S
    k = load_tile(K + b.to(tl.int64) * s_kb + hk.to(tl.int64) * s_kh, start_n, offs_n, offs_d, s_ks,
                  mask=col_ok[:, None], MASKED=True, USE_TMA=False, TRANSPOSED=False)
    v = load_tile(V + b.to(tl.int64) * s_vb + hk.to(tl.int64) * s_vh, start_n, offs_n, offs_d, s_vs,
                  mask=col_ok[:, None], MASKED=True, USE_TMA=False, TRANSPOSED=False)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)

    for g in range(0, GROUP):
        h = hk * GROUP + g
        bh = b * H_Q + h
        q_base = Q + b.to(tl.int64) * s_qb + h.to(tl.int64) * s_qh
        do_base = DO + b.to(tl.int64) * s_db + h.to(tl.int64) * s_dh
        lse_base = LSE + bh.to(tl.int64) * S
        delta_base = DELTA + bh.to(tl.int64) * S
        q_src = tile_source(q_base, S, s_qs, BLOCK_M, HEAD_DIM, USE_TMA)  # once per head, not per tile
        do_src = tile_source(do_base, S, s_ds, BLOCK_M, HEAD_DIM, USE_TMA)
        # Query blocks strictly below the diagonal: no causal mask.
        for it in range(0, n_q * TILES_M):
            qb = tl.load(Q_LISTS + q_off + it // TILES_M)
            start_m = qb * BLOCK_SIZE + (it % TILES_M) * BLOCK_M
            dk, dv = _dkdv_tile(dk, dv, k, v, q_src, do_src, lse_base, delta_base, start_m, start_m + offs_mm, offs_n,
                                offs_d, s_qs, s_ds, S, col_ok, qk_scale, MASKED=False, USE_TMA=USE_TMA,
                                PRECISION=PRECISION)
        # Diagonal query block: only the query tiles at or below this key tile, causally masked.
        if has_diag:
            first_m = (start_n - kb * BLOCK_SIZE) // BLOCK_M
            for mt in range(first_m, TILES_M):
                start_m = kb * BLOCK_SIZE + mt * BLOCK_M
                dk, dv = _dkdv_tile(dk, dv, k, v, q_src, do_src, lse_base, delta_base, start_m, start_m + offs_mm,
                                    offs_n, offs_d, s_qs, s_ds, S, col_ok, qk_scale, MASKED=True, USE_TMA=USE_TMA,
                                    PRECISION=PRECISION)

    out_off = pid_bh.to(tl.int64) * S * HEAD_DIM + offs_n[:, None].to(tl.int64) * HEAD_DIM + offs_d[None, :]
    tl.atomic_add(DK + out_off, dk * sm_scale, mask=col_ok[:, None])
    tl.atomic_add(DV + out_off, dv, mask=col_ok[:, None])
