"""Side-by-side attention benchmark (Figure 4b): ours vs dense SDPA vs FlexAttention.

Used by ``notebooks/08_figure4b_kernels.ipynb`` and runnable as a script on the
GPU machine (``python -m kernels.benchmark --out results.json``). All ratios
come from one process on one GPU. FLOPs are counted on the token pairs the mask
keeps (4*D per pair forward, 2.5x that backward); the block-count bound is
dense causal blocks / selected blocks: the speed-up over dense attention a
kernel at the same efficiency per computed block would get.
"""
from __future__ import annotations

import argparse
import json
import math
import time

import torch
from tqdm.auto import tqdm

from lib import masks
from lib.masks.flex import causal_mask_mod

from . import get_layout, sparse_attention, sparse_decode
from .reference import reference_attention

MASK_CONFIG: dict = {}  # pattern -> extra config; stride_slash gets paper_stride per length


def pattern_config(pattern: str, num_blocks: int) -> dict:
    """Section 4.1 budgets at any length (stride slash keeps its 3 slash blocks)."""
    if pattern == "stride_slash":
        return dict(stride=masks.paper_stride(num_blocks))
    return dict(MASK_CONFIG.get(pattern, {}))


def count_pairs(layout: torch.Tensor, seq_len: int, block_size: int) -> int:
    """Visible (query, key) token pairs of the layout plus token causality."""
    nb = layout.shape[0]
    sizes = torch.clamp(seq_len - torch.arange(nb) * block_size, max=block_size).double()
    qb, kb = torch.nonzero(layout, as_tuple=True)
    off = kb < qb
    pairs = (sizes[qb[off]] * sizes[kb[off]]).sum()
    d = sizes[qb[~off]]
    return int(pairs + (d * (d + 1) / 2).sum())


def block_bound(layout: torch.Tensor) -> float:
    nb = layout.shape[0]
    return nb * (nb + 1) / 2 / int(layout.sum())


def measure_peaks(device="cuda") -> dict:
    """Measured ceilings: device-to-device copy bandwidth and bf16 matmul rate."""
    from triton.testing import do_bench

    n = 1 << 30  # 1 GiB of bytes each way
    a = torch.empty(n, dtype=torch.uint8, device=device).random_(0, 255)
    b = torch.empty_like(a)
    ms = do_bench(lambda: b.copy_(a), warmup=50, rep=300, return_mode="median")
    copy_gbps = 2 * n / ms / 1e6
    del a, b
    x = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    y = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    ms = do_bench(lambda: x @ y, warmup=50, rep=300, return_mode="median")
    tflops = 2 * 8192**3 / ms / 1e9
    del x, y
    # Floor of one tiny kernel replayed from a CUDA graph: the latency no decode kernel can beat.
    from triton.testing import do_bench_cudagraph

    t = torch.zeros(1, device=device)
    floor_us = do_bench_cudagraph(lambda: t.add_(1), rep=100, return_mode="median") * 1e3
    return dict(copy_GBps=copy_gbps, matmul_bf16_TFLOPs=tflops, kernel_floor_us=floor_us)


def _rel(a, b) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm())


def _bench(fn, cudagraph=False):
    from triton.testing import do_bench, do_bench_cudagraph

    if cudagraph:
        return do_bench_cudagraph(fn, rep=100, return_mode="median")
    return do_bench(fn, warmup=25, rep=200, return_mode="median")


