"""Kernel check and tile sweep for the GPU machine: correctness of every kernel, then timings of tile settings.

    python scripts/kernel_check.py --out DIR                # H100: check, then the Qwen2-7B shape sweep
    python scripts/kernel_check.py --out DIR --shape smollm2  # the head-dim-64 shape (9 query / 3 KV heads)
    python scripts/kernel_check.py --out DIR --cpu          # no GPU: the check only, tiny sizes, interpreter

Writes ``DIR/check.json`` (one row per dtype, shape and pattern: relative errors of the output,
LSE, dQ, dK, dV and decode against a float64 reference, kernel outputs poisoned with NaN before
launch) and, on a GPU, ``DIR/sweep.json`` (one row per tile setting: ms or µs, the setting as
``kernel_config`` overrides, see ``kernels.tiles``), and prints the worst errors and each timing as
it goes. It is how the entries of ``kernels.tiles.TILES`` were chosen (kernels/NOTES.md); the
published figures come from notebook 08. Only public names are used: ``kernels.sparse_attention``,
``kernels.sparse_decode``, ``kernels.plan.poisoned_outputs``, ``kernels.tiles``, the helpers of
``kernels.benchmark`` and ``lib.masks``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: find kernels/ and lib/

if "--cpu" in sys.argv:  # the interpreter must be on before triton is first imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402
import triton  # noqa: E402

from kernels import get_layout, sparse_attention, sparse_decode  # noqa: E402
from kernels.benchmark import bench_ms, bench_prefill, measure_peaks, random_qkv, rel_err, section41  # noqa: E402
from kernels.plan import poisoned_outputs  # noqa: E402
from kernels.reference import reference_attention  # noqa: E402
from lib import masks  # noqa: E402

# (S, block_size, Hq, Hkv, D): odd lengths, GQA, both head dims the tables distinguish.
GPU_CASES = [(1000, 256, 8, 2, 128), (777, 64, 6, 3, 64), (4096, 256, 28, 4, 128), (333, 32, 4, 4, 64)]
QUICK_CASES = [(1000, 256, 8, 2, 128), (333, 32, 4, 4, 64)]
CPU_CASES = [(75, 16, 4, 2, 32), (50, 32, 3, 1, 64)]
CPU_TILES = {kernel: dict(BLOCK_M=16, BLOCK_N=16) for kernel in ("fwd", "dq", "dkdv")}
TOL = {torch.bfloat16: 2e-2, torch.float16: 3e-3, torch.float32: 1e-4}
# name -> (query heads, KV heads, head dim)
SHAPES = {"qwen2": (28, 4, 128), "smollm2": (9, 3, 64)}


def describe(kernel_config) -> dict | None:
    """A JSON form of a kernel_config (triton.Config -> its settings)."""
    if kernel_config is None:
        return None
    out = {}
    for key, value in kernel_config.items():
        if isinstance(value, triton.Config):
            value = dict(value.kwargs, num_warps=value.num_warps, num_stages=value.num_stages)
        out[key] = value
    return out


def correctness(log, cases, dtypes, device="cuda", kernel_config=None):
    """Forward (+ LSE), gradients and decode of every pattern vs a float64 reference, outputs poisoned."""
    rows = []
    g = torch.Generator(device=device).manual_seed(1)
    with poisoned_outputs():
        for dtype in dtypes:
            for S, bs, Hq, Hkv, D in cases:
                if dtype == torch.float32 and S > 1000:
                    continue
                for pattern in masks.PATTERNS:
                    cfg = section41(pattern, math.ceil(S / bs))
                    B = 1 if S > 2000 else 2
                    q, k, v = random_qkv(B, Hq, Hkv, S, D, dtype=dtype, device=device, generator=g)
                    do = torch.randn(q.shape, device=device, dtype=dtype, generator=g)
                    qq, kk, vv = (t.detach().requires_grad_() for t in (q, k, v))
                    out, lse = sparse_attention(qq, kk, vv, pattern, bs, backend="triton", return_lse=True,
                                                kernel_config=kernel_config, **cfg)
                    out.backward(do)
                    T = 3
                    with torch.no_grad():
                        dec = sparse_decode(q[:, :, -T:], k, v, pattern, bs, backend="triton",
                                            kernel_config=kernel_config, **cfg)
                    qr, kr, vr = (t.detach().double().requires_grad_() for t in (q, k, v))
                    ref, rlse = reference_attention(qr, kr, vr, get_layout(pattern, S, bs, **cfg), bs, return_lse=True)
                    ref.backward(do.double())
                    got = (out, qq.grad, kk.grad, vv.grad, dec)
                    row = dict(cfg=describe(kernel_config), dtype=str(dtype).replace("torch.", ""), S=S, bs=bs,
                               Hq=Hq, Hkv=Hkv, D=D, pattern=pattern,
                               out=rel_err(out.double(), ref), lse=rel_err(lse.double(), rlse),
                               dq=rel_err(qq.grad.double(), qr.grad), dk=rel_err(kk.grad.double(), kr.grad),
                               dv=rel_err(vv.grad.double(), vr.grad), dec=rel_err(dec.double(), ref[:, :, -T:]),
                               nan=bool(any(t.isnan().any() for t in got)))
                    rows.append(row)
                    worst = max(row[x] for x in ("out", "dq", "dk", "dv", "dec"))
                    if worst > TOL[dtype] or row["nan"]:
                        log(dict(BAD=row))
    return rows


def _time(log, rows, fn, unit="ms", **row):
    """Append ``row`` with ``fn()``'s timing under ``unit`` (NaN, logged, when the setting fails)."""
    try:
        value = fn()
    except Exception as e:  # out of shared memory etc.: record and go on
        value = float("nan")
        log(dict(fail=str(e)[:300], cfg=row.get("cfg")))
    rows.append(dict(row, **{unit: value}))
    log(rows[-1])


