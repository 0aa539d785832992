"""Side-by-side attention benchmark (Figure 4b): ours vs dense SDPA vs FlexAttention.

Used by ``notebooks/08_figure4b_kernels.ipynb`` and ``scripts/kernel_check.py``, and
runnable as a script on the GPU machine (``python -m kernels.benchmark --out
results.json``). All ratios come from one process on one GPU. FLOPs are counted
on the token pairs the mask keeps (4*D per pair forward, 3.5x that forward +
backward); the block-count bound is dense causal blocks / selected blocks: the
speed-up over dense attention a kernel at the same efficiency per computed
block would get. Every pattern runs with its Section 4.1 budget at the
benchmark length (``lib.masks.section41_config(pattern, num_blocks)``: stride
slash keeps its 3 slash blocks). ``kernel_claims`` turns a results dict into the
claim rows of ``lib.claims`` (the paper's 21.6x, and our own kernel targets).

Public: ``measure_peaks``, ``check_errors``, ``bench_prefill`` (with ``FLEX_CONFIGS``: the FlexAttention
baseline is the fastest of several ``kernel_options``, ``best_flex_rows``), ``bench_decode``,
``kernel_claims``, and the helpers ``bench_ms``, ``rel_err``, ``random_qkv``,
``count_pairs``, ``block_bound``.
"""
from __future__ import annotations

import argparse
import json
import math
import time

import torch
from tqdm.auto import tqdm

from lib import masks
from lib.claims import check
from lib.masks.flex import causal_mask_mod

from . import get_layout, sparse_attention, sparse_decode
from .reference import reference_attention

#: The paper's Figure 4b (A800): PowerAttention's kernel vs full attention, forward, 128K.
PAPER_SPEEDUP_128K = 21.6
#: The project's own engineering targets for these kernels (not the paper's), checked by ``kernel_claims``.
TARGETS = dict(fwd_vs_flex=1.25,        # forward >= 1.25x the best FlexAttention configuration, 16K and longer
               fwd_vs_sdpa_128k=22.0,   # forward >= 22x dense SDPA at 128K (PowerAttention)
               fwd_tflops=500.0,        # forward TFLOP/s on kept pairs at the longest length (PowerAttention)
               fwd_bwd_vs_flex=1.3,     # forward + backward >= 1.3x the best Flex configuration, 16K-64K
               decode_us=4.0,           # batch-1 decode <= 4 us per call (CUDA-graph replay) at every context
               decode_flat=1.5,         # decode time at 128K <= 1.5x that at 8K (PowerAttention)
               decode_bw=0.75)          # decode at 128K, batch >= 16, reads its bytes at >= 75% of the copy rate
#: Issue 11 (session 4) raised fwd_bwd_vs_flex from 1.2 and decode_bw from 0.70 to the issue's numbers, added
#: fwd_tflops and decode_us, and extended fwd_vs_flex down to 16K, before the run they judge.
#: FlexAttention configurations timed side by side (``bench_prefill(flex_configs=...)``); the fastest per
#: (length, mode, pattern) is the "flex" baseline of every ratio and claim, so ours is compared with the best
#: Flex we found, not its default. ``None``: Flex's own choice. Keys are ``kernel_options`` of
#: ``flex_attention``; a configuration Flex rejects for a shape or mode is recorded with its error and skipped.
FLEX_CONFIGS = {
    "default": None,
    "tma_128x128_w8_s3": dict(USE_TMA=True, BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3),
    "tma_128x64_w4_s2": dict(USE_TMA=True, BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=2),
    "128x64_w4_s3": dict(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=3),
}
#: Largest relative error vs the reference accepted per input dtype (``kernel_claims``' sanity row).
ERROR_TOL = {"bfloat16": 2e-2, "float16": 3e-3, "float32": 1e-4}


def section41(pattern: str, num_blocks: int) -> dict:
    """The Section 4.1 config of ``pattern`` at ``num_blocks`` blocks (the benchmark length's block count)."""
    return masks.section41_config(pattern, num_blocks)


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


def rel_err(a, b) -> float:
    """``||a - b|| / ||b||``, computed in float32."""
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm())


