"""``torch.autograd.Function`` tying the Triton forward and backward together.

The launchers here turn a ``BlockLayout``'s device tables and the tile settings of
``kernels.tiles`` into kernel launches; the kernels themselves are in ``prefill_fwd`` and
``prefill_bwd``.
"""
from __future__ import annotations

import math

import torch
import triton

from ._jit import LOG2E, dot_precision
from .plan import empty
from .prefill_bwd import _bwd_dkdv_kernel, _bwd_dq_kernel
from .prefill_fwd import _fwd_kernel
from .tiles import BWD_CHUNK, check_overrides, tiles_for


def _contig(t):
    """The kernels take any batch/head/sequence strides but need unit stride along the head dim."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _alloc(size, align, stream):
    return torch.empty(size, dtype=torch.int8, device="cuda")


def _set_allocator():
    # Device-side tensor descriptors (TMA) need scratch memory from torch. Triton keeps the allocator in a
    # context variable, so set it on every call: autograd runs the backward on another thread.
    triton.set_allocator(_alloc)


def _tma_ok(*tensors) -> bool:
    """Tensor descriptors need 16-byte aligned bases and row strides; else fall back to plain loads."""
    ok = all(t.data_ptr() % 16 == 0 and all((s * t.element_size()) % 16 == 0 for s in t.stride()[:-1])
             for t in tensors)
    if ok and tensors[0].is_cuda:
        _set_allocator()
    return ok


def _launch_options(cfg: triton.Config, tma_ok: bool) -> dict:
    """The tile constexprs and launch options of ``cfg`` (TMA only where the tensors allow it)."""
    return dict(BLOCK_M=cfg.kwargs["BLOCK_M"], BLOCK_N=cfg.kwargs["BLOCK_N"],
                USE_TMA=bool(cfg.kwargs["USE_TMA"]) and tma_ok, num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def forward(q, k, v, plan, block_size, sm_scale, cfg):
    """``plan``: the layout's ``DeviceTables`` (``BlockLayout.tables``); ``cfg`` the forward's ``triton.Config``.

    Returns the output and the base-2 LSE of the scaled scores (what the backward recomputes P from).
    """
    B, Hq, S, D = q.shape
    Hkv = k.shape[1]
    o = empty(*q.shape, device=q.device, dtype=q.dtype)
    lse2 = empty(B, Hq, S, device=q.device, dtype=torch.float32)
    grid = (triton.cdiv(S, cfg.kwargs["BLOCK_M"]), B * Hq)
    _fwd_kernel[grid](q, k, v, o, lse2, plan.kv_indices, plan.kv_counts, plan.kv_full_counts,
                      q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                      v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
                      plan.kv_indices.stride(0), Hq, Hq // Hkv, S, sm_scale * LOG2E,
                      BLOCK_SIZE=block_size, HEAD_DIM=D, PRECISION=dot_precision(q.dtype),
                      WARP_SPEC=bool(cfg.kwargs.get("WARP_SPEC", 0)), **_launch_options(cfg, _tma_ok(q, k, v)))
    return o, lse2


def backward(do, q, k, v, o, lse2, plan, block_size, sm_scale, cfg_dq, cfg_kv):
    B, Hq, S, D = q.shape
    Hkv = k.shape[1]
    do = _contig(do)
    delta = (o.float() * do.float()).sum(-1)  # [B, Hq, S]: rowsum(dO * O), the softmax backward's correction
    dq = empty(B, Hq, S, D, device=q.device, dtype=q.dtype)
    dk = torch.zeros(B, Hkv, S, D, device=q.device, dtype=torch.float32)  # accumulated atomically: must start at 0
    dv = torch.zeros_like(dk)
    strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
               v.stride(0), v.stride(1), v.stride(2), do.stride(0), do.stride(1), do.stride(2))
    precision = dot_precision(q.dtype)
    tma_ok = _tma_ok(q, k, v, do)
    _bwd_dq_kernel[(triton.cdiv(S, cfg_dq.kwargs["BLOCK_M"]), B * Hq)](
        q, k, v, do, dq, lse2, delta, plan.kv_indices, plan.kv_counts, plan.kv_full_counts, *strides,
        plan.kv_indices.stride(0), Hq, Hq // Hkv, S, sm_scale * LOG2E, sm_scale,
        BLOCK_SIZE=block_size, HEAD_DIM=D, PRECISION=precision, **_launch_options(cfg_dq, tma_ok))
    n_items = plan.items.shape[0]
    _bwd_dkdv_kernel[(n_items * (block_size // cfg_kv.kwargs["BLOCK_N"]), B * Hkv)](
        q, k, v, do, dk, dv, lse2, delta, plan.q_lists, plan.items, *strides,
        Hq, Hkv, Hq // Hkv, S, sm_scale * LOG2E, sm_scale,
        BLOCK_SIZE=block_size, HEAD_DIM=D, PRECISION=precision, **_launch_options(cfg_kv, tma_ok))
    return dq, dk.to(k.dtype), dv.to(v.dtype)


class _SparseAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, plan, block_size, sm_scale, cfgs):
        o, lse2 = forward(q, k, v, plan, block_size, sm_scale, cfgs[0])
        ctx.save_for_backward(q, k, v, o, lse2)
        ctx.plan, ctx.block_size, ctx.sm_scale, ctx.cfgs = plan, block_size, sm_scale, cfgs
        ctx.mark_non_differentiable(lse2)
        return o, lse2

    @staticmethod
    def backward(ctx, do, _dlse):
        q, k, v, o, lse2 = ctx.saved_tensors
        dq, dk, dv = backward(do, q, k, v, o, lse2, ctx.plan, ctx.block_size, ctx.sm_scale, ctx.cfgs[1], ctx.cfgs[2])
        return dq, dk, dv, None, None, None, None


def triton_sparse_attention(q, k, v, layout, *, scale=None, return_lse=False, kernel_config=None):
    """Triton path of ``kernels.sparse_attention`` (inputs already validated; ``layout`` a ``BlockLayout``;
    ``kernel_config`` as in ``kernels.tiles``)."""
    kc = check_overrides(kernel_config)
    D = q.shape[-1]
    block_size = layout.block_size
    cfgs = tuple(tiles_for(kernel, D, q.dtype, block_size, kc.get(kernel)) for kernel in ("fwd", "dq", "dkdv"))
    plan = layout.tables(q.device, chunk=kc.get("bwd_chunk", BWD_CHUNK))
    sm_scale = D ** -0.5 if scale is None else float(scale)
    q, k, v = _contig(q), _contig(k), _contig(v)
    o, lse2 = _SparseAttention.apply(q, k, v, plan, block_size, sm_scale, cfgs)
    if return_lse:
        return o, lse2 * math.log(2.0)
    return o
