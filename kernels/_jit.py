"""``@triton.jit`` building blocks shared by the forward, backward and decode kernels.

Triton inlines every ``@triton.jit`` function into its caller, and every flag
below is a ``tl.constexpr``: a call compiles to exactly the operations of the
branch it selects, as if written in place. So the kernels can share these
pieces without paying for them: no runtime branch, no extra mask on the
unmasked path. What each kernel does per tile is therefore written once, here:

* ``dot_precision`` (host) the ``input_precision`` of every ``tl.dot``, a ``PRECISION`` constexpr
                   of each kernel: IEEE fp32 for fp32 inputs, native for half precision;
* ``query_tile``   which batch, head and query rows a forward / dQ program owns;
* ``key_blocks``   the key blocks a query block lists: full ones first, then the partial diagonal;
* ``tile_source``  where tiles of a ``[rows, HEAD_DIM]`` matrix come from: a tensor descriptor
                   (TMA, Hopper's bulk copy engine), made once per program, or the base pointer;
* ``load_tile``    one ``[BLOCK, HEAD_DIM]`` tile (or its transpose) from either source;
* ``attend_tile``  one online-softmax step of the forward and decode (load K/V, scores,
                   running max and sum, accumulate P @ V), ``MASKED`` for the partial tiles;
* ``finish_rows``  the normalised output and base-2 log-sum-exp of the accumulated rows;
* ``probs``        the backward's recomputed probabilities P = 2^(scaled scores - LSE).

Softmax runs in base 2 with ``qk_scale = sm_scale * log2(e)`` folded into the
exponent (``exp2`` is one instruction; ``exp`` is ``exp2`` plus a multiply).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


def dot_precision(dtype) -> str:
    """``input_precision`` of every ``tl.dot`` of a kernel, passed as its ``PRECISION`` constexpr.

    fp32 inputs are multiplied in IEEE fp32: TF32 (Triton's default for fp32) keeps 10 mantissa
    bits and would fail the float64 checks. Half-precision inputs run natively whatever the
    setting; they get "tf32", the default, so their code is exactly that of a plain ``tl.dot``.
    """
    return "ieee" if dtype == torch.float32 else "tf32"


@triton.jit
def query_tile(H_Q, GROUP, BLOCK_M: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    """Who a query-tile program is (grid: query tiles x batch * query heads), for the forward and dQ.

    Returns ``(pid_bh, b, h, hk, qb, start_m, offs_m)``: the flat batch-head index, batch, query head,
    the key/value head it reads (GQA: ``GROUP`` query heads per KV head), the mask block of its rows
    (tiles never straddle mask blocks: ``BLOCK_M <= BLOCK_SIZE``), its first row and its rows.
    """
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H_Q
    h = pid_bh % H_Q
    hk = h // GROUP
    start_m = pid_m * BLOCK_M
    qb = start_m // BLOCK_SIZE
    offs_m = start_m + tl.arange(0, BLOCK_M)
    return pid_bh, b, h, hk, qb, start_m, offs_m


@triton.jit
def key_blocks(KV_IDX, KV_CNT, KV_FULL, qb, s_idx):
    """Query block ``qb``'s row of the layout's device tables (``BlockLayout.tables``).

    Returns ``(idx_row, n_full, has_diag)``: a pointer to its key-block indices, how many of them are
    full (listed first, ascending; they need no mask) and whether a partial block follows them (the
    diagonal: token causality, and the sequence tail).
    """
    count = tl.load(KV_CNT + qb)
    n_full = tl.load(KV_FULL + qb)
    idx_row = KV_IDX + qb * s_idx
    has_diag = count > n_full
    return idx_row, n_full, has_diag


@triton.jit
def tile_source(base, n_rows, row_stride, BLOCK_ROWS: tl.constexpr, HEAD_DIM: tl.constexpr,
                USE_TMA: tl.constexpr):
    """What ``load_tile`` reads a ``[n_rows, HEAD_DIM]`` row-major matrix at ``base`` through.

    With ``USE_TMA`` a device-side tensor descriptor (made once per program, outside the tile loops:
    building one costs a global-memory write), else the pointer itself. Rows past ``n_rows`` come
    back from a descriptor as zeros.
    """
    if USE_TMA:
        return tl.make_tensor_descriptor(base, shape=[n_rows, HEAD_DIM], strides=[row_stride, 1],
                                         block_shape=[BLOCK_ROWS, HEAD_DIM])
    else:
        return base


@triton.jit
def load_tile(src, start, offs, offs_d, row_stride, mask, MASKED: tl.constexpr, USE_TMA: tl.constexpr,
              TRANSPOSED: tl.constexpr):
    """Rows ``offs`` (``= start + arange(BLOCK)``) of a matrix: ``[BLOCK, D]``, or ``[D, BLOCK]`` if ``TRANSPOSED``.

    ``src`` comes from ``tile_source``. ``MASKED`` (pointer loads only): elements where ``mask``
    (broadcast to the tile: ``[BLOCK, 1]``, or ``[1, BLOCK]`` transposed) is False read as 0, for
    tiles that run past the sequence end; unmasked loads are for tiles known to be inside it
    (``mask`` is then unused: pass None). A descriptor bounds-checks by itself. The pointer form
    loads the transpose directly (K^T for ``q @ k^T``) rather than transposing a loaded tile.
    """
    if USE_TMA:
        tile = src.load([start, 0])
        if TRANSPOSED:
            tile = tl.trans(tile)
    else:
        if TRANSPOSED:
            ptrs = src + offs[None, :].to(tl.int64) * row_stride + offs_d[:, None]
        else:
            ptrs = src + offs[:, None].to(tl.int64) * row_stride + offs_d[None, :]
        if MASKED:
            tile = tl.load(ptrs, mask=mask, other=0.0)
        else:
            tile = tl.load(ptrs)
    return tile


@triton.jit
def attend_tile(q, k_src, v_src, start_n, offs_n, offs_d, s_ks, s_vs, q_pos, key_limit, rows_on, m_i, l_i, acc,
                qk_scale, MASKED: tl.constexpr, USE_TMA: tl.constexpr, PRECISION: tl.constexpr):
    """One online-softmax step over the keys ``offs_n = start_n + arange(BLOCK_N)``.

    Returns the new running max ``m_i`` (base 2, scaled), row sum ``l_i`` and output ``acc``.
    Unmasked (a tile every row sees entirely): the scale is folded into the max and into the
    exponent's one FMA, and nothing is masked (``q_pos``, ``key_limit``, ``rows_on`` unused: pass
    None). ``MASKED``: row ``r`` sees key ``j`` iff ``q_pos[r] >= j`` (causality), ``j < key_limit``
    (the sequence end; pointer loads read those keys as 0) and, unless ``rows_on`` is None,
    ``rows_on[r]`` (decode: the token's layout row selects this block). A row that has seen
    nothing yet keeps max -inf, so its exponents are taken against 0 (P = 0, not NaN).
    """
    if MASKED:
        k_ok, v_ok = offs_n[None, :] < key_limit, offs_n[:, None] < key_limit
    else:
        k_ok, v_ok = None, None
    kt = load_tile(k_src, start_n, offs_n, offs_d, s_ks, mask=k_ok, MASKED=MASKED, USE_TMA=USE_TMA, TRANSPOSED=True)
    v = load_tile(v_src, start_n, offs_n, offs_d, s_vs, mask=v_ok, MASKED=MASKED, USE_TMA=USE_TMA, TRANSPOSED=False)
    qk = tl.dot(q, kt, input_precision=PRECISION)
    if MASKED:
        qk = qk * qk_scale
        visible = (q_pos[:, None] >= offs_n[None, :]) & (offs_n[None, :] < key_limit)
        if rows_on is not None:
            visible = rows_on[:, None] & visible
        qk = tl.where(visible, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row that has seen nothing yet
        p = tl.math.exp2(qk - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
    else:
        # Every score is finite here: fold the scale into the max and into the exponent's one FMA.
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        p = tl.math.exp2(qk * qk_scale - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    # The rescaled accumulator goes into the MMA as its accumulator (no separate add).
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
    return m_new, l_i, acc


@triton.jit
def finish_rows(acc, m_i, l_i):
    """Normalised output rows and their base-2 LSE, ``log2(sum 2^(qk * qk_scale))``.

    A row that saw no key (an empty layout row, or padding) gives output 0 and LSE -inf, never NaN.
    """
    nonempty = l_i > 0.0
    l_safe = tl.where(nonempty, l_i, 1.0)
    out = acc / l_safe[:, None]
    lse2 = tl.where(nonempty, m_i + tl.math.log2(l_safe), float("-inf"))
    return out, lse2


@triton.jit
def probs(a, bt, lse, qk_scale, visible, TRANSPOSED: tl.constexpr, MASKED: tl.constexpr, PRECISION: tl.constexpr):
    """The forward's probabilities rebuilt from its base-2 LSE: ``2^(a @ bt * qk_scale - lse)``.

    P for ``a = q, bt = k^T`` (dQ, ``lse`` per row); ``TRANSPOSED``: P^T for ``a = k, bt = q^T``
    (dK/dV, ``lse`` per column). ``MASKED`` zeroes what ``visible`` excludes (the causal boundary,
    the sequence tail).
    """
    if TRANSPOSED:
        p = tl.math.exp2(tl.dot(a, bt, input_precision=PRECISION) * qk_scale - lse[None, :])
    else:
        p = tl.math.exp2(tl.dot(a, bt, input_precision=PRECISION) * qk_scale - lse[:, None])
    if MASKED:
        p = tl.where(visible, p, 0.0)
    return p
