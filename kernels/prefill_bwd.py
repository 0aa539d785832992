"""Triton backward of block-sparse causal attention: dQ, and dK/dV.

dQ: one program per query tile and query head, sweeping the same key blocks as
the forward (recomputing P from the saved base-2 LSE).
dK/dV: one program per key tile, key/value head and *work item*. A work item is
a key block with a chunk of at most ``chunk`` of the query blocks that attend
to it (the transposed layout), so the sink block, which every query block
attends to, is split over many programs instead of one serial loop. The
program loops over the query heads of its GQA group and the item's query
tiles, accumulating dK/dV in registers, then adds them into fp32 buffers
(atomically: a heavy key block has several items). Only the diagonal query
block (the causal boundary, and the sequence tail) is masked.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def _dota(a, b, acc, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, DQ, LSE, DELTA, KV_IDX, KV_CNT, KV_FULL,
                   s_qb, s_qh, s_qs, s_kb, s_kh, s_ks, s_vb, s_vh, s_vs, s_db, s_dh, s_ds,
                   s_idx, H_Q, GROUP, S, qk_scale, sm_scale,
                   BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   HEAD_DIM: tl.constexpr, IEEE: tl.constexpr, USE_TMA: tl.constexpr):
    # DO and DQ share q's layout strides (s_db.. are for DO; DQ is contiguous like Q's copy).
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H_Q
    h = pid_bh % H_Q
    hk = h // GROUP
    start_m = pid_m * BLOCK_M
    qb = start_m // BLOCK_SIZE
    TILES: tl.constexpr = BLOCK_SIZE // BLOCK_N
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < S
    q = tl.load(Q + b.to(tl.int64) * s_qb + h.to(tl.int64) * s_qh + offs_m[:, None].to(tl.int64) * s_qs + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + b.to(tl.int64) * s_db + h.to(tl.int64) * s_dh + offs_m[:, None].to(tl.int64) * s_ds + offs_d[None, :],
                 mask=row_ok[:, None], other=0.0)
    lse = tl.load(LSE + pid_bh.to(tl.int64) * S + offs_m, mask=row_ok, other=0.0)
    lse = tl.where(lse == float("-inf"), float("inf"), lse)  # empty rows: P = 0
    delta = tl.load(DELTA + pid_bh.to(tl.int64) * S + offs_m, mask=row_ok, other=0.0)
    k_base = K + b.to(tl.int64) * s_kb + hk.to(tl.int64) * s_kh
    v_base = V + b.to(tl.int64) * s_vb + hk.to(tl.int64) * s_vh
    if USE_TMA:
        k_desc = tl.make_tensor_descriptor(k_base, shape=[S, HEAD_DIM], strides=[s_ks, 1],
                                           block_shape=[BLOCK_N, HEAD_DIM])
        v_desc = tl.make_tensor_descriptor(v_base, shape=[S, HEAD_DIM], strides=[s_vs, 1],
                                           block_shape=[BLOCK_N, HEAD_DIM])

    count = tl.load(KV_CNT + qb)
    n_full = tl.load(KV_FULL + qb)  # full key blocks first, then the diagonal (partial) one
    idx_row = KV_IDX + qb * s_idx
    has_diag = count > n_full
    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)

    for it in range(0, n_full * TILES):
        kb = tl.load(idx_row + it // TILES)
        offs_k = kb * BLOCK_SIZE + (it % TILES) * BLOCK_N + offs_n
        if USE_TMA:
            kt = tl.trans(k_desc.load([kb * BLOCK_SIZE + (it % TILES) * BLOCK_N, 0]))
            vt = tl.trans(v_desc.load([kb * BLOCK_SIZE + (it % TILES) * BLOCK_N, 0]))
        else:
            kt = tl.load(k_base + offs_k[None, :].to(tl.int64) * s_ks + offs_d[:, None])
            vt = tl.load(v_base + offs_k[None, :].to(tl.int64) * s_vs + offs_d[:, None])
        p = tl.math.exp2(_dot(q, kt, IEEE) * qk_scale - lse[:, None])
        dp = _dot(do, vt, IEEE)
        ds = p * (dp - delta[:, None])
        dq = _dota(ds.to(kt.dtype), tl.trans(kt), dq, IEEE)

    if has_diag:
        diag_start = qb * BLOCK_SIZE
        n_diag = tl.cdiv(start_m + BLOCK_M - diag_start, BLOCK_N)
        for t in range(0, n_diag):
            offs_k = diag_start + t * BLOCK_N + offs_n
            kmask = offs_k[None, :] < S
            if USE_TMA:
                kt = tl.trans(k_desc.load([diag_start + t * BLOCK_N, 0]))
                vt = tl.trans(v_desc.load([diag_start + t * BLOCK_N, 0]))
            else:
                kt = tl.load(k_base + offs_k[None, :].to(tl.int64) * s_ks + offs_d[:, None], mask=kmask, other=0.0)
                vt = tl.load(v_base + offs_k[None, :].to(tl.int64) * s_vs + offs_d[:, None], mask=kmask, other=0.0)
            visible = (offs_m[:, None] >= offs_k[None, :]) & kmask & row_ok[:, None]
            p = tl.math.exp2(_dot(q, kt, IEEE) * qk_scale - lse[:, None])
            p = tl.where(visible, p, 0.0)
            dp = _dot(do, vt, IEEE)
            ds = p * (dp - delta[:, None])
            dq = _dota(ds.to(kt.dtype), tl.trans(kt), dq, IEEE)

    tl.store(DQ + pid_bh.to(tl.int64) * S * HEAD_DIM + offs_m[:, None].to(tl.int64) * HEAD_DIM + offs_d[None, :],
             (dq * sm_scale).to(DQ.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, DK, DV, LSE, DELTA, Q_LISTS, ITEMS,
                     s_qb, s_qh, s_qs, s_kb, s_kh, s_ks, s_vb, s_vh, s_vs, s_db, s_dh, s_ds,
                     H_Q, H_KV, GROUP, S, qk_scale, sm_scale,
                     BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     HEAD_DIM: tl.constexpr, IEEE: tl.constexpr, USE_TMA: tl.constexpr):
    TILES_N: tl.constexpr = BLOCK_SIZE // BLOCK_N
    TILES_M: tl.constexpr = BLOCK_SIZE // BLOCK_M
    pid = tl.program_id(0)
    pid_bh = tl.program_id(1)
    item = pid // TILES_N
    b = pid_bh // H_KV
    hk = pid_bh % H_KV
    kb = tl.load(ITEMS + item * 4)
    q_off = tl.load(ITEMS + item * 4 + 1)
    n_q = tl.load(ITEMS + item * 4 + 2)
    has_diag = tl.load(ITEMS + item * 4 + 3)
    start_n = kb * BLOCK_SIZE + (pid % TILES_N) * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_mm = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    col_ok = offs_n < S
    k = tl.load(K + b.to(tl.int64) * s_kb + hk.to(tl.int64) * s_kh + offs_n[:, None].to(tl.int64) * s_ks + offs_d[None, :],
                mask=col_ok[:, None], other=0.0)
    v = tl.load(V + b.to(tl.int64) * s_vb + hk.to(tl.int64) * s_vh + offs_n[:, None].to(tl.int64) * s_vs + offs_d[None, :],
                mask=col_ok[:, None], other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)

    for g in range(0, GROUP):
        h = hk * GROUP + g
        bh = b * H_Q + h
        q_base = Q + b.to(tl.int64) * s_qb + h.to(tl.int64) * s_qh
        do_base = DO + b.to(tl.int64) * s_db + h.to(tl.int64) * s_dh
        lse_base = LSE + bh.to(tl.int64) * S
        delta_base = DELTA + bh.to(tl.int64) * S
        if USE_TMA:
            q_desc = tl.make_tensor_descriptor(q_base, shape=[S, HEAD_DIM], strides=[s_qs, 1],
                                               block_shape=[BLOCK_M, HEAD_DIM])
            do_desc = tl.make_tensor_descriptor(do_base, shape=[S, HEAD_DIM], strides=[s_ds, 1],
                                                block_shape=[BLOCK_M, HEAD_DIM])
        # Query blocks strictly below the diagonal: no causal mask, only the sequence tail.
        for it in range(0, n_q * TILES_M):
            qb = tl.load(Q_LISTS + q_off + it // TILES_M)
            offs_m = qb * BLOCK_SIZE + (it % TILES_M) * BLOCK_M + offs_mm
            row_ok = offs_m < S
            if USE_TMA:
                q = q_desc.load([qb * BLOCK_SIZE + (it % TILES_M) * BLOCK_M, 0])
                do = do_desc.load([qb * BLOCK_SIZE + (it % TILES_M) * BLOCK_M, 0])
            else:
                q = tl.load(q_base + offs_m[:, None].to(tl.int64) * s_qs + offs_d[None, :], mask=row_ok[:, None],
                            other=0.0)
                do = tl.load(do_base + offs_m[:, None].to(tl.int64) * s_ds + offs_d[None, :], mask=row_ok[:, None],
                             other=0.0)
            lse = tl.load(lse_base + offs_m, mask=row_ok, other=float("inf"))
            delta = tl.load(delta_base + offs_m, mask=row_ok, other=0.0)
            pt = tl.math.exp2(_dot(k, tl.trans(q), IEEE) * qk_scale - lse[None, :])
            dv = _dota(pt.to(do.dtype), do, dv, IEEE)
            dpt = _dot(v, tl.trans(do), IEEE)
            dst = pt * (dpt - delta[None, :])
            dk = _dota(dst.to(q.dtype), q, dk, IEEE)
        # Diagonal query block: only the query tiles at or below this key tile, causally masked.
        if has_diag:
            first_m = (start_n - kb * BLOCK_SIZE) // BLOCK_M
            for mt in range(first_m, TILES_M):
                offs_m = kb * BLOCK_SIZE + mt * BLOCK_M + offs_mm
                row_ok = offs_m < S
                if USE_TMA:
                    q = q_desc.load([kb * BLOCK_SIZE + mt * BLOCK_M, 0])
                    do = do_desc.load([kb * BLOCK_SIZE + mt * BLOCK_M, 0])
                else:
                    q = tl.load(q_base + offs_m[:, None].to(tl.int64) * s_qs + offs_d[None, :], mask=row_ok[:, None],
                                other=0.0)
                    do = tl.load(do_base + offs_m[:, None].to(tl.int64) * s_ds + offs_d[None, :],
                                 mask=row_ok[:, None], other=0.0)
                lse = tl.load(lse_base + offs_m, mask=row_ok, other=float("inf"))
                delta = tl.load(delta_base + offs_m, mask=row_ok, other=0.0)
                visible = (offs_m[None, :] >= offs_n[:, None]) & row_ok[None, :] & col_ok[:, None]
                pt = tl.math.exp2(_dot(k, tl.trans(q), IEEE) * qk_scale - lse[None, :])
                pt = tl.where(visible, pt, 0.0)
                dv = _dota(pt.to(do.dtype), do, dv, IEEE)
                dpt = _dot(v, tl.trans(do), IEEE)
                dst = pt * (dpt - delta[None, :])
                dk = _dota(dst.to(q.dtype), q, dk, IEEE)

    out_off = pid_bh.to(tl.int64) * S * HEAD_DIM + offs_n[:, None].to(tl.int64) * HEAD_DIM + offs_d[None, :]
    tl.atomic_add(DK + out_off, dk * sm_scale, mask=col_ok[:, None])
    tl.atomic_add(DV + out_off, dv, mask=col_ok[:, None])
