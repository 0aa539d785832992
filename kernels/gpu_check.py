"""One GPU call: correctness of every kernel vs a float64 reference, then a tile sweep.

``python -m kernels.gpu_check --out DIR`` writes ``check.json`` and ``sweep.json``
and prints a short table. Used while tuning (see kernels/NOTES.md); the figures
come from the notebook.
"""
from __future__ import annotations

import argparse
import json
import math
import time

import torch

from lib import masks

from . import get_layout, plan, sparse_attention, sparse_decode
from .benchmark import _bench, _rel, bench_prefill, measure_peaks, pattern_config
from .reference import reference_attention


def correctness(log, quick=False, kernel_config=None, dtypes=(torch.bfloat16, torch.float16, torch.float32)):
    plan.POISON = True
    rows = []
    g = torch.Generator(device="cuda").manual_seed(1)
    cases = [(1000, 256, 8, 2, 128), (777, 64, 6, 3, 64), (4096, 256, 28, 4, 128), (333, 32, 4, 4, 64)]
    if quick:
        cases = [(1000, 256, 8, 2, 128), (333, 32, 4, 4, 64)]
    for dtype in dtypes:
        for S, bs, Hq, Hkv, D in cases:
            if dtype == torch.float32 and S > 1000:
                continue
            nb = math.ceil(S / bs)
            for pattern in masks.PATTERNS:
                cfg = pattern_config(pattern, nb)
                lay = get_layout(pattern, S, bs, **cfg)
                B = 1 if S > 2000 else 2
                q = torch.randn(B, Hq, S, D, device="cuda", dtype=dtype, generator=g)
                k = torch.randn(B, Hkv, S, D, device="cuda", dtype=dtype, generator=g)
                v = torch.randn(B, Hkv, S, D, device="cuda", dtype=dtype, generator=g)
                do = torch.randn_like(q)
                qq, kk, vv = (t.detach().requires_grad_() for t in (q, k, v))
                out, lse = sparse_attention(qq, kk, vv, pattern, bs, backend="triton", return_lse=True,
                                            kernel_config=kernel_config, **cfg)
                out.backward(do)
                torch.cuda.synchronize()
                qr, kr, vr = (t.detach().double().requires_grad_() for t in (q, k, v))
                ref, rlse = reference_attention(qr, kr, vr, lay, bs, return_lse=True)
                ref.backward(do.double())
                T = 3
                dec = sparse_decode(q[:, :, -T:], k, v, pattern, bs, backend="triton", **cfg)
                row = dict(cfg=kernel_config, dtype=str(dtype)[6:], S=S, bs=bs, Hq=Hq, Hkv=Hkv, D=D, pattern=pattern,
                           out=_rel(out.double(), ref), lse=_rel(lse.double(), rlse),
                           dq=_rel(qq.grad.double(), qr.grad), dk=_rel(kk.grad.double(), kr.grad),
                           dv=_rel(vv.grad.double(), vr.grad), dec=_rel(dec.double(), ref[:, :, -T:]),
                           nan=bool(out.isnan().any() or qq.grad.isnan().any() or kk.grad.isnan().any()
                                    or vv.grad.isnan().any() or dec.isnan().any()))
                rows.append(row)
                worst = max(row[x] for x in ("out", "dq", "dk", "dv", "dec"))
                if worst > (2e-2 if dtype == torch.bfloat16 else 3e-3) or row["nan"]:
                    log(dict(BAD=row))
    plan.POISON = False
    return rows


