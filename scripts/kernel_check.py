"""Kernel check and tile sweep for the GPU machine: correctness of every kernel, then timings of tile settings.

    python scripts/kernel_check.py --out DIR                # H100: check, then the Qwen2-7B shape sweep
    python scripts/kernel_check.py --out DIR --shape smollm2  # the head-dim-64 shape (9 query / 3 KV heads)
    python scripts/kernel_check.py --out DIR --cpu          # no GPU: the check only, tiny sizes, interpreter
    python scripts/kernel_check.py --out DIR --variants     # H100: issue 11's candidate settings vs the table,
                                                            # both shapes; writes DIR/tiles_choice.json

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
from kernels.benchmark import (bench_ms, bench_prefill, capture_graph, measure_peaks, random_qkv, rel_err,  # noqa: E402
                               section41)
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


def decode_correctness(log, cases, dtypes, device="cuda", kernel_config=None, tokens=(1, 3)):
    """Decode of the last T tokens of every pattern vs a float64 reference, outputs poisoned (the forward and
    backward are not run: a check of decode settings alone)."""
    rows = []
    g = torch.Generator(device=device).manual_seed(2)
    with poisoned_outputs():
        for dtype in dtypes:
            for S, bs, Hq, Hkv, D in cases:
                for pattern in masks.PATTERNS:
                    cfg = section41(pattern, math.ceil(S / bs))
                    q, k, v = random_qkv(2, Hq, Hkv, S, D, dtype=dtype, device=device, generator=g)
                    ref = reference_attention(q.double(), k.double(), v.double(),
                                              get_layout(pattern, S, bs, **cfg), bs)
                    for T in tokens:
                        with torch.no_grad():
                            dec = sparse_decode(q[:, :, -T:], k, v, pattern, bs, backend="triton",
                                                kernel_config=kernel_config, **cfg)
                            again = sparse_decode(q[:, :, -T:], k, v, pattern, bs, backend="triton",
                                                  kernel_config=kernel_config, **cfg)
                        rows.append(dict(cfg=describe(kernel_config), dtype=str(dtype).replace("torch.", ""), S=S,
                                         bs=bs, Hq=Hq, Hkv=Hkv, D=D, pattern=pattern, T=T,
                                         dec=rel_err(dec.double(), ref[:, :, -T:]),
                                         repeat_identical=bool(torch.equal(dec, again)),
                                         nan=bool(dec.isnan().any())))
                        if rows[-1]["dec"] > TOL[dtype] or rows[-1]["nan"] or not rows[-1]["repeat_identical"]:
                            log(dict(BAD=rows[-1]))
    return rows


def graph_replay_check(log, kernel_config, shapes=(("qwen2", 1, 8192), ("qwen2", 16, 8192), ("smollm2", 1, 8192)),
                       rounds=3):
    """Decode replayed from a CUDA graph equals an eager call of the same setting, bit for bit, with q refilled
    before every replay, so a merge that read a previous replay's partials (a missing wait) shows."""
    rows = []
    g = torch.Generator(device="cuda").manual_seed(3)
    for shape, batch, S in shapes:
        Hq, Hkv, D = SHAPES[shape]
        q, k, v = random_qkv(batch, Hq, Hkv, S, D, generator=g, q_len=1)
        f = lambda: sparse_decode(q, k, v, "power", 256, backend="triton", kernel_config=kernel_config)
        with torch.no_grad():
            graph, out = capture_graph(f)
            same = []
            for _ in range(rounds):
                q.copy_(torch.randn(q.shape, device="cuda", dtype=q.dtype, generator=g))
                graph.replay()
                ref = sparse_decode(q, k, v, "power", 256, backend="triton", kernel_config=kernel_config)
                same.append(bool(torch.equal(out, ref)))
        rows.append(dict(kind="graph_check", shape=shape, batch=batch, S=S, cfg=describe(kernel_config),
                         identical=all(same)))
        log(rows[-1])
        del q, k, v
    return all(r["identical"] for r in rows), rows


