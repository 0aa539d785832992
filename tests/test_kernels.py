"""Triton block-sparse attention vs a float64 dense reference of the same mask.

Without a GPU the kernels run through Triton's interpreter (tests/conftest.py
turns it on), so shapes are tiny: blocks of 16/32 tokens, 16-wide tiles, so a
mask block spans several tiles. Every case draws fresh random inputs, uses a
length that is not a multiple of the block, and poisons kernel outputs with NaN
before the launch, so an element the kernel never writes fails the test.
"""
import math

import pytest
import torch
import triton

import kernels
from kernels import plan as kplan
from kernels.reference import reference_attention
from lib import masks
from _configs import SMALL_CONFIGS

# Tile overrides (kernels.tiles): 16x16 tiles, so a 32-token block spans several tiles; plain dicts change only
# the settings they name (warps, stages and TMA stay the table's).
SMALL_TILES = {kernel: dict(BLOCK_M=16, BLOCK_N=16) for kernel in ("fwd", "dq", "dkdv")}
# Small configs so the interpreter still sees several blocks per row at tiny lengths.
CONFIGS = SMALL_CONFIGS
TOL = {torch.float32: 1e-4, torch.float16: 3e-3}


@pytest.fixture(autouse=True)
def poison():
    with kplan.poisoned_outputs():
        yield


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def dense_reference(q, k, v, pattern, block_size, **config):
    """Independent float64 check of the reference: the token mask from lib.masks, plain softmax."""
    S = q.shape[2]
    mask = masks.token_mask(pattern, S, block_size, **config)
    g = q.shape[1] // k.shape[1]
    k, v = k.double().repeat_interleave(g, 1), v.double().repeat_interleave(g, 1)
    s = (q.double() @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    return torch.softmax(s.masked_fill(~mask, float("-inf")), -1) @ v


def make(gen, B, Hq, Hkv, S, D, dtype):
    return [torch.randn(B, h, S, D, generator=gen).to(dtype) for h in (Hq, Hkv, Hkv)]


@pytest.mark.parametrize("pattern", masks.PATTERNS)
def test_reference_matches_token_mask(pattern):
    g = torch.Generator().manual_seed(1)
    q, k, v = make(g, 2, 4, 2, 75, 16, torch.float64)
    out = kernels.sparse_attention(q, k, v, pattern, 16, backend="reference", **CONFIGS[pattern])
    torch.testing.assert_close(out, dense_reference(q, k, v, pattern, 16, **CONFIGS[pattern]), rtol=1e-10, atol=1e-10)
    # Query chunking (used for long sequences) changes nothing.
    lay = kernels.get_layout(pattern, 75, 16, **CONFIGS[pattern])
    torch.testing.assert_close(reference_attention(q, k, v, lay, 16, chunk_size=16), out, rtol=1e-10, atol=1e-10)


# (pattern, S, block_size, Hq, Hkv, D, dtype, batch): lengths never a multiple of the block.
CASES = [
    ("power", 149, 16, 4, 2, 16, torch.float32, 1),
    ("power", 101, 32, 3, 1, 32, torch.float16, 2),
    ("sliding_window", 87, 16, 2, 2, 32, torch.float32, 2),
    ("stride_slash", 133, 16, 6, 2, 16, torch.float32, 1),
    ("dilated", 121, 16, 2, 1, 16, torch.float16, 1),
    ("longnet", 140, 16, 4, 4, 16, torch.float32, 1),
    ("full", 45, 32, 2, 1, 16, torch.float32, 1),
    ("full", 70, 16, 3, 3, 32, torch.float16, 1),
]


@pytest.mark.parametrize("pattern,S,bs,Hq,Hkv,D,dtype,B", CASES)
def test_triton_forward_backward(pattern, S, bs, Hq, Hkv, D, dtype, B):
    g = torch.Generator().manual_seed(S * 7 + bs)
    q, k, v = make(g, B, Hq, Hkv, S, D, dtype)
    do = torch.randn(B, Hq, S, D, generator=g).to(dtype)
    qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
    # chunk 2: the sink's dK/dV is split over several programs; tensor-descriptor (TMA) loads on for some cases,
    # plain pointer loads for others, so both paths of every kernel are checked.
    # The forward's override is a full triton.Config (warps/stages replaced), the others dicts.
    tma = S % 2
    cfg = {"fwd": triton.Config(dict(BLOCK_M=16, BLOCK_N=16, USE_TMA=tma), num_warps=4, num_stages=2),
           "dq": dict(BLOCK_M=16, BLOCK_N=16, USE_TMA=tma), "dkdv": dict(BLOCK_M=16, BLOCK_N=16, USE_TMA=1 - tma),
           "bwd_chunk": 2}
    out, lse = kernels.sparse_attention(qq, kk, vv, pattern, bs, backend="triton", return_lse=True,
                                        kernel_config=cfg, **CONFIGS[pattern])
    out.backward(do)
    assert out.dtype == dtype and out.shape == q.shape
    qr, kr, vr = (t.double().requires_grad_() for t in (q, k, v))
    ref, ref_lse = kernels.sparse_attention(qr, kr, vr, pattern, bs, backend="reference", return_lse=True,
                                            **CONFIGS[pattern])
    ref.backward(do.double())
    for got in (out, qq.grad, kk.grad, vv.grad):
        assert torch.isfinite(got).all()
    tol = TOL[dtype]
    assert rel(out, ref) < tol
    assert rel(lse, ref_lse) < tol
    assert rel(qq.grad, qr.grad) < 2 * tol
    assert rel(kk.grad, kr.grad) < 2 * tol
    assert rel(vv.grad, vr.grad) < 2 * tol


def test_tiles_independent_of_mask_block():
    """A 32-token mask block swept as 16x16, 32x16 and 16x32 tiles gives one answer."""
    g = torch.Generator().manual_seed(5)
    q, k, v = make(g, 1, 2, 1, 97, 16, torch.float32)
    ref = kernels.sparse_attention(q.double(), k.double(), v.double(), "power", 32, backend="reference", window=1)
    for bm, bn in ((16, 16), (32, 16), (16, 32)):
        out = kernels.sparse_attention(q, k, v, "power", 32, backend="triton", window=1,
                                       kernel_config={"fwd": dict(BLOCK_M=bm, BLOCK_N=bn)})
        assert rel(out, ref) < 1e-5, (bm, bn)


@pytest.mark.parametrize("pattern,S,bs,Hq,Hkv,dtype,tma", [("power", 149, 32, 4, 2, torch.float32, 1),
                                                           ("sliding_window", 101, 32, 3, 1, torch.float16, 0),
                                                           ("dilated", 77, 16, 6, 3, torch.float32, 0)])
def test_single_loop_forward_variant(pattern, S, bs, Hq, Hkv, dtype, tma):
    """WARP_SPEC=1 (issue 11): the diagonal tiles unrolled before one loop over the full tiles, 16-wide tiles
    so a 32-token diagonal is 1 or 2 guarded tiles; same result as the reference and as the two-loop kernel."""
    g = torch.Generator().manual_seed(S + bs)
    q, k, v = make(g, 2, Hq, Hkv, S, 16, dtype)
    tiles = dict(BLOCK_M=16, BLOCK_N=16, USE_TMA=tma)
    out, lse = kernels.sparse_attention(q, k, v, pattern, bs, backend="triton", return_lse=True,
                                        kernel_config={"fwd": dict(tiles, WARP_SPEC=1)}, **CONFIGS[pattern])
    ref, ref_lse = kernels.sparse_attention(q.double(), k.double(), v.double(), pattern, bs, backend="reference",
                                            return_lse=True, **CONFIGS[pattern])
    two_loop = kernels.sparse_attention(q, k, v, pattern, bs, backend="triton", kernel_config={"fwd": tiles},
                                        **CONFIGS[pattern])
    assert torch.isfinite(out).all()
    assert rel(out, ref) < TOL[dtype] and rel(lse, ref_lse) < TOL[dtype]
    assert rel(out, two_loop) < TOL[dtype]


def test_empty_rows_are_zero_not_nan():
    """A custom layout whose query block 1 selects nothing: its rows give 0, and gradients stay finite."""
    S, bs = 60, 16
    layout = torch.tril(torch.ones(4, 4, dtype=torch.bool))
    layout[1] = False
    layout[3, 1] = False
    g = torch.Generator().manual_seed(3)
    q, k, v = (t.requires_grad_() for t in make(g, 1, 2, 1, S, 16, torch.float32))
    out, lse = kernels.sparse_attention(q, k, v, layout, bs, backend="triton", return_lse=True, kernel_config=SMALL_TILES)
    ref = kernels.sparse_attention(q.detach().double(), k.detach().double(), v.detach().double(), layout, bs,
                                   backend="reference")
    assert torch.isfinite(out).all()
    assert (out[:, :, bs:2 * bs] == 0).all()
    assert torch.isneginf(lse[:, :, bs:2 * bs]).all()
    assert rel(out, ref) < 1e-5
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    assert (q.grad[:, :, bs:2 * bs] == 0).all()


@pytest.mark.parametrize("pattern", masks.PATTERNS)
@pytest.mark.parametrize("T", [1, 3])
def test_decode_matches_reference(pattern, T):
    # S = 97 with 16-token blocks: the 3 new tokens 94..96 straddle blocks 5 and 6.
    S, bs, dtype = 97, 16, torch.float32
    g = torch.Generator().manual_seed(11 + T)
    _, k, v = make(g, 2, 6, 2, S, 16, dtype)
    q = torch.randn(2, 6, T, 16, generator=g)
    out = kernels.sparse_decode(q, k, v, pattern, bs, backend="triton",
                                kernel_config={"decode": dict(BLOCK_N=16, NUM_SPLITS=3)}, **CONFIGS[pattern])
    ref = reference_attention(q.double(), k.double(), v.double(),
                              kernels.get_layout(pattern, S, bs, **CONFIGS[pattern]), bs, q_offset=S - T)
    assert torch.isfinite(out).all()
    assert rel(out, ref) < 1e-5
    # The decode reference is the last rows of prefill attention over the whole sequence.
    qfull = torch.randn(2, 6, S, 16, generator=g).double()
    qfull[:, :, -T:] = q.double()
    full = kernels.sparse_attention(qfull, k.double(), v.double(), pattern, bs, backend="reference", **CONFIGS[pattern])
    torch.testing.assert_close(ref, full[:, :, -T:])


def test_decode_fp16_auto_splits():
    g = torch.Generator().manual_seed(2)
    _, k, v = make(g, 1, 4, 1, 200, 32, torch.float16)
    q = torch.randn(1, 4, 2, 32, generator=g).half()
    out = kernels.sparse_decode(q, k, v, "power", 32, backend="triton")
    ref = kernels.sparse_decode(q.double(), k.double(), v.double(), "power", 32, backend="reference")
    assert rel(out, ref) < 3e-3


def test_auto_backend_picks_reference_on_cpu_and_triton_on_cuda():
    # The dispatch decision itself (a CUDA device object needs no GPU to be inspected) ...
    assert kernels._check_backend("auto", torch.device("cpu")) == "reference"
    assert kernels._check_backend("auto", torch.device("cuda")) == "triton"
    # ... and what "auto" computes on CPU, against an independent float64 softmax of the token mask.
    g = torch.Generator().manual_seed(0)
    q, k, v = make(g, 1, 2, 1, 40, 16, torch.float32)
    out = kernels.sparse_attention(q, k, v, "power", 16, **CONFIGS["power"])
    assert rel(out, dense_reference(q, k, v, "power", 16, **CONFIGS["power"])) < 1e-5


def _qkv(S=40, Hq=4, Hkv=2, D=16, dtype=torch.float32):
    return torch.randn(1, Hq, S, D, dtype=dtype), torch.randn(1, Hkv, S, D, dtype=dtype), \
        torch.randn(1, Hkv, S, D, dtype=dtype)


@pytest.mark.parametrize("mutate,exc,words", [
    (lambda q, k, v: (q[0], k, v), ValueError, "4-D"),
    (lambda q, k, v: (q, k[:, :, :30], v[:, :, :30]), ValueError, "length"),
    (lambda q, k, v: (q, k, v[:, :, :30]), ValueError, "shapes differ"),
    (lambda q, k, v: (q[:, :3], k, v), ValueError, "multiple"),
    (lambda q, k, v: (q, k[..., :8], v[..., :8]), ValueError, "head dims"),
    (lambda q, k, v: (q.double(), k.double(), v.double()), TypeError, "Triton kernels take"),
    (lambda q, k, v: (q.int(), k.int(), v.int()), TypeError, "Triton kernels take"),
    (lambda q, k, v: (q, k.half(), v), TypeError, "share a dtype"),
    (lambda q, k, v: (q.numpy(), k, v), TypeError, "torch.Tensor"),
    (lambda q, k, v: (q.to("meta"), k, v), ValueError, "one device"),
    (lambda q, k, v: (torch.randn(1, 4, 40, 24), torch.randn(1, 2, 40, 24), torch.randn(1, 2, 40, 24)),
     ValueError, "head_dim"),
])
def test_bad_inputs(mutate, exc, words):
    q, k, v = mutate(*_qkv())
    with pytest.raises(exc, match=words):
        kernels.sparse_attention(q, k, v, "power", 16, backend="triton")


def test_bad_pattern_layout_and_options():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="unknown pattern"):
        kernels.sparse_attention(q, k, v, "nope", 16)
    with pytest.raises(ValueError, match="unknown config"):
        kernels.sparse_attention(q, k, v, "power", 16, stride=3)
    with pytest.raises(ValueError, match=r"needs \(3, 3\)"):
        kernels.sparse_attention(q, k, v, torch.ones(4, 4, dtype=torch.bool), 16)
    with pytest.raises(TypeError, match="bool"):
        kernels.sparse_attention(q, k, v, torch.ones(3, 3), 16)
    with pytest.raises(ValueError, match="only apply to a named pattern"):
        kernels.sparse_attention(q, k, v, torch.ones(3, 3, dtype=torch.bool), 16, window=2)
    with pytest.raises(ValueError, match="backend"):
        kernels.sparse_attention(q, k, v, "power", 16, backend="cuda")
    with pytest.raises(ValueError, match="power of two"):
        kernels.sparse_attention(q, k, v, "power", 24, backend="triton")
    with pytest.raises(ValueError, match="block_size"):
        kernels.sparse_attention(q, k, v, "power", 0)
    with pytest.raises(ValueError, match="unknown kernel_config"):
        kernels.sparse_attention(q, k, v, "power", 16, backend="triton", kernel_config=dict(BLOCK=3))
    with pytest.raises(ValueError, match="already be in the cache"):
        kernels.sparse_decode(torch.randn(1, 4, 50, 16), k, v, "power", 16)
    with pytest.raises(ValueError, match="at most"):
        kernels.sparse_decode(q[:, :, :20], k, v, "power", 16, backend="triton")


