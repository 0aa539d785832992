"""The fused Triton decode (tile setting ``FUSED=1``: one launch, the last split program of each
key/value head merges) against the unfused split + merge and the float64 reference.

Without a GPU the kernels run through Triton's interpreter (tests/conftest.py), which runs the
programs one after another, so the last split program of each head does the merge. Outputs are
poisoned with NaN, so a row nobody merges fails. The fused runs replace the merge kernel by one
that fails if launched, so a fused call that silently fell back to two launches fails too. The
CUDA-graph tests run only on a GPU.
"""
import pytest
import torch

import kernels
from kernels import decode as kdec
from kernels import plan as kplan
from kernels.reference import reference_attention, reference_decode_at_position
from lib import masks
from _configs import SMALL_CONFIGS

CFG = SMALL_CONFIGS["power"]
TOL = {torch.float32: 1e-5, torch.float16: 3e-3}
# fused vs unfused: the same arithmetic (the interpreter gives identical bits; compiled code may differ in rounding)
SAME = {torch.float32: 1e-6, torch.float16: 1e-3}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def poison():
    with kplan.poisoned_outputs():
        yield


class _NoMerge:
    """Stands in for ``_decode_merge_kernel`` while a fused call runs: launching it fails."""

    def __getitem__(self, grid):
        raise AssertionError("the fused decode launched the merge kernel")


def rel(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def decode(q, k, v, bs, fused, monkeypatch, **decode_cfg):
    """``kernels.sparse_decode`` (Triton) with the ``decode`` tile setting ``FUSED=fused`` and ``decode_cfg``."""
    with monkeypatch.context() as m:
        if fused:
            m.setattr(kdec, "_decode_merge_kernel", _NoMerge())
        return kernels.sparse_decode(q, k, v, "power", bs, backend="triton",
                                     kernel_config={"decode": dict(decode_cfg, FUSED=int(fused))}, **CFG)


def inputs(seed, B, Hq, Hkv, S, T, D, dtype):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, T, D, generator=g).to(dtype)
    k, v = (torch.randn(B, Hkv, S, D, generator=g).to(dtype) for _ in range(2))
    return q.to(DEVICE), k.to(DEVICE), v.to(DEVICE)