def capture_graph(fn):
    """``(graph, out)``: ``fn`` run once on a side stream (Triton compiles, caches and lazily built tables are
    made outside the capture), then captured into a CUDA graph; ``out`` is what the captured call returned,
    rewritten by every ``graph.replay()``."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


def bench_ms(fn, cudagraph=False) -> float:
    """Median milliseconds per call (``triton.testing``); ``cudagraph``: as replays of one captured graph."""
    from triton.testing import do_bench, do_bench_cudagraph

    if cudagraph:
        return do_bench_cudagraph(fn, rep=100, return_mode="median")
    return do_bench(fn, warmup=25, rep=200, return_mode="median")


def random_qkv(batch, Hq, Hkv, S, D, *, dtype=torch.bfloat16, device="cuda", generator=None, q_len=None):
    """Fresh standard-normal q ``[batch, Hq, q_len or S, D]`` and k, v ``[batch, Hkv, S, D]``."""
    shape = lambda heads, n: (batch, heads, n, D)
    q = torch.randn(*shape(Hq, S if q_len is None else q_len), device=device, dtype=dtype, generator=generator)
    k = torch.randn(*shape(Hkv, S), device=device, dtype=dtype, generator=generator)
    v = torch.randn(*shape(Hkv, S), device=device, dtype=dtype, generator=generator)
    return q, k, v


def best_flex_rows(rows: list[dict]) -> list[dict]:
    """One "flex" row per (length, mode, pattern): the fastest of the ``flex[<config>]`` rows that ran, with
    ``flex_config`` naming it (``bench_prefill`` appends these to its rows)."""
    best = {}
    for r in rows:
        if r["method"].startswith("flex[") and r.get("ms") is not None:
            key = (r["length"], r["mode"], r["pattern"])
            if key not in best or r["ms"] < best[key]["ms"]:
                best[key] = r
    return [dict(r, method="flex", flex_config=r["method"][len("flex["):-1]) for r in best.values()]


def _dynamo_limits():
    """Every (configuration, length, mask) is a separate compilation of flex_attention: lift dynamo's recompile
    limits for the benchmark so none of them silently falls back to eager Flex."""
    import torch._dynamo.config as dc

    names = [n for n in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                         "accumulated_cache_size_limit") if hasattr(dc, n)]
    return dc.patch(**{n: 4096 for n in names})


def bench_prefill(lengths, patterns, modes=("fwd", "fwd_bwd"), *, Hq=28, Hkv=4, D=128, batch=1, block_size=256,
                  dtype=torch.bfloat16, flex_patterns=("power", "sliding_window"), kernel_config=None,
                  sdpa=True, flex=True, flex_configs=None, seed=0, progress=None):
    """Rows of {length, mode, method, pattern, ms, tflops, pairs, bound}; ``kernel_config``: tile overrides
    (``kernels.tiles``) of our kernels. ``flex_configs``: {name: kernel_options or None} timed side by side
    (default: only Flex's own choice); each gives ``flex[<name>]`` rows, and ``flex`` rows are the fastest of
    them (``best_flex_rows``)."""
    with _dynamo_limits():
        rows = _bench_prefill(lengths, patterns, modes, Hq, Hkv, D, batch, block_size, dtype, flex_patterns,
                              kernel_config, sdpa, flex, flex_configs or {"default": None}, seed, progress)
    return rows + best_flex_rows(rows)


def _bench_prefill(lengths, patterns, modes, Hq, Hkv, D, batch, block_size, dtype, flex_patterns, kernel_config,
                   sdpa, flex, flex_configs, seed, progress):
    from torch.nn.attention.flex_attention import flex_attention

    def compiled(opts):  # one compiled function per configuration
        def run(q, k, v, block_mask):
            return flex_attention(q, k, v, block_mask=block_mask, enable_gqa=True, kernel_options=opts)
        return torch.compile(run, dynamic=False)

    flex_fns = {name: compiled(opts) for name, opts in flex_configs.items()} if flex else {}
    rows = []
    g = torch.Generator(device="cuda").manual_seed(seed)
    for S in tqdm(lengths, desc=f"prefill {'+'.join(modes)}"):
        nb = math.ceil(S / block_size)
        q, k, v = random_qkv(batch, Hq, Hkv, S, D, dtype=dtype, generator=g)
        do = torch.randn_like(q)
        dense_pairs = S * (S + 1) // 2
        for mode in modes:
            mult = 1.0 if mode == "fwd" else 3.5

            def add(method, pattern, ms, pairs, bound, **extra):
                flops = 4 * D * Hq * batch * pairs * mult
                rows.append(dict(length=S, mode=mode, method=method, pattern=pattern, ms=ms,
                                 tflops=None if ms is None else flops / ms / 1e9, pairs=pairs, bound=bound, **extra))
                if progress:
                    progress(rows[-1])

            if sdpa:
                ke, ve = k.repeat_interleave(Hq // Hkv, 1), v.repeat_interleave(Hq // Hkv, 1)
                f = lambda qq=q, kk=ke, vv=ve: torch.nn.functional.scaled_dot_product_attention(qq, kk, vv, is_causal=True)
                if mode == "fwd":
                    with torch.no_grad():
                        ms = bench_ms(f)
                else:
                    qq, kk, vv = (t.detach().requires_grad_() for t in (q, ke, ve))
                    ms = bench_ms(lambda: torch.autograd.backward(
                        torch.nn.functional.scaled_dot_product_attention(qq, kk, vv, is_causal=True), do))
                    del qq, kk, vv
                add("sdpa", "full", ms, dense_pairs, 1.0)
                del ke, ve
            for pattern in patterns:
                cfg = section41(pattern, nb)
                layout = get_layout(pattern, S, block_size, **cfg)
                pairs, bound = count_pairs(layout, S, block_size), block_bound(layout)
                ours = lambda qq, kk, vv: sparse_attention(qq, kk, vv, pattern, block_size, backend="triton",
                                                           kernel_config=kernel_config, **cfg)
                if mode == "fwd":
                    with torch.no_grad():
                        ms = bench_ms(lambda: ours(q, k, v))
                else:
                    qq, kk, vv = (t.detach().requires_grad_() for t in (q, k, v))
                    ms = bench_ms(lambda: torch.autograd.backward(ours(qq, kk, vv), do))
                add("ours", pattern, ms, pairs, bound)
                if flex and pattern in flex_patterns:
                    # Causal on partial tiles: exact in compiled Flex, and its cheapest BlockMask.
                    bm = masks.flex_block_mask(layout, S, block_size, "cuda", mask_mod=causal_mask_mod)
                    for name, fn in flex_fns.items():
                        fx = lambda qq, kk, vv, fn=fn: fn(qq, kk, vv, bm)
                        try:
                            if mode == "fwd":
                                with torch.no_grad():
                                    fx(q, k, v)
                                    ms = bench_ms(lambda: fx(q, k, v))
                            else:
                                qq, kk, vv = (t.detach().requires_grad_() for t in (q, k, v))
                                ms = bench_ms(lambda: torch.autograd.backward(fx(qq, kk, vv), do))
                            add(f"flex[{name}]", pattern, ms, pairs, bound)
                        except Exception as e:  # noqa: BLE001  (a configuration Flex cannot compile here)
                            add(f"flex[{name}]", pattern, None, pairs, bound, error=f"{type(e).__name__}: {e}"[:300])
        del q, k, v, do
        torch.cuda.empty_cache()
    return rows


def bench_decode(contexts, patterns, *, tokens=1, Hq=28, Hkv=4, D=128, batch=1, block_size=256,
                 dtype=torch.bfloat16, kernel_config=None, sdpa=True, seed=0, progress=None):
    """Rows of {context, method, pattern, us, bytes, GBps, blocks}; timed as CUDA-graph replays.
    ``kernel_config``: tile overrides (``kernels.tiles``, its ``"decode"`` entry)."""
    rows = []
    g = torch.Generator(device="cuda").manual_seed(seed)
    for S in tqdm(contexts, desc=f"decode batch {batch}"):
        nb = math.ceil(S / block_size)
        q, k, v = random_qkv(batch, Hq, Hkv, S, D, dtype=dtype, generator=g, q_len=tokens)
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
                    add("sdpa", "full", bench_ms(f, cudagraph=True), 2 * k.numel() * el + io, nb)
            for pattern in patterns:
                cfg = section41(pattern, nb)
                layout = get_layout(pattern, S, block_size, **cfg)
                rows_sel = layout[[(S - tokens + t) // block_size for t in range(tokens)]].any(0)
                sel = torch.nonzero(rows_sel).flatten()
                tok = int(torch.clamp(S - sel * block_size, max=block_size).sum())
                nbytes = 2 * batch * Hkv * tok * D * el + io
                f = lambda: sparse_decode(q, k, v, pattern, block_size, backend="triton",
                                          kernel_config=kernel_config, **cfg)
                f()
                add("ours", pattern, bench_ms(f, cudagraph=True), nbytes, int(sel.numel()))
        del q, k, v
        torch.cuda.empty_cache()
    return rows


def check_errors(lengths, patterns, *, Hq=28, Hkv=4, D=128, block_size=256, dtype=torch.bfloat16,
                 grad_lengths=(), decode=True, kernel_config=None, seed=0, device="cuda", backend="triton",
                 chunk_rows=None, progress=None):
    """Relative error ||ours - ref|| / ||ref|| of the forward (and gradients, decode) per case.

    ``kernel_config``: tile overrides (``kernels.tiles``), for every Triton call.

    The reference runs on the same bf16/fp16 inputs upcast to float32 (float64 on
    CPU), in query chunks of one mask block so long lengths fit in memory.
    """
    rows = []
    g = torch.Generator(device=device).manual_seed(seed)
    cdt = torch.float64 if device == "cpu" else torch.float32
    chunk = chunk_rows or block_size
    for S in tqdm(sorted(set(lengths) | set(grad_lengths)), desc="errors vs reference"):
        nb = math.ceil(S / block_size)
        q, k, v = random_qkv(1, Hq, Hkv, S, D, dtype=dtype, device=device, generator=g)
        for pattern in patterns:
            cfg = section41(pattern, nb)
            layout = get_layout(pattern, S, block_size, **cfg)
            row = dict(length=S, pattern=pattern, dtype=str(dtype).replace("torch.", ""))
            if S in lengths:
                with torch.no_grad():
                    out = sparse_attention(q, k, v, pattern, block_size, backend=backend, kernel_config=kernel_config,
                                           **cfg)
                    ref = reference_attention(q, k, v, layout, block_size, compute_dtype=cdt, chunk_size=chunk)
                row.update(fwd_rel_err=rel_err(out, ref), nan=bool(torch.isnan(out).any()))
                if decode:
                    T = 1
                    with torch.no_grad():
                        od = sparse_decode(q[:, :, -T:], k, v, pattern, block_size, backend=backend,
                                           kernel_config=kernel_config, **cfg)
                    row.update(decode_rel_err=rel_err(od, ref[:, :, -T:]))
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
                row.update(grad_rel_err=dict(dq=rel_err(qq.grad, qr.grad), dk=rel_err(kk.grad, kr.grad),
                                             dv=rel_err(vv.grad, vr.grad)))
                del qq, kk, vv, qr, kr, vr, out, ref
            rows.append(row)
            if progress:
                progress(row)
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def _ratios(prefill_rows, mode, baseline, baseline_pattern=None):
    """{(length, pattern): ``baseline`` method's ms / ours} over our rows of ``mode`` (the baseline on the same
    pattern, or on ``baseline_pattern``: dense SDPA runs as "full")."""
    ms = {(r["mode"], r["length"], r["method"], r["pattern"]): r["ms"] for r in prefill_rows}
    out = {}
    for (m, length, method, pattern), t in ms.items():
        if m != mode or method != "ours":
            continue
        other = ms.get((mode, length, baseline, baseline_pattern or pattern))
        if other is not None and t:
            out[(length, pattern)] = other / t
    return out


def _series(ratios, patterns, lengths) -> str:
    parts = []
    for p in patterns:
        vals = [ratios[(L, p)] for L in lengths if (L, p) in ratios]
        if vals:
            parts.append(f"{masks.LABELS.get(p, p)} " + " / ".join(f"{x:.2f}" for x in vals))
    return "; ".join(parts) + f" (at {' / '.join(f'{L // 1024}K' for L in lengths)})"


def _vs_flex_claim(prefill_rows, mode, target, flex_patterns, min_length=0, max_length=None):
    """The target "ours >= ``target`` x FlexAttention on the same block mask" over every length in
    [``min_length``, ``max_length``]. "flex" rows are the fastest Flex configuration run (``best_flex_rows``)."""
    ratios = {k: v for k, v in _ratios(prefill_rows, mode, "flex").items()
              if k[0] >= min_length and (max_length is None or k[0] <= max_length) and k[1] in flex_patterns}
    lengths = sorted({k[0] for k in ratios})
    what = {"fwd": "forward", "fwd_bwd": "forward + backward"}[mode]
    longer = f", at {min_length // 1024}K and longer" if min_length else ""
    if max_length is not None:
        longer = f", at {min_length // 1024}K-{max_length // 1024}K"
    return check(
        f"target_{mode}_vs_flex", f"Engineering target (ours, not the paper's): {what} >= {target}x FlexAttention "
        f"on the same block mask{longer}", paper="– (project target)",
        ours=(_series(ratios, flex_patterns, lengths) + _flex_which(prefill_rows, mode)) if ratios else "not measured",
        holds=min(ratios.values()) >= target if ratios else None,
        rule=f"FlexAttention time (its fastest configuration) / ours >= {target} for every pattern with a Flex run "
             f"and every length{longer.replace(', at', ' at') if longer else ''}")


def _flex_which(prefill_rows, mode) -> str:
    """Which Flex configuration the ratios are against: the fastest of a sweep (named), or Flex's default."""
    names = sorted({r["flex_config"] for r in prefill_rows if r["method"] == "flex" and r["mode"] == mode
                    and r.get("flex_config")})
    swept = len({r["method"] for r in prefill_rows if r["method"].startswith("flex[")})
    if names:
        return f"; vs the fastest of {swept} Flex configurations ({', '.join(names)})"
    return "; vs FlexAttention's default configuration (no sweep in this run)"


def _error_claim(errors, device):
    worst, worst_dtype = None, None
    ok = True
    for row in errors:
        vals = [row.get("fwd_rel_err"), row.get("decode_rel_err"), *(row.get("grad_rel_err") or {}).values()]
        vals = [v for v in vals if v is not None]
        tol = ERROR_TOL.get(row.get("dtype"), min(ERROR_TOL.values()))
        if row.get("nan") or any(not math.isfinite(v) or v > tol for v in vals):
            ok = False
        for v in vals:
            if worst is None or v > worst:
                worst, worst_dtype = v, row.get("dtype")
    rule = ("worst relative error vs the reference over forward, dQ/dK/dV and decode, every pattern and length "
            f"checked, <= {', '.join(f'{v:g} ({k})' for k, v in ERROR_TOL.items())}, and no NaN")
    ours = "not measured" if worst is None else f"{worst:.2e} ({worst_dtype}, {device}, {len(errors)} cases)"
    return check("sanity_kernel_errors", "Our Triton kernels compute the masked attention of the layout "
                 "(checked against a dense reference)", paper="–", ours=ours, holds=ok if worst is not None else None,
                 rule=rule, kind="sanity")


def kernel_claims(results, errors=None, *, targets=None, paper_speedup_128k=PAPER_SPEEDUP_128K,
                  flex_patterns=("power", "sliding_window"), errors_device=None) -> list[dict]:
    """Claim rows (``lib.claims.check``) from a benchmark results dict.

    ``results``: ``{"device", "peaks", "prefill", "decode", ...}`` as written by notebook 08 or by
    ``python -m kernels.benchmark`` (decode rows without ``batch`` count as batch 1), or None when
    there are no GPU results (the paper's claim is then inconclusive and no target row is made).
    ``errors``: rows of ``check_errors`` for the sanity row (default ``results["errors"]``), from
    ``errors_device`` (default ``results["device"]``). ``targets``: overrides of ``TARGETS``.

    Rows: ``fig4b_speedup_128k`` (the paper's 21.6x, compared directly: our GPU and kernel differ
    from theirs), the project's own targets ``target_*`` (not claims of the paper), and
    ``sanity_kernel_errors``.
    """
    t = dict(TARGETS, **(targets or {}))
    results = results or {}
    device = results.get("device", "GPU")
    claims = []
    pre, dec = results.get("prefill") or [], results.get("decode") or []
    fwd_len = sorted({r["length"] for r in pre if r["mode"] == "fwd"})
    L = fwd_len[-1] if fwd_len else None
    vs_sdpa = _ratios(pre, "fwd", "sdpa", "full")
    bound = {(r["length"], r["pattern"]): r["bound"] for r in pre if r["method"] == "ours" and r["mode"] == "fwd"}
    s128 = vs_sdpa.get((L, "power"))
    why_not = None if pre else "no GPU results (run notebook 08 with the gpu profile)"
    if why_not is None and s128 is None:
        why_not = "no dense SDPA and PowerAttention forward rows at the same length"
    elif why_not is None and L != 131072:
        why_not = f"the longest forward length measured is {L}, not 131072 (128K)"
    claims.append(check(
        "fig4b_speedup_128k", "PowerAttention's attention kernel is 21.6x faster than full attention at 128K "
        "(forward, Figure 4b)", paper=f"{paper_speedup_128k}x (A800; their kernel vs FlashAttention)",
        ours=(f"{s128:.1f}x over dense causal SDPA ({device}); block-count bound {bound.get((L, 'power'), float('nan')):.1f}x"
              if s128 is not None else "not measured"),
        holds=None if s128 is None else s128 >= paper_speedup_128k,
        rule=f"our PowerAttention forward vs dense causal SDPA at 128K, one process on one GPU, >= the paper's "
             f"{paper_speedup_128k}x; compared directly although the GPUs differ (A800 there), and no kernel of equal "
             "per-block efficiency can beat the block-count bound",
        inconclusive=why_not))
    if not pre:
        if errors is not None:
            claims.append(_error_claim(errors, errors_device or "this run"))
        return claims

    claims.append(_vs_flex_claim(pre, "fwd", t["fwd_vs_flex"], flex_patterns, min_length=16384))
    claims.append(check(
        "target_fwd_vs_sdpa_128k", f"Engineering target (ours): PowerAttention forward >= {t['fwd_vs_sdpa_128k']}x "
        "dense SDPA at 128K", paper="– (project target)",
        ours=(f"{s128:.1f}x (block-count bound {bound.get((L, 'power'), float('nan')):.1f}x)"
              if s128 is not None else "not measured"),
        holds=None if s128 is None else s128 >= t["fwd_vs_sdpa_128k"],
        rule=f"dense SDPA time / ours at 128K >= {t['fwd_vs_sdpa_128k']}",
        inconclusive=why_not if s128 is not None and L != 131072 else None))
    tf = {r["length"]: r["tflops"] for r in pre if r["method"] == "ours" and r["mode"] == "fwd"
          and r["pattern"] == "power" and r.get("tflops")}
    claims.append(check(
        "target_fwd_tflops", f"Engineering target (ours): PowerAttention forward >= {t['fwd_tflops']:g} TFLOP/s on "
        "kept pairs at the longest length", paper="– (project target)",
        ours=f"{tf[L]:.0f} TFLOP/s at {L // 1024}K" if L in tf else "not measured",
        holds=None if L not in tf else tf[L] >= t["fwd_tflops"],
        rule=f"4 * head_dim * heads * kept (query, key) pairs / time >= {t['fwd_tflops']:g}e12 per second"))
    claims.append(_vs_flex_claim(pre, "fwd_bwd", t["fwd_bwd_vs_flex"], flex_patterns, min_length=16384,
                                 max_length=65536))

    ours_dec = {(r.get("batch", 1), r["context"]): r for r in dec if r["method"] == "ours" and r["pattern"] == "power"}
    copy = (results.get("peaks") or {}).get("copy_GBps")
    b1 = {c: r["us"] for (b, c), r in ours_dec.items() if b == 1}
    if b1:
        claims.append(check(
            "target_decode_us_batch1", f"Engineering target (ours): PowerAttention decode <= {t['decode_us']:g} us "
            "per call at batch 1, at every context", paper="– (project target)",
            ours=" / ".join(f"{b1[c]:.1f}" for c in sorted(b1)) + " us at " + " / ".join(
                f"{c // 1024}K" for c in sorted(b1)) + " (CUDA-graph replay)",
            holds=max(b1.values()) <= t["decode_us"],
            rule=f"the slowest context's time per call <= {t['decode_us']:g} us"))
    for b in sorted({key[0] for key in ours_dec}):
        top = max(c for bb, c in ours_dec if bb == b)
        at8k, at_top = ours_dec.get((b, 8192)), ours_dec[(b, top)]
        flat = at_top["us"] / at8k["us"] if at8k else None
        claims.append(check(
            f"target_decode_flat_batch{b}", f"Engineering target (ours): PowerAttention decode time at 128K "
            f"<= {t['decode_flat']}x that at 8K (batch {b})", paper="– (project target)",
            ours=(f"{flat:.2f}x ({at8k['us']:.1f} -> {at_top['us']:.1f} us per step, CUDA-graph replay)"
                  if flat is not None else "not measured"),
            holds=None if flat is None else flat <= t["decode_flat"],
            rule=f"time at the longest context / time at 8K <= {t['decode_flat']}",
            inconclusive=None if top == 131072 or flat is None else f"longest context {top}, not 128K"))
        frac = at_top["GBps"] / copy if copy else None
        if b < 16:  # batch 1 is latency-bound (a few tiles per program): the bandwidth target is for batch >= 16
            continue
        claims.append(check(
            f"target_decode_bw_batch{b}", f"Engineering target (ours): PowerAttention decode at 128K reads its "
            f"bytes at >= {t['decode_bw']:.0%} of the measured copy bandwidth (batch {b})", paper="– (project target)",
            ours=(f"{frac:.0%} ({at_top['bytes'] / 1e6:.1f} MB in {at_top['us']:.1f} us; copy {copy:.0f} GB/s)"
                  if frac is not None else "not measured"),
            holds=None if frac is None else frac >= t["decode_bw"],
            rule=f"bytes of the selected K/V blocks (+ q, out) / time / measured device copy rate >= {t['decode_bw']}",
            inconclusive=None if top == 131072 or frac is None else f"longest context {top}, not 128K"))
    errors = results.get("errors") if errors is None else errors
    if errors:
        claims.append(_error_claim(errors, errors_device or device))
    return claims


def sweep_claims(sweep: dict, targets=None) -> list[dict]:
    """Claim rows of an issue-11 sweep (``scripts/kernel_check.py --variants``: one process on one GPU).

    Its baselines time ours, dense SDPA and every Flex configuration (``FLEX_CONFIGS``) side by side, so the
    forward targets are judged here against the fastest Flex configuration (ids ``sweep_target_fwd_*``); its
    decode rows time the fused decode (``FUSED=1``) against the table's split + merge, alternately, and the row
    ``sweep_target_decode_us_batch1`` judges the faster of the two at batch 1 (PowerAttention, Qwen2-7B shape).
    """
    rows = (sweep.get("baselines") or {}).get("rows") or []
    t = dict(TARGETS, **(targets or {}))
    shape = (sweep.get("baselines") or {}).get("shape", "?")
    # The Qwen2-7B shape keeps the ids ``sweep_target_*``; another shape's rows get ``sweep_<shape>_target_*``.
    # The TFLOP/s target is set at head dim 128 (issue 11), so it is judged on the Qwen2-7B shape only.
    prefix = "sweep_" if shape in ("qwen2", "?") else f"sweep_{shape}_"
    has_bwd = any(r["mode"] == "fwd_bwd" and r["method"] == "flex" for r in rows)
    flex_patterns = tuple(sorted({r["pattern"] for r in rows if r["method"] == "flex"}))
    out = []
    for c in kernel_claims(dict(device=sweep.get("device", "GPU"), prefill=rows), targets=targets,
                           flex_patterns=flex_patterns):
        keep = c["id"].startswith("target_fwd") and (has_bwd or not c["id"].startswith("target_fwd_bwd"))
        if keep and not (c["id"] == "target_fwd_tflops" and prefix != "sweep_"):
            out.append(dict(c, id=prefix + c["id"], claim=c["claim"] + f" (issue-11 sweep, {shape} shape)"))
    dec = [r for r in sweep.get("rows", []) if r.get("kind") == "decode" and r.get("shape") == "qwen2"
           and r.get("batch") == 1]
    if dec:
        best = {}
        for r in dec:
            if r.get("correct", True) and (r["S"] not in best or r["us"] < best[r["S"]]["us"]):
                best[r["S"]] = r
        fused = {r["S"]: r["us"] for r in dec if r["variant"] == "fused"}
        table = {r["S"]: r["us"] for r in dec if r["variant"] == "table"}
        out.append(check(
            "sweep_target_decode_us_batch1", f"Engineering target (ours): PowerAttention decode <= {t['decode_us']:g} us "
            "per call at batch 1 (Qwen2-7B shape, CUDA-graph replay), the faster of split + merge and fused",
            paper="– (project target)",
            ours=" / ".join(f"{S // 1024}K: {table.get(S, float('nan')):.1f} us split + merge, "
                            f"{fused.get(S, float('nan')):.1f} us fused" for S in sorted(best)),
            holds=max(r["us"] for r in best.values()) <= t["decode_us"],
            rule=f"the faster variant's time per call <= {t['decode_us']:g} us at every context of the sweep"))
    return out


def decode_anatomy_rows(sweep: dict) -> list[dict]:
    """Flat rows of the ``decode_anatomy`` records of a ``kernel_check.py --variants`` run: per shape, context and
    decode setting, the CUDA-graph call time with the KV in L2 (``call_us``) and over rotating caches
    (``cold_call_us``), the split and merge kernels' own durations (profiler, eager calls) and the one- and
    two-kernel launch floors; ``launch_share`` is the part of the call that is neither kernel running."""
    out = []
    for r in sweep.get("rows", []):
        if r.get("kind") != "decode_anatomy":
            continue
        kern = r.get("kernels_us") or {}
        split = sum(v for k, v in kern.items() if "split" in k)
        merge = sum(v for k, v in kern.items() if "merge" in k)
        out.append(dict(shape=r["shape"], S=r["S"], variant=r["variant"], call_us=r["call_us"],
                        cold_call_us=r.get("cold_call_us"), split_us=split, merge_us=merge,
                        floor1_us=r["floor1_us"], floor2_us=r["floor2_us"],
                        launch_share=1 - (split + merge) / r["call_us"] if r["call_us"] else None))
    return out


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
    p.add_argument("--flex-sweep", action="store_true", help="time every FLEX_CONFIGS entry; Flex = the fastest")
    p.add_argument("--config", default=None,
                   help='JSON kernel_config (kernels.tiles), e.g. \'{"fwd": {"BLOCK_N": 64}, "bwd_chunk": 8}\'')
    a = p.parse_args(argv)
    cfg = json.loads(a.config) if a.config else None
    log = lambda r: print(json.dumps(r), flush=True)
    t0 = time.time()
    res = dict(peaks=measure_peaks())
    log(res["peaks"])
    sparse = [x for x in a.patterns if x != "full"]
    res["errors"] = check_errors(a.err_lengths, sparse, grad_lengths=a.grad_lengths, kernel_config=cfg, progress=log)
    fc = FLEX_CONFIGS if a.flex_sweep else None
    res["prefill"] = bench_prefill(a.lengths, a.patterns, modes=("fwd",), sdpa=not a.no_sdpa, flex=not a.no_flex,
                                   kernel_config=cfg, flex_configs=fc, progress=log)
    res["prefill"] += bench_prefill(a.bwd_lengths, a.patterns, modes=("fwd_bwd",), sdpa=not a.no_sdpa,
                                    flex=not a.no_flex, kernel_config=cfg, flex_configs=fc, progress=log)
    res["decode"] = bench_decode(a.decode, a.patterns, sdpa=not a.no_sdpa, kernel_config=cfg, progress=log)
    res["seconds"] = time.time() - t0
    res["device"] = torch.cuda.get_device_name(0)
    res["claims"] = kernel_claims(res)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
