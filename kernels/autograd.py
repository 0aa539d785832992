"""``torch.autograd.Function`` tying the Triton forward and backward together."""
from __future__ import annotations

import math

import torch
import triton

from .plan import empty
from .prefill_bwd import _bwd_dkdv_kernel, _bwd_dq_kernel
from .prefill_fwd import LOG2E, _fwd_kernel

# Defaults from the H100 sweep (kernels/NOTES.md); capped by block_size on small blocks.
FWD_DEFAULTS = dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3, tma=1)
DQ_DEFAULTS = dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=2, tma=1)
DKDV_DEFAULTS = dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2, tma=1)
BWD_CHUNK = 16  # query blocks per dK/dV work item


def _tiles(defaults: dict, override: dict | None, prefix: str, block_size: int, head_dim: int, dtype) -> dict:
    cfg = dict(defaults)
    for key in defaults:
        if override and f"{prefix}{key}" in override:
            cfg[key] = int(override[f"{prefix}{key}"])
    if dtype == torch.float32 and head_dim > 64:  # fp32 tiles twice as large: stay within shared memory
        cfg["BLOCK_M"], cfg["BLOCK_N"] = min(cfg["BLOCK_M"], 64), min(cfg["BLOCK_N"], 64)
    for key in ("BLOCK_M", "BLOCK_N"):
        cfg[key] = min(cfg[key], block_size)
        if cfg[key] < 16 or cfg[key] & (cfg[key] - 1):
            raise ValueError(f"{prefix}{key} must be a power of two >= 16, got {cfg[key]}")
    return cfg


def _check_config(kernel_config):
    if kernel_config is None:
        return {}
    if not isinstance(kernel_config, dict):
        raise TypeError(f"kernel_config must be a dict, got {type(kernel_config).__name__}")
    known = {f"{p}{k}" for p in ("fwd_", "dq_", "dkdv_") for k in DQ_DEFAULTS} | {"bwd_chunk"}
    unknown = set(kernel_config) - known
    if unknown:
        raise ValueError(f"unknown kernel_config keys {sorted(unknown)}; accepted: {sorted(known)}")
    return kernel_config


def _contig(t):
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


def forward(q, k, v, plan, block_size, sm_scale, cfg):
    """``plan``: the layout's ``DeviceTables`` (``BlockLayout.tables``)."""
    B, Hq, S, D = q.shape
    use_tma = bool(cfg["tma"]) and _tma_ok(q, k, v)
    Hkv = k.shape[1]
    o = empty(*q.shape, device=q.device, dtype=q.dtype)
    lse2 = empty(B, Hq, S, device=q.device, dtype=torch.float32)
    grid = (triton.cdiv(S, cfg["BLOCK_M"]), B * Hq)
    _fwd_kernel[grid](q, k, v, o, lse2, plan.kv_indices, plan.kv_counts, plan.kv_full_counts,
                      q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                      v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
                      plan.kv_indices.stride(0), Hq, Hq // Hkv, S, sm_scale * LOG2E,
                      BLOCK_SIZE=block_size, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], HEAD_DIM=D,
                      IEEE=q.dtype == torch.float32, USE_TMA=use_tma,
                      num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return o, lse2


def backward(do, q, k, v, o, lse2, plan, block_size, sm_scale, cfg_dq, cfg_kv):
    B, Hq, S, D = q.shape
    Hkv = k.shape[1]
    do = _contig(do)
    delta = (o.float() * do.float()).sum(-1)  # [B, Hq, S]
    dq = empty(B, Hq, S, D, device=q.device, dtype=q.dtype)
    dk = torch.zeros(B, Hkv, S, D, device=q.device, dtype=torch.float32)
    dv = torch.zeros_like(dk)
    strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
               v.stride(0), v.stride(1), v.stride(2), do.stride(0), do.stride(1), do.stride(2))
    ieee = q.dtype == torch.float32
    tma_ok = _tma_ok(q, k, v, do)
    _bwd_dq_kernel[(triton.cdiv(S, cfg_dq["BLOCK_M"]), B * Hq)](
        q, k, v, do, dq, lse2, delta, plan.kv_indices, plan.kv_counts, plan.kv_full_counts, *strides,
        plan.kv_indices.stride(0), Hq, Hq // Hkv, S, sm_scale * LOG2E, sm_scale,
        BLOCK_SIZE=block_size, BLOCK_M=cfg_dq["BLOCK_M"], BLOCK_N=cfg_dq["BLOCK_N"], HEAD_DIM=D, IEEE=ieee,
        USE_TMA=bool(cfg_dq["tma"]) and tma_ok,
        num_warps=cfg_dq["num_warps"], num_stages=cfg_dq["num_stages"])
    n_items = plan.items.shape[0]
    _bwd_dkdv_kernel[(n_items * (block_size // cfg_kv["BLOCK_N"]), B * Hkv)](
        q, k, v, do, dk, dv, lse2, delta, plan.q_lists, plan.items, *strides,
        Hq, Hkv, Hq // Hkv, S, sm_scale * LOG2E, sm_scale,
        BLOCK_SIZE=block_size, BLOCK_M=cfg_kv["BLOCK_M"], BLOCK_N=cfg_kv["BLOCK_N"], HEAD_DIM=D, IEEE=ieee,
        USE_TMA=bool(cfg_kv["tma"]) and tma_ok,
        num_warps=cfg_kv["num_warps"], num_stages=cfg_kv["num_stages"])
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
    """Triton path of ``kernels.sparse_attention`` (inputs already validated; ``layout`` a ``BlockLayout``)."""
    kc = _check_config(kernel_config)
    D = q.shape[-1]
    block_size = layout.block_size
    cfgs = (_tiles(FWD_DEFAULTS, kc, "fwd_", block_size, D, q.dtype),
            _tiles(DQ_DEFAULTS, kc, "dq_", block_size, D, q.dtype),
            _tiles(DKDV_DEFAULTS, kc, "dkdv_", block_size, D, q.dtype))
    plan = layout.tables(q.device, chunk=int(kc.get("bwd_chunk", BWD_CHUNK)))
    sm_scale = D ** -0.5 if scale is None else float(scale)
    q, k, v = _contig(q), _contig(k), _contig(v)
    o, lse2 = _SparseAttention.apply(q, k, v, plan, block_size, sm_scale, cfgs)
    if return_lse:
        return o, lse2 * math.log(2.0)
    return o