def decode_anatomy(log, shape, settings, contexts=(8192, 131072), reps=50, caches=24):
    """Where a batch-1 decode call's time goes, per setting: the CUDA-graph replay time, each kernel's own
    duration (torch.profiler, eager calls) and the floors of one and two tiny kernels replayed from a graph.

    ``call_us`` replays one call on one cache, as ``bench_decode`` does: the few MB the call reads stay in
    the 50 MB L2 between replays. ``cold_call_us`` replays ``caches`` calls in turn over as many KV caches
    (more selected bytes than L2 holds), as in a model, where each layer's weights pass through L2 between
    two attention calls."""
    from torch.profiler import ProfilerActivity, profile
    from triton.testing import do_bench_cudagraph

    t = torch.zeros(1, device="cuda")
    floors = dict(floor1_us=do_bench_cudagraph(lambda: t.add_(1), rep=100, return_mode="median") * 1e3,
                  floor2_us=do_bench_cudagraph(lambda: t.add_(1).add_(1), rep=100, return_mode="median") * 1e3)
    rows = []
    Hq, Hkv, D = SHAPES[shape]
    g = torch.Generator(device="cuda").manual_seed(4)
    for S in contexts:
        q, k, v = random_qkv(1, Hq, Hkv, S, D, generator=g, q_len=1)
        rotating = [(torch.randn_like(k), torch.randn_like(v)) for _ in range(caches)]
        for name, kc in settings.items():
            f = lambda: sparse_decode(q, k, v, "power", 256, backend="triton", kernel_config=kc)
            with torch.no_grad():
                f()
                call_us = bench_ms(f, cudagraph=True) * 1e3
                torch.cuda.synchronize()
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    for _ in range(reps):
                        f()
                    torch.cuda.synchronize()
            kern = {}
            for e in prof.key_averages():
                if "decode" in e.key:
                    kern[e.key] = getattr(e, "device_time_total", getattr(e, "cuda_time_total", 0.0)) / max(e.count, 1)
            with torch.no_grad():
                cold = lambda: [sparse_decode(q, kc_, vc_, "power", 256, backend="triton", kernel_config=kc)
                                for kc_, vc_ in rotating]
                cold()
                cold_us = bench_ms(cold, cudagraph=True) * 1e3 / len(rotating)
            rows.append(dict(kind="decode_anatomy", shape=shape, S=S, batch=1, variant=name, call_us=call_us,
                             cold_call_us=cold_us, caches=len(rotating), kernels_us=kern, **floors))
            log(rows[-1])
        del q, k, v, rotating
        torch.cuda.empty_cache()
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


# Issue 11's candidates, each checked for correctness, then timed side by side with the table's entry. The rule
# that adopts one, fixed before the run: no error above TOL and no NaN on the check cases, and at least
# ADOPT_GAIN faster than the table's entry at every (length, pattern) timed for that shape (forward), or at
# batch 1 for every context and no more than ADOPT_GAIN slower at batch 16 (decode).
ADOPT_GAIN = 0.03
FWD_VARIANTS = {  # name -> "fwd" override per head dim
    "single_loop_ws": {128: {"WARP_SPEC": 1}, 64: {"WARP_SPEC": 1}},
    "128x64_w4_s2": {128: dict(BLOCK_N=64, num_warps=4, num_stages=2)},
    "128x64_w4_s2_ws": {128: dict(BLOCK_N=64, num_warps=4, num_stages=2, WARP_SPEC=1)},
}
DECODE_VARIANTS = {"fused": {"FUSED": 1}, "pdl": {"PDL": 1}, "pdl2": {"PDL": 2}}