def test_default_kernel_config_small_blocks():
    """The benchmarked defaults (128-wide tiles, TMA loads) capped to a 32-token block, forward and backward."""
    g = torch.Generator().manual_seed(9)
    q, k, v = (t.requires_grad_() for t in make(g, 1, 4, 2, 90, 32, torch.float32))
    out = kernels.sparse_attention(q, k, v, "power", 32, backend="triton", window=1)
    out.backward(torch.ones_like(out))
    qr, kr, vr = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = kernels.sparse_attention(qr, kr, vr, "power", 32, backend="reference", window=1)
    ref.backward(torch.ones_like(ref))
    assert rel(out, ref) < 1e-4
    for a, b in ((q, qr), (k, kr), (v, vr)):
        assert rel(a.grad, b.grad) < 2e-4


@pytest.mark.parametrize("dtype,D,Hq,Hkv,bs", [(torch.float32, 128, 6, 2, 64), (torch.float16, 32, 4, 1, 32)])
def test_decode_entry_points_share_one_launcher(dtype, D, Hq, Hkv, bs, monkeypatch):
    """``sparse_decode`` (the newest token is the cache's end; host position) and ``decode_at_position``
    (position in a device tensor, static cache, CUDA-graph safe) go through one launcher with one tile
    setting, and agree with the float64 references. fp32 at head dim 128 is the case whose tile cap
    used to differ between the two (64 vs 32)."""
    from kernels import decode as kdec
    from kernels import tiles
    from kernels.reference import reference_decode_at_position

    launches, settings = [], []  # the position argument of every launch; every tile setting used
    real_launch, real_tiles_for = kdec._launch, kdec.tiles_for

    def launch(q, k, v, blocks, allowed, pos, *rest):
        launches.append(pos)
        return real_launch(q, k, v, blocks, allowed, pos, *rest)

    def tiles_for(*args):
        settings.append(real_tiles_for(*args))
        return settings[-1]

    monkeypatch.setattr(kdec, "_launch", launch)
    monkeypatch.setattr(kdec, "tiles_for", tiles_for)
    S, cfg = 200, dict(window=2, sink=1)
    g = torch.Generator().manual_seed(D + Hq)
    q = torch.randn(2, Hq, 1, D, generator=g).to(dtype)
    k, v = (torch.randn(2, Hkv, S, D, generator=g).to(dtype) for _ in range(2))
    lay = masks.layout("power", S, bs, **cfg)
    tol = TOL[dtype]
    for p in (S - 1, 150, bs - 1, 3):  # last slot, mid-block, end of the first block, inside it
        pos = torch.tensor([p])
        blocks, valid = lay.decode_rows(pos)
        at_pos = kdec.decode_at_position(q, k, v, blocks, valid, pos, bs)
        ref = reference_decode_at_position(q.double(), k.double(), v.double(), blocks, valid, pos, bs)
        at_end = kernels.sparse_decode(q, k[:, :, :p + 1], v[:, :, :p + 1], "power", bs, backend="triton", **cfg)
        for out in (at_pos, at_end):
            assert out.dtype == dtype and torch.isfinite(out).all()
            assert rel(out, ref) < tol, p
    assert [pos_arg is None for pos_arg in launches] == [False, True] * 4  # one launcher, both entry points
    assert len(settings) == 8
    assert all(s.kwargs == tiles.tiles_for("decode", D, dtype, bs).kwargs for s in settings)
    if dtype == torch.float32:
        assert settings[0].kwargs["BLOCK_N"] == 64


