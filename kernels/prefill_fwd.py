"""Triton forward of block-sparse causal attention (FlashAttention-2 style).

One program = one tile of ``BLOCK_M`` query rows of one query head. Its mask
block ``qb`` lists its key blocks, full ones first (``BlockLayout.tables``);
each ``block_size`` key block is swept in ``BLOCK_N`` tiles, so mask blocks and
tiles are independent. Full blocks (strictly left of the diagonal, inside the
sequence) are seen entirely by every row: they run unmasked in one flat
(pipelinable) loop. Only the partial block, the diagonal, pays for the causal /
sequence-tail mask. The per-tile step is ``kernels._jit.attend_tile``, called
once per loop with its ``MASKED`` flag. ``USE_TMA`` (Hopper) loads K/V tiles
through tensor descriptors (bulk copy engine; rows past the sequence end come
back as zeros). ``WARP_SPEC`` (issue 11, an opt-in tile setting) compiles the same steps as one
loop with Triton's warp specialisation, the diagonal tiles unrolled before it; Triton 3.6
makes no warp partition for sm_90, and on the H100 it measured 0.88-0.99x the two-loop kernel.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._jit import LOG2E, attend_tile, finish_rows, key_blocks, load_tile, query_tile, tile_source

__all__ = ["LOG2E", "_fwd_kernel"]


@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, KV_IDX, KV_CNT, KV_FULL,
                s_qb, s_qh, s_qs, s_kb, s_kh, s_ks, s_vb, s_vh, s_vs, s_ob, s_oh, s_os,
                s_idx, H_Q, GROUP, S, qk_scale,
                BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr, USE_TMA: tl.constexpr,
                WARP_SPEC: tl.constexpr = False):
    pid_bh, b, h, hk, qb, start_m, offs_m = query_tile(H_Q, GROUP, BLOCK_M, BLOCK_SIZE)
    TILES: tl.constexpr = BLOCK_SIZE // BLOCK_N  # tiles per key block
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    q_base = Q + b.to(tl.int64) * s_qb + h.to(tl.int64) * s_qh
    k_base = K + b.to(tl.int64) * s_kb + hk.to(tl.int64) * s_kh
    v_base = V + b.to(tl.int64) * s_vb + hk.to(tl.int64) * s_vh
    k_src = tile_source(k_base, S, s_ks, BLOCK_N, HEAD_DIM, USE_TMA)
    v_src = tile_source(v_base, S, s_vs, BLOCK_N, HEAD_DIM, USE_TMA)
    q = load_tile(q_base, start_m, offs_m, offs_d, s_qs, mask=offs_m[:, None] < S, MASKED=True, USE_TMA=False,
                  TRANSPOSED=False)

    # The layout lists full key blocks first, then the partial one (the diagonal: causal / sequence tail).
    idx_row, n_full, has_diag = key_blocks(KV_IDX, KV_CNT, KV_FULL, qb, s_idx)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)

    if WARP_SPEC:
        # Triton 3.6 warp-specialises only a kernel with a single loop (two-loop kernels failed to compile in
        # our tries): the diagonal's at most TILES tiles are unrolled (static_range) and guarded, and the
        # full tiles' loop is the one loop, split into producer (TMA loads) and consumer (MMA) warps.
        if has_diag:
            diag_start = qb * BLOCK_SIZE
            n_diag = tl.cdiv(start_m + BLOCK_M - diag_start, BLOCK_N)
            for t in tl.static_range(TILES):
                if t < n_diag:
                    start_n = diag_start + t * BLOCK_N
                    m_i, l_i, acc = attend_tile(q, k_src, v_src, start_n, start_n + offs_n, offs_d, s_ks, s_vs,
                                                offs_m, S, None, m_i, l_i, acc, qk_scale, MASKED=True,
                                                USE_TMA=USE_TMA, PRECISION=PRECISION)
        for it in tl.range(0, n_full * TILES, warp_specialize=True):
            kb = tl.load(idx_row + it // TILES)
            start_n = kb * BLOCK_SIZE + (it % TILES) * BLOCK_N
            m_i, l_i, acc = attend_tile(q, k_src, v_src, start_n, start_n + offs_n, offs_d, s_ks, s_vs, None, None,
                                        None, m_i, l_i, acc, qk_scale, MASKED=False, USE_TMA=USE_TMA,
                                        PRECISION=PRECISION)
    else:
        # Full key blocks: complete and visible to every row, no mask. One flat loop over their tiles.
        for it in range(0, n_full * TILES):
            kb = tl.load(idx_row + it // TILES)
            start_n = kb * BLOCK_SIZE + (it % TILES) * BLOCK_N
            m_i, l_i, acc = attend_tile(q, k_src, v_src, start_n, start_n + offs_n, offs_d, s_ks, s_vs, None, None, None,
                                        m_i, l_i, acc, qk_scale, MASKED=False, USE_TMA=USE_TMA, PRECISION=PRECISION)

        # Diagonal block: causal and sequence-tail mask; its tiles right of this query tile are skipped.
        if has_diag:
            diag_start = qb * BLOCK_SIZE
            n_diag = tl.cdiv(start_m + BLOCK_M - diag_start, BLOCK_N)
            for t in range(0, n_diag):
                start_n = diag_start + t * BLOCK_N
                m_i, l_i, acc = attend_tile(q, k_src, v_src, start_n, start_n + offs_n, offs_d, s_ks, s_vs, offs_m, S, None,
                                            m_i, l_i, acc, qk_scale, MASKED=True, USE_TMA=USE_TMA, PRECISION=PRECISION)

    out, lse2 = finish_rows(acc, m_i, l_i)
    o_base = O + b.to(tl.int64) * s_ob + h.to(tl.int64) * s_oh
    tl.store(o_base + offs_m[:, None].to(tl.int64) * s_os + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=offs_m[:, None] < S)
    tl.store(LSE + pid_bh.to(tl.int64) * S + offs_m, lse2, mask=offs_m < S)