def counters_zero():
    return all(int(buf.count_nonzero()) == 0 for buf in kdec._COUNTERS.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("Hq,Hkv", [(6, 2), (4, 4)])
@pytest.mark.parametrize("T", [1, 3])
@pytest.mark.parametrize("splits", [1, 3, 64])  # 64: more splits than tiles (capped to one tile each)
def test_fused_matches_unfused_and_reference(dtype, Hq, Hkv, T, splits, monkeypatch):
    # S = 97, 16-token blocks: the 3 new tokens 94..96 straddle blocks 5 and 6; batch 2.
    S, bs, D = 97, 16, 16
    q, k, v = inputs(100 * T + Hq + splits, 2, Hq, Hkv, S, T, D, dtype)
    fused = decode(q, k, v, bs, True, monkeypatch, BLOCK_N=16, NUM_SPLITS=splits)
    unfused = decode(q, k, v, bs, False, monkeypatch, BLOCK_N=16, NUM_SPLITS=splits)
    ref = reference_attention(q.double(), k.double(), v.double(), kernels.get_layout("power", S, bs, **CFG), bs,
                              q_offset=S - T)
    assert fused.dtype == dtype and fused.shape == q.shape
    assert torch.isfinite(fused).all() and torch.isfinite(unfused).all()
    assert rel(fused, ref) < TOL[dtype] and rel(unfused, ref) < TOL[dtype]
    assert rel(fused, unfused) < SAME[dtype]
    assert counters_zero()


@pytest.mark.parametrize("T", [1, 3])
def test_fused_with_empty_splits_and_several_tiles_per_block(T, monkeypatch):
    """32-token blocks of two 16-wide tiles, and a split count that leaves the last splits without a tile
    (their partial is LSE -inf, weight 0)."""
    S, bs, D = 203, 32, 16
    q, k, v = inputs(7 + T, 2, 6, 2, S, T, D, torch.float32)
    n_tiles = masks.layout("power", S, bs, **CFG).decode_plan(T).num_blocks * (bs // 16)
    splits = n_tiles - 1
    per = -(-n_tiles // splits)
    assert (splits - 1) * per >= n_tiles, "the case must have an empty split"
    fused = decode(q, k, v, bs, True, monkeypatch, BLOCK_N=16, NUM_SPLITS=splits)
    unfused = decode(q, k, v, bs, False, monkeypatch, BLOCK_N=16, NUM_SPLITS=splits)
    ref = reference_attention(q.double(), k.double(), v.double(), kernels.get_layout("power", S, bs, **CFG), bs,
                              q_offset=S - T)
    assert torch.isfinite(fused).all()
    assert rel(fused, ref) < 1e-5
    assert rel(fused, unfused) < 1e-6


def test_fused_twice_in_a_row_and_auto_splits(monkeypatch):
    """The last program sets its counter back to 0: a second call (same or other shape, on the buffer the
    first one made) is right too."""
    S, bs = 120, 16
    q, k, v = inputs(3, 2, 4, 2, S, 1, 16, torch.float16)
    first = decode(q, k, v, bs, True, monkeypatch, BLOCK_N=16, NUM_SPLITS=3)
    assert counters_zero()
    second = decode(q, k, v, bs, True, monkeypatch, BLOCK_N=16, NUM_SPLITS=3)
    assert torch.equal(first, second)
    # More (batch, kv-head) pairs than before, automatic splits: the buffer grows or is reused.
    q2, k2, v2 = inputs(4, 3, 8, 4, S, 2, 16, torch.float16)
    third = decode(q2, k2, v2, bs, True, monkeypatch, BLOCK_N=16)
    ref = kernels.sparse_decode(q2.double().cpu(), k2.double().cpu(), v2.double().cpu(), "power", bs,
                                backend="reference", **CFG)
    assert rel(third, ref) < 3e-3
    assert counters_zero()
    assert torch.equal(decode(q, k, v, bs, True, monkeypatch, BLOCK_N=16, NUM_SPLITS=3), first)


@pytest.mark.parametrize("dtype,D,Hq,Hkv,bs", [(torch.float32, 32, 6, 2, 32), (torch.float16, 16, 4, 4, 16)])
def test_decode_at_position_fused(dtype, D, Hq, Hkv, bs, monkeypatch):
    """``decode_at_position`` (position in device memory, fixed-length block list) goes through the same
    launcher: FUSED=1 matches FUSED=0 and the float64 reference at several positions."""
    S = 150
    q, k, v = inputs(D + Hq, 2, Hq, Hkv, S, 1, D, dtype)
    lay = masks.layout("power", S, bs, **CFG)
    for p in (S - 1, 77, bs - 1, 3):
        pos = torch.tensor([p], device=DEVICE)
        blocks, valid = lay.decode_rows(pos)
        outs = {}
        for fused in (True, False):
            with monkeypatch.context() as m:
                if fused:
                    m.setattr(kdec, "_decode_merge_kernel", _NoMerge())
                outs[fused] = kdec.decode_at_position(q, k, v, blocks, valid, pos, bs,
                                                      kernel_config={"decode": dict(FUSED=int(fused), NUM_SPLITS=3)})
        ref = reference_decode_at_position(q.double(), k.double(), v.double(), blocks, valid, pos, bs)
        assert torch.isfinite(outs[True]).all()
        assert rel(outs[True], ref) < TOL[dtype], p
        assert rel(outs[True], outs[False]) < SAME[dtype], p
    assert counters_zero()


# ----------------------------------------------------------------------------------- GPU only: CUDA graphs
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


def _graph_case(B=1, Hq=28, Hkv=4, S=8192, bs=256, D=128):
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(B, Hq, 1, D, device="cuda", dtype=torch.bfloat16, generator=g)
    k, v = (torch.randn(B, Hkv, S, D, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
    return q, k, v, bs


@cuda_only
def test_fused_under_cuda_graph_after_warmup_on_a_side_stream(monkeypatch):
    """As do_bench_cudagraph and lib.latency do: warm up on a side stream, capture on torch's capture stream.
    The capture must take the fused path (the merge kernel is not launched), and replays with new queries
    must match eager unfused calls: the counters are back at 0 after every replay."""
    q, k, v, bs = _graph_case()
    lay = masks.layout("power", k.shape[2], bs)
    pos = torch.tensor([k.shape[2] - 1], device="cuda")
    cfg = {"decode": {"FUSED": 1}}

    def step():  # the block list is gathered on the device from pos: part of the graph
        blocks, valid = lay.decode_rows(pos)
        return kdec.decode_at_position(q, k, v, blocks, valid, pos, bs, kernel_config=cfg)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with monkeypatch.context() as m:
        m.setattr(kdec, "_decode_merge_kernel", _NoMerge())
        with torch.cuda.graph(graph):
            out = step()
    for i in range(20):
        q.copy_(torch.randn_like(q))
        pos.fill_(k.shape[2] - 1 - 37 * i)
        graph.replay()
        b2, v2 = lay.decode_rows(pos)
        want = kdec.decode_at_position(q, k, v, b2, v2, pos, bs, kernel_config={"decode": {"FUSED": 0}})
        assert torch.isfinite(out).all() and rel(out, want) < 5e-3, i
    torch.cuda.synchronize()
    assert counters_zero()


@cuda_only
def test_capture_without_a_counter_buffer_falls_back_to_two_launches(monkeypatch):
    q, k, v, bs = _graph_case()
    lay = masks.layout("power", k.shape[2], bs)
    pos = torch.tensor([k.shape[2] - 1], device="cuda")
    blocks, valid = lay.decode_rows(pos)
    want = kdec.decode_at_position(q, k, v, blocks, valid, pos, bs, kernel_config={"decode": {"FUSED": 0}})
    monkeypatch.setattr(kdec, "_COUNTERS", {})  # no eager call has made a buffer
    launched = []
    real = kdec._decode_merge_kernel

    class Spy:
        def __getitem__(self, grid):
            launched.append(grid)
            return real[grid]

    monkeypatch.setattr(kdec, "_decode_merge_kernel", Spy())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = kdec.decode_at_position(q, k, v, blocks, valid, pos, bs, kernel_config={"decode": {"FUSED": 1}})
    graph.replay()
    torch.cuda.synchronize()
    assert launched and not kdec._COUNTERS  # unfused, and nothing allocated during capture
    assert rel(out, want) < 5e-3


@cuda_only
def test_fused_stress_many_splits_and_calls(monkeypatch):
    """Many programs per head racing for the counter, many calls in a row on one buffer."""
    q, k, v, bs = _graph_case(B=2, S=32768, bs=64)
    want = decode(q, k, v, bs, False, monkeypatch, NUM_SPLITS=200)
    for _ in range(50):
        got = decode(q, k, v, bs, True, monkeypatch, NUM_SPLITS=200)
        assert rel(got, want) < 5e-3
    torch.cuda.synchronize()
    assert counters_zero()