def _alternating(fn_by_name, rounds=2):
    """Median-of-rounds ms per name, the candidates timed in turn (ABAB...) so drift hits them alike."""
    times = {name: [] for name in fn_by_name}
    for _ in range(rounds):
        for name, fn in fn_by_name.items():
            try:
                times[name].append(fn())
            except Exception as e:  # noqa: BLE001  (a setting that does not compile / fit: recorded)
                times[name].append(float("nan"))
                print(json.dumps(dict(fail=name, error=str(e)[:300])), flush=True)
    return {name: sorted(v)[len(v) // 2] for name, v in times.items()}


def variants(log, lengths=(32768, 131072), contexts=(8192, 131072), batches=(1, 16), fwd_variants=None,
             decode_variants=None, shapes=None):
    """Rows of forward and decode timings of the table's entries and the candidates, both shapes, and the
    ``POWERATTN_TILES`` entries the adoption rule picks."""
    from kernels.tiles import dtype_name, tiles_for

    rows, choice = [], []
    checked = {}  # a setting's check runs once: QUICK_CASES cover both head dims, whatever the shape timed

    def passes(kc, check_fn, dtypes, keys):
        key = json.dumps(describe(kc), sort_keys=True)
        if key not in checked:
            rows_ = check_fn(log, QUICK_CASES, dtypes, kernel_config=kc)
            checked[key] = all(max(r[x] for x in keys) <= TOL[getattr(torch, r["dtype"])] and not r["nan"]
                               and r.get("repeat_identical", True) for r in rows_)
            log(dict(check=key, cases=len(rows_), ok=checked[key], worst=max(max(r[x] for x in keys) for r in rows_)))
        return checked[key]

    g = torch.Generator(device="cuda").manual_seed(0)
    dv = DECODE_VARIANTS if decode_variants is None else {n: DECODE_VARIANTS[n] for n in decode_variants}
    for shape, (Hq, Hkv, D) in SHAPES.items():
        if shapes is not None and shape not in shapes:
            continue
        fv = FWD_VARIANTS if fwd_variants is None else {n: FWD_VARIANTS[n] for n in fwd_variants}
        cands = {name: {"fwd": per_dim[D]} for name, per_dim in fv.items() if D in per_dim}
        ok = {name: passes(kc, correctness, (torch.bfloat16, torch.float16), ("out", "dq", "dk", "dv", "dec"))
              for name, kc in cands.items()}
        gains = {name: [] for name in cands}
        for S in (lengths if cands else ()):
            q, k, v = random_qkv(1, Hq, Hkv, S, D, generator=g)
            for pattern in ("power", "sliding_window"):
                def timer(kc):
                    return lambda: bench_ms(lambda: sparse_attention(q, k, v, pattern, 256, backend="triton",
                                                                     kernel_config=kc))
                with torch.no_grad():
                    ms = _alternating({"table": timer(None), **{n: timer(kc) for n, kc in cands.items()}})
                for name, t in ms.items():
                    rows.append(dict(kind="fwd", shape=shape, S=S, pattern=pattern, variant=name, ms=t,
                                     correct=ok.get(name, True), speedup=ms["table"] / t))
                    log(rows[-1])
                    if name != "table":
                        gains[name].append(ms["table"] / t)
            del q, k, v
        good = {n: min(v) for n, v in gains.items() if ok[n] and v and all(x == x for x in v)
                and min(v) >= 1 + ADOPT_GAIN}
        if good:
            best = max(good, key=good.get)
            for dt in ("bf16", "fp16"):
                cfg = tiles_for("fwd", D, dt, 256, cands[best]["fwd"])
                choice.append(dict(kernel="fwd", head_dim=D, dtype=dt, kwargs=cfg.kwargs, num_warps=cfg.num_warps,
                                   num_stages=cfg.num_stages, why=f"{best}: >= {good[best]:.3f}x the table entry"))
        # Decode: each variant (fused split+merge, programmatic dependent launch) against the table's two
        # launches, batch 1 and 16.
        dok = {name: passes({"decode": dec}, decode_correctness, (torch.bfloat16, torch.float16, torch.float32),
                            ("dec",)) for name, dec in dv.items()}
        for name, dec in dv.items():  # and replayed from a CUDA graph, the way the models decode (once per setting)
            if ("graph", name) not in checked:
                same, grows = graph_replay_check(log, {"decode": dec})
                rows += grows
                checked[("graph", name)] = same
            dok[name] = dok[name] and checked[("graph", name)]
        dgain = {name: {} for name in dv}
        for S in (contexts if dv else ()):
            for batch in batches:
                qd, kd, vd = random_qkv(batch, Hq, Hkv, S, D, generator=g, q_len=1)

                def dtimer(kc):
                    f = lambda: sparse_decode(qd, kd, vd, "power", 256, backend="triton", kernel_config=kc)

                    def run():
                        with torch.no_grad():
                            f()
                            return bench_ms(f, cudagraph=True) * 1e3
                    return run
                us = _alternating({"table": dtimer(None),
                                   **{n: dtimer({"decode": d}) for n, d in dv.items()}})
                for name, t in us.items():
                    rows.append(dict(kind="decode", shape=shape, S=S, batch=batch, pattern="power", variant=name,
                                     us=t, correct=dok.get(name, True), speedup=us["table"] / t))
                    log(rows[-1])
                    if name != "table":
                        dgain[name][(S, batch)] = us["table"] / t
                del qd, kd, vd
        dgood = {}
        for name, gain in dgain.items():
            b1 = [x for (S, b), x in gain.items() if b == 1]
            rest = [x for (S, b), x in gain.items() if b != 1]
            if dok[name] and b1 and min(b1) >= 1 + ADOPT_GAIN and all(x >= 1 - ADOPT_GAIN for x in rest):
                dgood[name] = min(b1)
        if dgood:  # the one with the largest worst-case gain at batch 1
            best = max(dgood, key=dgood.get)
            for dt in ("bf16", "fp16", "fp32"):
                cfg = tiles_for("decode", D, dt, 256, dv[best])
                choice.append(dict(kernel="decode", head_dim=D, dtype=dt, kwargs=cfg.kwargs,
                                   num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                                   why=f"{best}: >= {dgood[best]:.3f}x at batch 1"))
        if dv:
            rows += decode_anatomy(log, shape, {"table": None, **{n: {"decode": d} for n, d in dv.items()}})
        torch.cuda.empty_cache()
    return rows, choice


def shape_baselines(log, shape, lengths=(16384, 32768, 65536, 131072), bwd_lengths=(16384, 32768, 65536),
                    patterns=("power", "sliding_window")):
    """Ours vs dense SDPA and every Flex configuration (``kernels.benchmark.FLEX_CONFIGS``) for one shape:
    forward at ``lengths``, forward+backward at ``bwd_lengths``; rows as ``bench_prefill``'s."""
    from kernels.benchmark import FLEX_CONFIGS

    Hq, Hkv, D = SHAPES[shape]
    kw = dict(Hq=Hq, Hkv=Hkv, D=D, flex_configs=FLEX_CONFIGS, progress=log, flex_patterns=patterns)
    rows = bench_prefill(list(lengths), list(patterns), modes=("fwd",), **kw)
    if bwd_lengths:
        rows += bench_prefill(list(bwd_lengths), ["power"], modes=("fwd_bwd",), sdpa=False, **kw)
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
    p.add_argument("--variants", action="store_true",
                   help="issue 11's candidate settings vs the table (both shapes), then ours vs every Flex "
                        "configuration for --baseline-shape; writes variants.json and tiles_choice.json")
    p.add_argument("--baseline-shape", choices=sorted(SHAPES) + ["none"], default="smollm2")
    p.add_argument("--fwd-variants", default="all", help="comma-separated FWD_VARIANTS names, 'all' or 'none'")
    p.add_argument("--decode-variants", default="all", help="comma-separated DECODE_VARIANTS names, 'all' or 'none'")
    p.add_argument("--shapes", default="all", help=f"comma-separated names of {sorted(SHAPES)}, or 'all'")
    p.add_argument("--baseline-lengths", default="16384,32768,65536,131072", help="forward lengths of the baselines")
    p.add_argument("--baseline-bwd-lengths", default="16384,32768,65536", help="forward+backward lengths ('' = none)")
    p.add_argument("--baseline-patterns", default="power,sliding_window")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    log = lambda r: print(json.dumps(r), flush=True)
    t0 = time.time()
    if a.variants:
        res = dict(device=torch.cuda.get_device_name(0), versions=dict(torch=torch.__version__,
                                                                        triton=triton.__version__))
        fv = None if a.fwd_variants == "all" else [x for x in a.fwd_variants.split(",") if x and x != "none"]
        ints = lambda text: tuple(int(x) for x in text.split(",") if x)
        dv = None if a.decode_variants == "all" else [x for x in a.decode_variants.split(",") if x and x != "none"]
        shapes = None if a.shapes == "all" else a.shapes.split(",")
        res["rows"], res["choice"] = variants(log, fwd_variants=fv, decode_variants=dv, shapes=shapes)
        (out / "tiles_choice.json").write_text(json.dumps(res["choice"], indent=1))
        print(f"variants done {time.time() - t0:.0f}s; adopted: {[c['why'] for c in res['choice']]}", flush=True)
        (out / "variants.json").write_text(json.dumps(res, indent=1))
        if a.baseline_shape != "none":
            if res["choice"]:  # the baselines run with the adopted entries, as the notebooks will
                from kernels.tiles import use_tiles_file

                use_tiles_file(out / "tiles_choice.json")
            res["baselines"] = dict(shape=a.baseline_shape, rows=shape_baselines(
                log, a.baseline_shape, ints(a.baseline_lengths), ints(a.baseline_bwd_lengths),
                tuple(a.baseline_patterns.split(","))))
            (out / "variants.json").write_text(json.dumps(res, indent=1))
        print(f"all done {time.time() - t0:.0f}s -> {out / 'variants.json'}", flush=True)
        return
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
