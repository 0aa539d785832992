"""Triton forward of block-sparse causal attention (FlashAttention-2 style).

One program = one tile of ``BLOCK_M`` query rows of one query head. Its mask
block ``qb`` lists its key blocks (ascending); each ``block_size`` key block is
swept in ``BLOCK_N`` tiles, so mask blocks and tiles are independent. Blocks
strictly left of the diagonal are complete and causally visible: they run
unmasked in one flat (pipelinable) loop. Only the diagonal block pays for the
causal / sequence-tail mask. Softmax runs in base 2 with the scale folded in.
``USE_TMA`` (Hopper) loads K/V tiles through tensor descriptors (bulk copy
engine; rows past the sequence end come back as zeros).
"""
from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _dot(a, b, acc, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def _load_kv(k_base, v_base, k_desc, v_desc, offs_k, offs_d, s_ks, s_vs, start_n, S,
             MASKED: tl.constexpr, USE_TMA: tl.constexpr):
    """K^T [D, BLOCK_N] and V [BLOCK_N, D] for keys ``offs_k`` (= start_n + arange)."""
    if USE_TMA:
        kt = tl.trans(k_desc.load([start_n, 0]))
        v = v_desc.load([start_n, 0])
    else:
        if MASKED:
            kt = tl.load(k_base + offs_k[None, :].to(tl.int64) * s_ks + offs_d[:, None],
                         mask=offs_k[None, :] < S, other=0.0)
            v = tl.load(v_base + offs_k[:, None].to(tl.int64) * s_vs + offs_d[None, :],
                        mask=offs_k[:, None] < S, other=0.0)
        else:
            kt = tl.load(k_base + offs_k[None, :].to(tl.int64) * s_ks + offs_d[:, None])
            v = tl.load(v_base + offs_k[:, None].to(tl.int64) * s_vs + offs_d[None, :])
    return kt, v


@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, KV_IDX, KV_CNT, KV_FULL,
                s_qb, s_qh, s_qs, s_kb, s_kh, s_ks, s_vb, s_vh, s_vs, s_ob, s_oh, s_os,
                s_idx, H_Q, GROUP, S, qk_scale,
                BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                HEAD_DIM: tl.constexpr, IEEE: tl.constexpr, USE_TMA: tl.constexpr):
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
    q_base = Q + b.to(tl.int64) * s_qb + h.to(tl.int64) * s_qh
    k_base = K + b.to(tl.int64) * s_kb + hk.to(tl.int64) * s_kh
    v_base = V + b.to(tl.int64) * s_vb + hk.to(tl.int64) * s_vh
    if USE_TMA:
        k_desc = tl.make_tensor_descriptor(k_base, shape=[S, HEAD_DIM], strides=[s_ks, 1],
                                           block_shape=[BLOCK_N, HEAD_DIM])
        v_desc = tl.make_tensor_descriptor(v_base, shape=[S, HEAD_DIM], strides=[s_vs, 1],
                                           block_shape=[BLOCK_N, HEAD_DIM])
    else:
        k_desc = k_base
        v_desc = v_base
    q = tl.load(q_base + offs_m[:, None].to(tl.int64) * s_qs + offs_d[None, :], mask=offs_m[:, None] < S, other=0.0)

    # The layout lists full key blocks first, then the partial one (the diagonal: causal / sequence tail).
    count = tl.load(KV_CNT + qb)
    n_full = tl.load(KV_FULL + qb)
    idx_row = KV_IDX + qb * s_idx
    has_diag = count > n_full

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)

    # Key blocks left of the diagonal: complete and visible to every row, no mask.
    for it in range(0, n_full * TILES):
        kb = tl.load(idx_row + it // TILES)
        start_n = kb * BLOCK_SIZE + (it % TILES) * BLOCK_N
        kt, v = _load_kv(k_base, v_base, k_desc, v_desc, start_n + offs_n, offs_d, s_ks, s_vs, start_n, S,
                         False, USE_TMA)
        qk = _dot(q, kt, tl.zeros([BLOCK_M, BLOCK_N], tl.float32), IEEE)
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        p = tl.math.exp2(qk * qk_scale - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = _dot(p.to(v.dtype), v, acc * alpha[:, None], IEEE)
        m_i = m_new

    # Diagonal block: causal and sequence-tail mask; tiles right of this query tile are skipped.
    if has_diag:
        diag_start = qb * BLOCK_SIZE
        n_diag = tl.cdiv(start_m + BLOCK_M - diag_start, BLOCK_N)
        for t in range(0, n_diag):
            start_n = diag_start + t * BLOCK_N
            offs_k = start_n + offs_n
            kt, v = _load_kv(k_base, v_base, k_desc, v_desc, offs_k, offs_d, s_ks, s_vs, start_n, S,
                             True, USE_TMA)
            qk = _dot(q, kt, tl.zeros([BLOCK_M, BLOCK_N], tl.float32), IEEE) * qk_scale
            visible = (offs_m[:, None] >= offs_k[None, :]) & (offs_k[None, :] < S)
            qk = tl.where(visible, qk, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.math.exp2(qk - m_safe[:, None])
            alpha = tl.math.exp2(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = _dot(p.to(v.dtype), v, acc * alpha[:, None], IEEE)
            m_i = m_new

    nonempty = l_i > 0.0
    out = acc / tl.where(nonempty, l_i, 1.0)[:, None]
    # LSE kept in base 2 of the scaled scores: lse2 = log2(sum 2^(qk*scale*log2e)).
    lse2 = tl.where(nonempty, m_i + tl.math.log2(tl.where(nonempty, l_i, 1.0)), float("-inf"))
    o_base = O + b.to(tl.int64) * s_ob + h.to(tl.int64) * s_oh
    tl.store(o_base + offs_m[:, None].to(tl.int64) * s_os + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=offs_m[:, None] < S)
    tl.store(LSE + pid_bh.to(tl.int64) * S + offs_m, lse2, mask=offs_m < S)