def bench_prefill(lengths, patterns, modes=("fwd", "fwd_bwd"), *, Hq=28, Hkv=4, D=128, batch=1, block_size=256,
                  dtype=torch.bfloat16, flex_patterns=("power", "sliding_window"), kernel_config=None,
                  sdpa=True, flex=True, seed=0, progress=None):
    """Rows of {length, mode, method, pattern, ms, tflops, pairs, bound}."""
    from torch.nn.attention.flex_attention import flex_attention

    flex_c = torch.compile(flex_attention, dynamic=False) if flex else None
    rows = []
    g = torch.Generator(device="cuda").manual_seed(seed)
    for S in tqdm(lengths, desc=f"prefill {'+'.join(modes)}"):
        nb = math.ceil(S / block_size)
        q = torch.randn(batch, Hq, S, D, device="cuda", dtype=dtype, generator=g)
        k = torch.randn(batch, Hkv, S, D, device="cuda", dtype=dtype, generator=g)
        v = torch.randn(batch, Hkv, S, D, device="cuda", dtype=dtype, generator=g)
        do = torch.randn_like(q)
        dense_pairs = S * (S + 1) // 2
        for mode in modes:
            mult = 1.0 if mode == "fwd" else 3.5

            def add(method, pattern, ms, pairs, bound):
                flops = 4 * D * Hq * batch * pairs * mult
                rows.append(dict(length=S, mode=mode, method=method, pattern=pattern, ms=ms,
                                 tflops=flops / ms / 1e9, pairs=pairs, bound=bound))
                if progress:
                    progress(rows[-1])

            if sdpa:
                ke, ve = k.repeat_interleave(Hq // Hkv, 1), v.repeat_interleave(Hq // Hkv, 1)
                f = lambda qq=q, kk=ke, vv=ve: torch.nn.functional.scaled_dot_product_attention(qq, kk, vv, is_causal=True)
                if mode == "fwd":
                    with torch.no_grad():
                        ms = _bench(f)
                else:
                    qq, kk, vv = (t.detach().requires_grad_() for t in (q, ke, ve))
                    ms = _bench(lambda: torch.autograd.backward(
                        torch.nn.functional.scaled_dot_product_attention(qq, kk, vv, is_causal=True), do))
                    del qq, kk, vv
                add("sdpa", "full", ms, dense_pairs, 1.0)
                del ke, ve
            for pattern in patterns:
                cfg = pattern_config(pattern, nb)
                layout = get_layout(pattern, S, block_size, **cfg)
                pairs, bound = count_pairs(layout, S, block_size), block_bound(layout)
                ours = lambda qq, kk, vv: sparse_attention(qq, kk, vv, pattern, block_size, backend="triton",
                                                           kernel_config=kernel_config, **cfg)
                if mode == "fwd":
                    with torch.no_grad():
                        ms = _bench(lambda: ours(q, k, v))
                else:
                    qq, kk, vv = (t.detach().requires_grad_() for t in (q, k, v))
                    ms = _bench(lambda: torch.autograd.backward(ours(qq, kk, vv), do))
                add("ours", pattern, ms, pairs, bound)
                if flex and pattern in flex_patterns:
                    # Causal on partial tiles: exact in compiled Flex, and its cheapest BlockMask.
                    bm = masks.flex_block_mask(layout, S, block_size, "cuda", mask_mod=causal_mask_mod)
                    fx = lambda qq, kk, vv: flex_c(qq, kk, vv, block_mask=bm, enable_gqa=True)
                    if mode == "fwd":
                        with torch.no_grad():
                            fx(q, k, v)
                            ms = _bench(lambda: fx(q, k, v))
                    else:
                        qq, kk, vv = (t.detach().requires_grad_() for t in (q, k, v))
                        ms = _bench(lambda: torch.autograd.backward(fx(qq, kk, vv), do))
                    add("flex", pattern, ms, pairs, bound)
        del q, k, v, do
        torch.cuda.empty_cache()
    return rows


def bench_decode(contexts, patterns, *, tokens=1, Hq=28, Hkv=4, D=128, batch=1, block_size=256,
                 dtype=torch.bfloat16, kernel_config=None, sdpa=True, seed=0, progress=None):
    """Rows of {context, method, pattern, us, bytes, GBps, blocks}; timed as CUDA-graph replays."""
    rows = []
    g = torch.Generator(device="cuda").manual_seed(seed)
    for S in tqdm(contexts, desc=f"decode batch {batch}"):
        nb = math.ceil(S / block_size)
        q = torch.randn(batch, Hq, tokens, D, device="cuda", dtype=dtype, generator=g)
        k = torch.randn(batch, Hkv, S, D, device="cuda", dtype=dtype, generator=g)
        v = torch.randn(batch, Hkv, S, D, device="cuda", dtype=dtype, generator=g)
        el = q.element_size()
        io = 2 * batch * Hq * tokens * D * el  # q read + out written

        def add(method, pattern, ms, nbytes, blocks):
            rows.append(dict(context=S, method=method, pattern=pattern, us=ms * 1e3, bytes=nbytes,
                             GBps=nbytes / ms / 1e6, blocks=blocks))
            if progress:
                progress(rows[-1])

        with torch.no_grad():
            if sdpa:
                qs = q.reshape(batch, Hkv, (Hq // Hkv) * tokens, D)  # GQA heads packed as rows
                f = lambda: torch.nn.functional.scaled_dot_product_attention(qs, k, v)
                if tokens == 1:
                    f()
                    add("sdpa", "full", _bench(f, cudagraph=True), 2 * k.numel() * el + io, nb)
            for pattern in patterns:
                cfg = pattern_config(pattern, nb)
                layout = get_layout(pattern, S, block_size, **cfg)
                rows_sel = layout[[(S - tokens + t) // block_size for t in range(tokens)]].any(0)
                sel = torch.nonzero(rows_sel).flatten()
                tok = int(torch.clamp(S - sel * block_size, max=block_size).sum())
                nbytes = 2 * batch * Hkv * tok * D * el + io
                f = lambda: sparse_decode(q, k, v, pattern, block_size, backend="triton",
                                          kernel_config=kernel_config, **cfg)
                f()
                add("ours", pattern, _bench(f, cudagraph=True), nbytes, int(sel.numel()))
        del q, k, v
        torch.cuda.empty_cache()
    return rows


def check_errors(lengths, patterns, *, Hq=28, Hkv=4, D=128, block_size=256, dtype=torch.bfloat16,
                 grad_lengths=(), decode=True, kernel_config=None, seed=0, device="cuda", backend="triton",
                 chunk_rows=None, progress=None):
    """Relative error ||ours - ref|| / ||ref|| of the forward (and gradients, decode) per case.

    The reference runs on the same bf16/fp16 inputs upcast to float32 (float64 on
    CPU), in query chunks of one mask block so long lengths fit in memory.
    """
    rows = []
    g = torch.Generator(device=device).manual_seed(seed)
    cdt = torch.float64 if device == "cpu" else torch.float32
    chunk = chunk_rows or block_size
    for S in tqdm(sorted(set(lengths) | set(grad_lengths)), desc="errors vs reference"):
        nb = math.ceil(S / block_size)
        q = torch.randn(1, Hq, S, D, device=device, dtype=dtype, generator=g)
        k = torch.randn(1, Hkv, S, D, device=device, dtype=dtype, generator=g)
        v = torch.randn(1, Hkv, S, D, device=device, dtype=dtype, generator=g)
        for pattern in patterns:
            cfg = pattern_config(pattern, nb)
            layout = get_layout(pattern, S, block_size, **cfg)
            row = dict(length=S, pattern=pattern, dtype=str(dtype).replace("torch.", ""))
            if S in lengths:
                with torch.no_grad():
                    out = sparse_attention(q, k, v, pattern, block_size, backend=backend, kernel_config=kernel_config,
                                           **cfg)
                    ref = reference_attention(q, k, v, layout, block_size, compute_dtype=cdt, chunk_size=chunk)
                row.update(fwd_rel_err=_rel(out, ref), nan=bool(torch.isnan(out).any()))
                if decode:
                    T = 1
                    with torch.no_grad():
                        od = sparse_decode(q[:, :, -T:], k, v, pattern, block_size, backend=backend, **cfg)
                    row.update(decode_rel_err=_rel(od, ref[:, :, -T:]))
                del out, ref
            if S in grad_lengths:
                qq, kk, vv = (t.detach().requires_grad_() for t in (q, k, v))
                do = torch.randn(q.shape, device=device, dtype=dtype, generator=g)
                out = sparse_attention(qq, kk, vv, pattern, block_size, backend=backend, kernel_config=kernel_config,
                                       **cfg)
                out.backward(do)
                qr, kr, vr = (t.detach().to(cdt).requires_grad_() for t in (q, k, v))
                ref = reference_attention(qr, kr, vr, layout, block_size, compute_dtype=cdt, chunk_size=chunk)
                ref.backward(do.to(cdt))
                row.update(grad_rel_err=dict(dq=_rel(qq.grad, qr.grad), dk=_rel(kk.grad, kr.grad),
                                             dv=_rel(vv.grad, vr.grad)))
                del qq, kk, vv, qr, kr, vr, out, ref
            rows.append(row)
            if progress:
                progress(row)
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="results.json")
    p.add_argument("--lengths", type=int, nargs="+", default=[16384, 32768, 65536, 131072])
    p.add_argument("--bwd-lengths", type=int, nargs="+", default=[16384, 32768, 65536, 131072])
    p.add_argument("--decode", type=int, nargs="+", default=[4096, 8192, 16384, 32768, 65536, 131072])
    p.add_argument("--patterns", nargs="+", default=list(masks.PATTERNS))
    p.add_argument("--err-lengths", type=int, nargs="+", default=[32768, 131072])
    p.add_argument("--grad-lengths", type=int, nargs="+", default=[4096])
    p.add_argument("--no-sdpa", action="store_true")
    p.add_argument("--no-flex", action="store_true")
    p.add_argument("--config", default=None, help="JSON kernel_config")
    a = p.parse_args(argv)
    cfg = json.loads(a.config) if a.config else None
    log = lambda r: print(json.dumps(r), flush=True)
    t0 = time.time()
    res = dict(peaks=measure_peaks())
    log(res["peaks"])
    sparse = [x for x in a.patterns if x != "full"]
    res["errors"] = check_errors(a.err_lengths, sparse, grad_lengths=a.grad_lengths, kernel_config=cfg, progress=log)
    res["prefill"] = bench_prefill(a.lengths, a.patterns, modes=("fwd",), sdpa=not a.no_sdpa, flex=not a.no_flex,
                                   kernel_config=cfg, progress=log)
    res["prefill"] += bench_prefill(a.bwd_lengths, a.patterns, modes=("fwd_bwd",), sdpa=not a.no_sdpa,
                                    flex=not a.no_flex, kernel_config=cfg, progress=log)
    res["decode"] = bench_decode(a.decode, a.patterns, sdpa=not a.no_sdpa, kernel_config=cfg, progress=log)
    res["seconds"] = time.time() - t0
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