def sweep(log, lengths=(32768, 131072)):
    rows = []
    fwd_cfgs = [(128, 128, 8, 3, 0), (128, 128, 8, 3, 1), (128, 64, 8, 3, 1), (128, 128, 8, 2, 1),
                (128, 128, 8, 4, 0), (128, 64, 4, 3, 1), (64, 128, 4, 3, 1), (128, 64, 8, 3, 0)]
    g = torch.Generator(device="cuda").manual_seed(0)
    for S in lengths:
        q = torch.randn(1, 28, S, 128, device="cuda", dtype=torch.bfloat16, generator=g)
        k = torch.randn(1, 4, S, 128, device="cuda", dtype=torch.bfloat16, generator=g)
        v = torch.randn(1, 4, S, 128, device="cuda", dtype=torch.bfloat16, generator=g)
        for pattern in ("power", "sliding_window"):
            for bm, bn, w, st, tma in fwd_cfgs:
                kc = dict(fwd_BLOCK_M=bm, fwd_BLOCK_N=bn, fwd_num_warps=w, fwd_num_stages=st, fwd_tma=tma)
                try:
                    with torch.no_grad():
                        ms = _bench(lambda: sparse_attention(q, k, v, pattern, 256, backend="triton", kernel_config=kc))
                except Exception as e:  # out of shared memory etc.
                    ms = float("nan")
                    log(dict(fail=str(e)[:200], cfg=kc))
                rows.append(dict(kind="fwd", S=S, pattern=pattern, cfg=kc, ms=ms))
                log(rows[-1])
        del q, k, v
    S = 32768
    q = torch.randn(1, 28, S, 128, device="cuda", dtype=torch.bfloat16, generator=g, requires_grad=True)
    k = torch.randn(1, 4, S, 128, device="cuda", dtype=torch.bfloat16, generator=g, requires_grad=True)
    v = torch.randn(1, 4, S, 128, device="cuda", dtype=torch.bfloat16, generator=g, requires_grad=True)
    do = torch.randn_like(q)
    bwd_cfgs = [dict(), dict(dq_BLOCK_M=64, dq_num_warps=4), dict(dq_BLOCK_M=64, dq_BLOCK_N=128, dq_num_warps=4),
                dict(dkdv_BLOCK_N=64, dkdv_BLOCK_M=64, dkdv_num_warps=4), dict(dkdv_BLOCK_N=128, dkdv_BLOCK_M=32, dkdv_num_warps=4),
                dict(dkdv_BLOCK_N=64, dkdv_BLOCK_M=64, dkdv_num_warps=4, dkdv_num_stages=3),
                dict(dq_num_stages=3), dict(dkdv_BLOCK_N=64, dkdv_BLOCK_M=64, dkdv_num_warps=4, dq_BLOCK_M=64, dq_num_warps=4)]
    for kc in bwd_cfgs:
        try:
            ms = _bench(lambda: torch.autograd.backward(
                sparse_attention(q, k, v, "power", 256, backend="triton", kernel_config=kc), do))
        except Exception as e:
            ms = float("nan")
            log(dict(fail=str(e)[:200], cfg=kc))
        rows.append(dict(kind="fwd_bwd", S=S, pattern="power", cfg=kc, ms=ms))
        log(rows[-1])
    # Decode variants at 8K and 128K.
    for S, kc in [(S_, kc_) for S_ in (8192, 131072) for kc_ in (
            dict(), dict(BLOCK_N=128), dict(num_splits=16), dict(num_splits=32), dict(BLOCK_N=128, num_splits=16),
            dict(BLOCK_N=32), dict(num_warps=2))]:
        qd = torch.randn(1, 28, 1, 128, device="cuda", dtype=torch.bfloat16, generator=g)
        kd = torch.randn(1, 4, S, 128, device="cuda", dtype=torch.bfloat16, generator=g)
        vd = torch.randn(1, 4, S, 128, device="cuda", dtype=torch.bfloat16, generator=g)
        with torch.no_grad():
            f = lambda: sparse_decode(qd, kd, vd, "power", 256, backend="triton", kernel_config=kc)
            f()
            us = _bench(f, cudagraph=True) * 1e3
            us_eager = _bench(f) * 1e3
        rows.append(dict(kind="decode", S=S, pattern="power", cfg=kc, us=us, us_eager=us_eager))
        log(rows[-1])
    return rows