def _docstring_example() -> str:
    """The literal block after 'Example' in the kernels package docstring."""
    lines = kernels.__doc__.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Example"))
    start = next(i for i in range(start, len(lines)) if lines[i].rstrip().endswith("::")) + 1
    block = []
    for line in lines[start:]:
        if line.strip() and not line.startswith("    "):
            break
        block.append(line[4:])
    return "\n".join(block).strip() + "\n"


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_docstring_example_runs(backend, monkeypatch):
    """The usage example of kernels/__init__.py runs as written (CPU: reference backend), and again with
    every call forced onto the Triton kernels (interpreter), tile overrides included."""
    code = _docstring_example()
    assert "kernels.sparse_attention" in code and "kernel_config" in code
    if backend == "triton":
        import functools

        monkeypatch.setattr(kernels, "sparse_attention", functools.partial(kernels.sparse_attention, backend="triton"))
        monkeypatch.setattr(kernels, "sparse_decode", functools.partial(kernels.sparse_decode, backend="triton"))
    namespace = {}
    exec(compile(code, "<kernels docstring example>", "exec"), namespace)
    q, k, v = (namespace[n].detach().double() for n in ("q", "k", "v"))
    power = kernels.sparse_attention(q, k, v, "power", 64, backend="reference")
    assert rel(namespace["out"], power) < 1e-4  # the last prefill call: power with tile overrides
    assert rel(namespace["new"], power[:, :, -1:]) < 1e-4  # decode = the last row of prefill
    assert rel(namespace["lse"], kernels.sparse_attention(q, k, v, namespace["layout"], backend="reference",
                                                          return_lse=True)[1]) < 1e-4
    assert all(torch.isfinite(namespace[n].grad).all() for n in ("q", "k", "v"))