def fwd_config(bm, bn, warps, stages, tma):
    return {"fwd": triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "USE_TMA": tma}, num_warps=warps, num_stages=stages)}


def sweep(log, shape="qwen2", lengths=(32768, 131072)):
    """Forward tiles at two lengths, backward variants at 32K and decode variants at 8K / 128K."""
    Hq, Hkv, D = SHAPES[shape]
    rows = []
    fwd_cfgs = [(128, 128, 8, 3, 0), (128, 128, 8, 3, 1), (128, 64, 8, 3, 1), (128, 128, 8, 2, 1),
                (128, 128, 8, 4, 0), (128, 64, 4, 3, 1), (128, 64, 4, 2, 1), (64, 128, 4, 3, 1), (128, 64, 8, 3, 0)]
    g = torch.Generator(device="cuda").manual_seed(0)
    for S in lengths:
        q, k, v = random_qkv(1, Hq, Hkv, S, D, generator=g)
        for pattern in ("power", "sliding_window"):
            for setting in [None] + fwd_cfgs:  # None: the table's entry for this shape
                kc = None if setting is None else fwd_config(*setting)
                with torch.no_grad():
                    _time(log, rows, lambda: bench_ms(lambda: sparse_attention(q, k, v, pattern, 256, backend="triton",
                                                                                 kernel_config=kc)),
                          kind="fwd", shape=shape, S=S, pattern=pattern, cfg=describe(kc))
        del q, k, v
    S = 32768
    q, k, v = (t.requires_grad_() for t in random_qkv(1, Hq, Hkv, S, D, generator=g))
    do = torch.randn_like(q)
    bwd_cfgs = [None, {"dq": dict(BLOCK_M=64, num_warps=4)}, {"dq": dict(BLOCK_M=64, BLOCK_N=128, num_warps=4)},
                {"dq": dict(BLOCK_N=64)}, {"dq": dict(num_stages=3)}, {"dq": dict(USE_TMA=0), "dkdv": dict(USE_TMA=0)},
                {"dkdv": dict(BLOCK_M=32, BLOCK_N=128)}, {"dkdv": dict(BLOCK_N=128, num_warps=8)},
                {"dkdv": dict(num_stages=3)}, {"bwd_chunk": 8}, {"bwd_chunk": 32}]
    for kc in bwd_cfgs:
        _time(log, rows, lambda: bench_ms(lambda: torch.autograd.backward(
            sparse_attention(q, k, v, "power", 256, backend="triton", kernel_config=kc), do)),
              kind="fwd_bwd", shape=shape, S=S, pattern="power", cfg=describe(kc))
    del q, k, v, do
    for S in (8192, 131072):
        qd, kd, vd = random_qkv(1, Hq, Hkv, S, D, generator=g, q_len=1)
        for decode in (None, dict(BLOCK_N=128), dict(NUM_SPLITS=16), dict(NUM_SPLITS=32),
                       dict(BLOCK_N=128, NUM_SPLITS=16), dict(BLOCK_N=32), dict(num_warps=2)):
            kc = None if decode is None else {"decode": decode}
            f = lambda: sparse_decode(qd, kd, vd, "power", 256, backend="triton", kernel_config=kc)
            with torch.no_grad():
                f()
                _time(log, rows, lambda: bench_ms(f, cudagraph=True) * 1e3, unit="us", kind="decode", shape=shape,
                      S=S, pattern="power", cfg=describe(kc))
        del qd, kd, vd
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for check.json and sweep.json")
    p.add_argument("--shape", choices=sorted(SHAPES), default="qwen2", help="attention shape of the sweep")
    p.add_argument("--skip-check", action="store_true", help="timings only")
    p.add_argument("--skip-sweep", action="store_true", help="correctness only")
    p.add_argument("--quick", action="store_true", help="two correctness shapes instead of four")
    p.add_argument("--baselines", action="store_true", help="also time SDPA and FlexAttention (kernels.benchmark)")
    p.add_argument("--cpu", action="store_true", help="no GPU: the check at tiny sizes through the interpreter")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    log = lambda r: print(json.dumps(r), flush=True)
    t0 = time.time()
    if not a.skip_check:
        if a.cpu:
            check = correctness(log, CPU_CASES, (torch.float16, torch.float32), device="cpu",
                                kernel_config=CPU_TILES)
        else:
            cases = QUICK_CASES if a.quick else GPU_CASES
            check = correctness(log, cases, (torch.bfloat16, torch.float16, torch.float32))
            check += correctness(log, QUICK_CASES, (torch.bfloat16,), kernel_config={"fwd": dict(USE_TMA=0),
                                                                                      "dq": dict(USE_TMA=0),
                                                                                      "dkdv": dict(USE_TMA=0)})
        worst = {}
        for r in check:
            for key in ("out", "lse", "dq", "dk", "dv", "dec"):
                worst[(r["dtype"], key)] = max(worst.get((r["dtype"], key), 0.0), r[key])
        print("worst rel err:", {f"{d}/{k}": f"{v:.2e}" for (d, k), v in worst.items()},
              "NaN:", any(r["nan"] for r in check), flush=True)
        (out / "check.json").write_text(json.dumps(check, indent=1))
        print(f"check done {time.time() - t0:.0f}s -> {out / 'check.json'}", flush=True)
    if a.cpu or a.skip_sweep:
        return
    res = dict(device=torch.cuda.get_device_name(0), shape=a.shape, peaks=measure_peaks())
    log(res["peaks"])
    res["sweep"] = sweep(log, a.shape)
    if a.baselines:
        Hq, Hkv, D = SHAPES[a.shape]
        shape = dict(Hq=Hq, Hkv=Hkv, D=D)
        res["baselines"] = bench_prefill([32768, 131072], ["power", "sliding_window"], modes=("fwd",), progress=log,
                                         **shape)
        res["baselines"] += bench_prefill([32768], ["power"], modes=("fwd_bwd",), progress=log, **shape)
    (out / "sweep.json").write_text(json.dumps(res, indent=1))
    print(f"all done {time.time() - t0:.0f}s -> {out / 'sweep.json'}", flush=True)


if __name__ == "__main__":
    main()
