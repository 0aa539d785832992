"""Plain PyTorch reference of block-sparse causal attention (prefill and decode).

The mask is the block layout expanded to tokens plus token causality: query
token ``i`` (at absolute position ``p_i``) sees key ``j`` iff ``p_i >= j`` and
``layout[p_i // block_size, j // block_size]``. Heads are grouped (GQA): query
head ``h`` reads key/value head ``h // (q_heads // kv_heads)``. Rows that see no
key give output 0 and log-sum-exp ``-inf`` (never NaN). Everything is computed
in float32 (or float64 when the inputs are float64, or when asked), and all
operations are differentiable through autograd.
"""
from __future__ import annotations

import torch


def reference_attention(q, k, v, layout, block_size, *, scale=None, q_offset=0,
                        compute_dtype=None, chunk_size=None, return_lse=False):
    """Dense masked attention on upcast inputs.

    q: ``[B, Hq, T, D]``, query ``t`` sits at absolute position ``q_offset + t``.
    k, v: ``[B, Hkv, S, D]``. layout: bool ``[nq, ceil(S / block_size)]`` with
    ``nq > (q_offset + T - 1) // block_size``.
    chunk_size: process this many query rows at a time (memory bound
    ``B*Hq*chunk*S``); within a chunk only the key blocks some row of the chunk
    selects are gathered, which changes nothing in the result (the rest are
    masked out anyway) but lets long sequences fit.
    Returns the output in ``q``'s dtype (and the natural-log LSE, float32
    ``[B, Hq, T]``, when ``return_lse``).
    """
    B, Hq, T, D = q.shape
    S = k.shape[2]
    group = Hq // k.shape[1]
    if compute_dtype is None:
        compute_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = D ** -0.5 if scale is None else float(scale)
    layout = layout.to(q.device)
    kf = k.to(compute_dtype).repeat_interleave(group, dim=1)
    vf = v.to(compute_dtype).repeat_interleave(group, dim=1)
    chunk = T if chunk_size is None else max(1, int(chunk_size))
    key_pos = torch.arange(S, device=q.device)
    outs, lses = [], []
    for start in range(0, T, chunk):
        qpos = torch.arange(start, min(start + chunk, T), device=q.device) + q_offset
        qblk = qpos // block_size
        if chunk_size is None:
            kidx = key_pos
        else:  # keys of the blocks any row of this chunk selects
            blocks = layout[qblk.min():qblk.max() + 1].any(0)
            kidx = key_pos[blocks[key_pos // block_size]]
        allowed = (qpos[:, None] >= kidx[None, :]) & layout[qblk][:, kidx // block_size]
        qc = q[:, :, start:start + len(qpos)].to(compute_dtype)
        kc, vc = kf[:, :, kidx], vf[:, :, kidx]
        s = (qc @ kc.transpose(-1, -2)) * scale
        s = s.masked_fill(~allowed, float("-inf"))
        m = s.amax(-1, keepdim=True)
        m = torch.where(torch.isinf(m), torch.zeros_like(m), m).detach()
        p = torch.exp(s - m)  # exp(-inf) = 0 for masked keys
        l = p.sum(-1, keepdim=True)
        nonempty = l > 0
        out = (p @ vc) / torch.where(nonempty, l, torch.ones_like(l))
        outs.append(out)
        if return_lse:
            lse = torch.where(nonempty, m + torch.log(torch.where(nonempty, l, torch.ones_like(l))),
                              torch.full_like(l, float("-inf")))
            lses.append(lse.squeeze(-1))
    out = torch.cat(outs, dim=2).to(q.dtype)
    if return_lse:
        return out, torch.cat(lses, dim=2).float()
    return out


def reference_decode_at_position(q, k, v, blocks, valid, pos, block_size):
    """Float64 dense reference of ``kernels.decode.decode_at_position``: the selected
    blocks' keys at positions ``<= pos`` of a static cache (one query per sequence)."""
    S = k.shape[2]
    key_pos = torch.arange(S, device=k.device)
    sel = torch.zeros(-(-S // block_size), dtype=torch.bool, device=k.device)
    sel[blocks[valid.bool()].long()] = True
    allowed = sel[key_pos // block_size] & (key_pos <= pos.reshape(()))
    group = q.shape[1] // k.shape[1]
    kf = k.double().repeat_interleave(group, 1)
    vf = v.double().repeat_interleave(group, 1)
    out = torch.nn.functional.scaled_dot_product_attention(q.double(), kf, vf, attn_mask=allowed[None, None, None, :])
    return out.to(q.dtype)