def test_kernel_claims_on_committed_and_new_results():
    """kernels.benchmark.kernel_claims reads the committed GPU results (notebook 08's structure) and the
    structure of ``python -m kernels.benchmark`` (decode rows without a batch), and degrades to an
    inconclusive paper claim without GPU results."""
    import json
    from pathlib import Path

    from kernels import benchmark as kb
    from lib.claims import validate

    path = Path(__file__).resolve().parents[1] / "outputs/gpu/08_figure4b_kernels/results.json"
    if path.exists():
        gpu = json.loads(path.read_text())
        claims = validate(kb.kernel_claims(gpu))
        ids = [c["id"] for c in claims]
        assert ids[0] == "fig4b_speedup_128k" and "sanity_kernel_errors" in ids
        assert {"target_fwd_vs_flex", "target_fwd_vs_sdpa_128k", "target_fwd_bwd_vs_flex"} <= set(ids)
        assert all(c["verdict"] != "inconclusive" for c in claims)
    # A new run: no batch key on the batch-1 decode rows, a failing kernel error.
    row = lambda L, mode, method, pattern, ms, tflops=1.0: dict(length=L, mode=mode, method=method, pattern=pattern,
                                                                ms=ms, tflops=tflops, pairs=1, bound=23.4)
    dec = lambda c, us, **b: dict(context=c, method="ours", pattern="power", us=us, bytes=6.3e6,
                                  GBps=6.3e6 / us / 1e3, blocks=12, **b)
    new = dict(device="GPU", peaks=dict(copy_GBps=3000.0),
               prefill=[row(131072, "fwd", "sdpa", "full", 220.0), row(131072, "fwd", "ours", "power", 10.0, 510.0),
                        row(131072, "fwd", "flex", "power", 13.0), row(65536, "fwd_bwd", "ours", "power", 30.0),
                        row(65536, "fwd_bwd", "flex", "power", 39.0),
                        # outside the forward+backward target's 16K-64K window: not judged
                        row(131072, "fwd_bwd", "ours", "power", 30.0), row(131072, "fwd_bwd", "flex", "power", 1.0)],
               decode=[dec(8192, 3.5), dec(131072, 3.9), dec(8192, 2.0, batch=16), dec(131072, 2.9, batch=16)],
               errors=[dict(length=4096, pattern="power", dtype="bfloat16", fwd_rel_err=0.5, nan=False)])
    verdicts = {c["id"]: c["verdict"] for c in validate(kb.kernel_claims(new))}
    assert verdicts == {"fig4b_speedup_128k": "reproduced", "target_fwd_vs_flex": "reproduced",
                        "target_fwd_vs_sdpa_128k": "reproduced", "target_fwd_tflops": "reproduced",
                        "target_fwd_bwd_vs_flex": "reproduced", "target_decode_us_batch1": "reproduced",
                        "target_decode_flat_batch1": "reproduced", "target_decode_flat_batch16": "reproduced",
                        "target_decode_bw_batch16": "not reproduced",  # 6.3 MB in 2.9 us = 2172 GB/s < 75%
                        "sanity_kernel_errors": "not reproduced"}
    # Each threshold is the issue's: just over it fails.
    slow = dict(new, prefill=[dict(r, tflops=499.0) if r["method"] == "ours" and r["mode"] == "fwd" else r
                              for r in new["prefill"]],
                decode=[dict(r, us=4.1) if "batch" not in r else r for r in new["decode"]])
    verdicts = {c["id"]: c["verdict"] for c in validate(kb.kernel_claims(slow))}
    assert verdicts["target_fwd_tflops"] == verdicts["target_decode_us_batch1"] == "not reproduced"
    none = kb.kernel_claims(None)
    assert [c["verdict"] for c in none] == ["inconclusive"]