def sweep_bwd(log):
    rows = []
    g = torch.Generator(device="cuda").manual_seed(0)
    for S in (32768,):
        q = torch.randn(1, 28, S, 128, device="cuda", dtype=torch.bfloat16, generator=g, requires_grad=True)
        k = torch.randn(1, 4, S, 128, device="cuda", dtype=torch.bfloat16, generator=g, requires_grad=True)
        v = torch.randn(1, 4, S, 128, device="cuda", dtype=torch.bfloat16, generator=g, requires_grad=True)
        do = torch.randn_like(q)
        cfgs = [dict(), dict(dq_tma=1), dict(dkdv_tma=1), dict(dq_tma=1, dkdv_tma=1),
                dict(dq_tma=1, dkdv_tma=1, dkdv_BLOCK_N=128, dkdv_num_warps=8),
                dict(dq_tma=1, dkdv_tma=1, dq_BLOCK_N=128, dq_num_warps=8, dq_num_stages=2),
                dict(dq_tma=1, dkdv_tma=1, dkdv_BLOCK_M=64, dkdv_BLOCK_N=128, dkdv_num_warps=8, dkdv_num_stages=3)]
        if S > 32768:
            cfgs = cfgs[:4]
        for kc in cfgs:
            try:
                with torch.no_grad():
                    fwd = _bench(lambda: sparse_attention(q, k, v, "power", 256, backend="triton", kernel_config=kc))
                ms = _bench(lambda: torch.autograd.backward(
                    sparse_attention(q, k, v, "power", 256, backend="triton", kernel_config=kc), do))
            except Exception as e:
                ms = fwd = float("nan")
                log(dict(fail=str(e)[:300], cfg=kc))
            rows.append(dict(kind="fwd_bwd", S=S, pattern="power", cfg=kc, ms=ms, fwd_ms=fwd))
            log(rows[-1])
        del q, k, v, do
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=".")
    p.add_argument("--skip-check", action="store_true")
    p.add_argument("--baselines", action="store_true")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--bwd-only", action="store_true")
    a = p.parse_args()
    log = lambda r: print(json.dumps(r), flush=True)
    t0 = time.time()
    if a.bwd_only:
        res = dict(check=correctness(log, quick=True, kernel_config=dict(dq_tma=1, dkdv_tma=1),
                                     dtypes=(torch.bfloat16, torch.float32)))
        print("worst", max(max(r[x] for x in ("out", "dq", "dk", "dv", "dec")) for r in res["check"]), flush=True)
        res["sweep_bwd"] = sweep_bwd(log)
        with open(f"{a.out}/gpu_check.json", "w") as f:
            json.dump(res, f, indent=1)
        return
    res = dict(peaks=measure_peaks())
    log(res["peaks"])
    if not a.skip_check:
        res["check"] = correctness(log, quick=a.quick)
        res["check"] += correctness(log, quick=True, kernel_config=dict(fwd_tma=1))
        worst = {}
        for r in res["check"]:
            for key in ("out", "dq", "dk", "dv", "dec"):
                worst[(r["dtype"], key)] = max(worst.get((r["dtype"], key), 0), r[key])
        print("worst rel err:", {f"{a_}/{b_}": f"{v:.2e}" for (a_, b_), v in worst.items()}, flush=True)
        print(f"check done {time.time() - t0:.0f}s", flush=True)
    res["sweep"] = sweep(log)
    print(f"sweep done {time.time() - t0:.0f}s", flush=True)
    if a.baselines:
        res["baselines"] = bench_prefill([32768, 131072], ["power", "sliding_window"], modes=("fwd",), progress=log)
        res["baselines"] += bench_prefill([32768], ["power"], modes=("fwd_bwd",), progress=log)
    print(f"all done {time.time() - t0:.0f}s", flush=True)
    with open(f"{a.out}/gpu_check.json", "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