def test_sweep_claims_per_shape():
    """kernels.benchmark.sweep_claims: the Qwen2-7B shape keeps ``sweep_target_*`` ids, another shape gets
    ``sweep_<shape>_target_*`` (no id clash in notebook 08), forward + backward is judged only when the sweep timed
    Flex's backward, and the 500 TFLOP/s target (set at head dim 128) only on the Qwen2-7B shape."""
    from kernels import benchmark as kb
    from lib.claims import validate

    def row(L, mode, method, ms, pattern="power", tflops=400.0):
        return dict(length=L, mode=mode, method=method, pattern=pattern, ms=ms, tflops=tflops, pairs=1, bound=23.4)

    fwd = [row(131072, "fwd", "sdpa", 230.0, pattern="full"), row(131072, "fwd", "ours", 10.0),
           row(131072, "fwd", "flex", 12.6), row(131072, "fwd", "flex[a]", 12.6), row(131072, "fwd", "flex[b]", 14.0)]
    bwd = [row(65536, "fwd_bwd", "ours", 30.0), row(65536, "fwd_bwd", "flex", 38.0)]
    q = {c["id"]: c["verdict"] for c in validate(kb.sweep_claims(
        dict(device="GPU", rows=[], baselines=dict(shape="qwen2", rows=fwd))))}
    assert q == {"sweep_target_fwd_vs_flex": "reproduced", "sweep_target_fwd_vs_sdpa_128k": "reproduced",
                 "sweep_target_fwd_tflops": "not reproduced"}
    s = {c["id"]: c["verdict"] for c in validate(kb.sweep_claims(
        dict(device="GPU", rows=[], baselines=dict(shape="smollm2", rows=fwd + bwd))))}
    assert s == {"sweep_smollm2_target_fwd_vs_flex": "reproduced", "sweep_smollm2_target_fwd_vs_sdpa_128k": "reproduced",
                 "sweep_smollm2_target_fwd_bwd_vs_flex": "not reproduced"}  # 38 / 30 = 1.27 < 1.3
    fast_bwd = [dict(r, ms=39.1) if r["method"] == "flex" else r for r in bwd]  # 1.303 >= 1.3
    s = {c["id"]: c["verdict"] for c in kb.sweep_claims(
        dict(device="GPU", rows=[], baselines=dict(shape="smollm2", rows=fwd + fast_bwd)))}
    assert s["sweep_smollm2_target_fwd_bwd_vs_flex"] == "reproduced"


def test_flex_baseline_is_the_fastest_configuration_that_ran():
    from kernels.benchmark import best_flex_rows

    def row(method, ms, length=1024, mode="fwd", pattern="power"):
        return dict(length=length, mode=mode, method=method, pattern=pattern, ms=ms, tflops=None, pairs=1, bound=1.0)

    rows = [row("ours", 1.0), row("flex[default]", 2.0), row("flex[tma]", 1.5), row("flex[broken]", None),
            row("flex[default]", 3.0, mode="fwd_bwd"), row("flex[tma]", None, mode="fwd_bwd")]
    best = {(r["mode"], r["flex_config"]): r["ms"] for r in best_flex_rows(rows)}
    assert best == {("fwd", "tma"): 1.5, ("fwd_bwd", "default"): 3.0}
    assert all(r["method"] == "flex" for r in best_flex_rows(rows))
