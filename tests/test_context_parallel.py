"""Sparse context parallelism (kernels/context_parallel.py) on CPU gloo ranks.

Ranks are spawned processes (``kernels.context_parallel.run_ranks``: a ``file://`` store in a
temporary directory, a process-group timeout, and a hard deadline after which the ranks are killed),
so a bug fails a test instead of hanging CI. Each rank returns its raw output and gradients; the
comparison with the single-process float64 reference on the whole sequence happens here, in the
parent. Inputs are fresh seeded random tensors (float64; float32 for some), lengths are never a
multiple of the block, heads are grouped (GQA), batch 2. Every pattern of ``lib.masks.PATTERNS`` runs
on 2 and 3 ranks in both modes (overlapped LSE merge and one exact compacted call); bad inputs must
raise the same error on every rank, and a missing peer (forward) or a skipped backward must end in a
timeout, not a hang. One spawn serves the 2-rank correctness and bad-input tests (startup is the cost).
"""
from __future__ import annotations

import math
import time

import pytest
import torch
import torch.distributed as dist

import kernels
from kernels import context_parallel as cp
from lib import masks
from _configs import SMALL_CONFIGS

# Small configs so that several blocks per rank exist at tiny lengths (as in tests/test_kernels.py).
CONFIGS = SMALL_CONFIGS
SPAWN_TIMEOUT = 120  # seconds before the ranks are killed (a run takes a few)


def _inputs(case):
    g = torch.Generator().manual_seed(case["seed"])
    dt = getattr(torch, case.get("dtype", "float64"))
    B, Hq, Hkv, S, D = case["batch"], case["q_heads"], case["kv_heads"], case["seq_len"], case["head_dim"]
    return [torch.randn(B, h, S, D, generator=g, dtype=torch.float64).to(dt) for h in (Hq, Hkv, Hkv, Hq)]


def _forward_backward_worker(rank, world, cases):
    """One rank: run every case forward and backward on its shard; return outputs, gradients, stats."""
    results = []
    for case in cases:
        q, k, v, do = _inputs(case)
        bs = case["block_size"]
        s, e = cp.shard_bounds(case["seq_len"], world, bs).bounds[rank]
        ql, kl, vl = (t[:, :, s:e].clone().requires_grad_(True) for t in (q, k, v))
        stats = {}
        out = cp.context_parallel_attention(ql, kl, vl, case["pattern"], bs, overlap=case["overlap"],
                                            compute=case.get("compute", "reference"), stats=stats, timeout=30,
                                            scale=case.get("scale"), **case["config"])
        (out * do[:, :, s:e]).sum().backward()
        with torch.no_grad():  # inference: no autograd node, same numbers
            again = cp.context_parallel_attention(ql, kl, vl, case["pattern"], bs, overlap=case["overlap"],
                                                  compute=case.get("compute", "reference"), timeout=30,
                                                  scale=case.get("scale"), **case["config"])
        results.append(dict(out=out.detach(), dq=ql.grad, dk=kl.grad, dv=vl.grad, nograd=again, stats=stats))
    return results


def _missing_backward_worker(rank, world, cases):
    """The cases, then one call whose backward the last rank skips: the others must time out, not hang
    (this breaks the group, so it comes last)."""
    results = _forward_backward_worker(rank, world, cases)
    q, k, v, _ = _inputs(cases[0])
    s, e = cp.shard_bounds(cases[0]["seq_len"], world, cases[0]["block_size"]).bounds[rank]
    ql, kl, vl = (t[:, :, s:e].clone().requires_grad_(True) for t in (q, k, v))
    out = cp.context_parallel_attention(ql, kl, vl, "power", cases[0]["block_size"], timeout=1.0, window=2, sink=1)
    if rank == world - 1:
        time.sleep(1.5)  # alive but not running backward
        return results, None
    t0 = time.monotonic()
    try:
        out.sum().backward()
        return results, None
    except Exception as exc:  # noqa: BLE001 - checked in the parent
        return results, (f"{type(exc).__name__}: {exc}", time.monotonic() - t0)


def _check_world(world, cases, per_rank):
    """Compare the ranks' outputs/gradients (concatenated) with the single-process reference, and their
    measured bytes with the model."""
    for i, case in enumerate(cases):
        q, k, v, do = (t.clone().requires_grad_(True) for t in _inputs(case))
        ref = kernels.sparse_attention(q, k, v, case["pattern"], case["block_size"], backend="reference",
                                       scale=case.get("scale"), **case["config"])
        (ref * do).sum().backward()
        got = {name: torch.cat([r[i][name] for r in per_rank], 2) for name in ("out", "dq", "dk", "dv", "nograd")}
        tol = 1e-10 if (case["dtype"] == "float64" and not case["overlap"]) else (
            2e-6 if case["dtype"] == "float64" else 2e-5)
        label = f"{case['pattern']} W={world} overlap={case['overlap']} {case['dtype']} {case.get('compute', '')}"
        for name, want in (("out", ref), ("nograd", ref), ("dq", q.grad), ("dk", k.grad), ("dv", v.grad)):
            torch.testing.assert_close(got[name].double(), want.detach().double(), rtol=tol, atol=tol,
                                       msg=lambda m: f"{label} {name}: {m}")
        # Bytes actually put on the wire == the model, per rank and direction.
        vol = cp.communication_volume(case["pattern"], case["seq_len"], case["block_size"], world, case["kv_heads"],
                                      case["head_dim"], torch.empty(0, dtype=getattr(torch, case["dtype"])).element_size(),
                                      batch=case["batch"], **case["config"])
        for r in range(world):
            st = per_rank[r][i]["stats"]
            assert st["fwd_sent_bytes"] == vol["sparse_send_bytes"][r], label
            assert st["fwd_recv_bytes"] == vol["sparse_recv_bytes"][r], label
            assert st.get("bwd_sent_bytes", 0) == vol["sparse_recv_bytes"][r], label  # gradients go back
            assert st.get("bwd_recv_bytes", 0) == vol["sparse_send_bytes"][r], label
            assert st["recv_blocks"] == vol["sparse_recv_blocks"][r], label


def _cases(seq_len, block_size, heads, seed0, dtypes=("float64",)):
    cases = []
    for i, (pattern, cfg) in enumerate(CONFIGS.items()):
        for j, overlap in enumerate((True, False)):
            cases.append(dict(pattern=pattern, config=cfg, seq_len=seq_len, block_size=block_size, batch=2,
                              q_heads=heads[0], kv_heads=heads[1], head_dim=8, dtype=dtypes[(i + j) % len(dtypes)],
                              seed=seed0 + 10 * i + j, overlap=overlap))
    return cases


def _two_rank_cases():
    cases = _cases(seq_len=149, block_size=16, heads=(4, 2), seed0=100)
    # The public kernels.sparse_attention as the pluggable compute (reference backend on CPU).
    cases.append(dict(cases[-1], compute="sparse_attention", seed=7))
    cases.append(dict(cases[-2], compute="sparse_attention", seed=8))
    cases.append(dict(cases[-3], scale=0.3, seed=9))  # an explicit softmax scale
    return cases


def _two_rank_worker(rank, world, cases, bad_cases):
    """Correctness cases, then the bad inputs (which end by breaking the group on purpose)."""
    return _forward_backward_worker(rank, world, cases), _bad_input_worker(rank, world, bad_cases)


@pytest.fixture(scope="module")
def two_ranks():
    """One spawn of 2 gloo ranks shared by the two tests below (each spawn costs two torch imports)."""
    cases = _two_rank_cases()
    got = cp.run_ranks(2, _two_rank_worker, (cases, BAD_CASES), timeout=SPAWN_TIMEOUT, pg_timeout=20,
                       final_barrier=False)
    return cases, [r for r, _ in got], [b for _, b in got]


def test_two_ranks_match_reference_every_pattern(two_ranks):
    cases, per_rank, _ = two_ranks
    _check_world(2, cases, per_rank)


def test_three_ranks_match_reference_every_pattern_and_a_missing_backward_times_out():
    cases = _cases(seq_len=231, block_size=16, heads=(3, 1), seed0=200)
    cases += [dict(c, dtype="float32", seed=c["seed"] + 1000) for c in cases if c["pattern"] == "power"]
    got = cp.run_ranks(3, _missing_backward_worker, (cases,), timeout=SPAWN_TIMEOUT, final_barrier=False)
    for rank, (_, err) in enumerate(got[:-1]):
        assert err is not None, f"rank {rank} finished a backward its peer never joined"
        assert err[0].startswith("TimeoutError") and "gradient return" in err[0] and err[1] < 10, err
    _check_world(3, cases, [r for r, _ in got])


# ---------------------------------------------------------------------------------------------- plan (no spawn)
@pytest.mark.parametrize("pattern", masks.PATTERNS)
@pytest.mark.parametrize("world,seq_len,block_size", [(2, 149, 16), (3, 231, 16), (4, 333, 8)])
def test_plan_matches_token_mask(pattern, world, seq_len, block_size):
    """The plan's remote blocks are exactly the earlier key blocks some local query token sees, and
    the per-source pair counts are the token mask's."""
    cfg = CONFIGS[pattern]
    tm = masks.token_mask(pattern, seq_len, block_size, **cfg)
    sh = cp.shard_bounds(seq_len, world, block_size)
    plan = cp.exchange_plan(masks.layout(pattern, seq_len, block_size, **cfg), world)
    named = cp.rank_profile(pattern, seq_len, block_size, world, **cfg)  # predicate path (used at scale)
    for r, (s, e) in enumerate(sh.bounds):
        seen = tm[s:e, :s].any(0)
        want = sorted({j // block_size for j in torch.nonzero(seen).flatten().tolist()})
        assert plan.recv_blocks[r].tolist() == want
        assert named[r].recv_blocks.tolist() == want
        pairs = [int(tm[s:e, a:b].sum()) for a, b in sh.bounds]
        assert list(plan.profiles[r].pairs_by_source) == pairs == list(named[r].pairs_by_source)
        assert named[r].remote_refs_max == plan.profiles[r].remote_refs_max
        # What r receives from s is what s sends to r, in the same (ascending) order.
        for src in range(world):
            b0 = sh.block_ranges[src][0]
            sent = plan.send_local[src][sum(plan.send_counts[src][:r]):sum(plan.send_counts[src][:r + 1])] + b0
            assert sent.tolist() == [b for b in want if sh.owner(b) == src]


def test_shard_bounds():
    sh = cp.shard_bounds(201, 3, 16)  # 13 blocks: 5, 5, 3 (the last one 41 tokens)
    assert sh.lengths == (80, 80, 41) and sh.block_ranges == ((0, 5), (5, 10), (10, 13))
    assert cp.shard_bounds(5, 1, 16).lengths == (5,)
    x = torch.arange(201).view(1, 1, 201, 1)
    assert torch.equal(torch.cat([cp.shard(x, r, 3, 16) for r in range(3)], 2), x)
    with pytest.raises(ValueError, match="last rank would get nothing"):
        cp.shard_bounds(9 * 16, 4, 16)  # 9 blocks over 4 ranks: 3, 3, 3, 0
    with pytest.raises(ValueError, match="world_size"):
        cp.shard_bounds(100, 0, 16)


@pytest.mark.parametrize("pattern", masks.PATTERNS)
def test_communication_volume(pattern):
    S, bs, W, Hkv, D, nbytes, B = 333, 8, 4, 2, 16, 2, 3
    vol = cp.communication_volume(pattern, S, bs, W, Hkv, D, nbytes, batch=B, **CONFIGS[pattern])
    tok = 2 * B * Hkv * D * nbytes
    assert vol["block_bytes"] == bs * tok
    assert sum(vol["sparse_send_bytes"]) == sum(vol["sparse_recv_bytes"]) == vol["sparse_total_bytes"]
    assert vol["ring_recv_bytes"] == [tok * (S - n) for n in vol["lengths"]]
    assert sum(vol["ring_send_bytes"]) == sum(vol["ring_recv_bytes"])
    assert vol["sparse_recv_bytes"][0] == 0  # rank 0 never needs anything (causality)
    starts = [a for a, _ in cp.shard_bounds(S, W, bs).bounds]
    for r in range(W):
        assert vol["sparse_recv_bytes"][r] <= tok * starts[r] <= vol["ring_recv_bytes"][r]
    if pattern == "full":  # full attention needs every earlier token: half of what a ring moves
        assert vol["sparse_recv_bytes"] == [tok * s for s in starts]


def test_power_needs_log_many_blocks_per_query_block():
    cfg = masks.section41_config("power")
    for nb in (256, 1024, 2048):
        prof = cp.rank_profile("power", nb * 256, 256, 8, **cfg)
        bound = cfg["window"] + cfg["sink"] + math.floor(math.log2(nb - 1)) + 1
        assert max(p.remote_refs_max for p in prof) <= bound
        assert max(len(p.recv_blocks) for p in prof) < 7 * nb // 8  # fewer than a ring delivers


def test_merge_partials_empty_rows():
    out = torch.randn(1, 1, 3, 4, dtype=torch.float64)
    lse = torch.tensor([[[0.5, float("-inf"), float("-inf")]]])
    merged, l = cp.merge_partials(out, lse, torch.zeros_like(out), torch.full_like(lse, float("-inf")))
    assert torch.equal(merged[..., 0, :], out[..., 0, :]) and torch.all(merged[..., 1:, :] == 0)
    assert not torch.isnan(merged).any() and torch.isinf(l[..., 1:]).all()


def test_not_initialised_raises_at_once():
    if dist.is_initialized():
        pytest.skip("a process group is initialised in this process")
    q = torch.randn(1, 2, 20, 8)
    k = torch.randn(1, 1, 20, 8)
    with pytest.raises(RuntimeError, match="not initialised"):
        cp.context_parallel_attention(q, k, k, "power", 16)


# ---------------------------------------------------------------------------------------------- bad input
BAD_CASES = [
    # (name, per-rank overrides {rank: {...}}, expected message fragment)
    ("batch", {1: dict(batch=3)}, "disagree on batch"),
    ("heads", {1: dict(q_heads=6)}, "disagree on q_heads"),
    ("head_dim", {0: dict(head_dim=16)}, "disagree on head_dim"),
    ("dtype", {1: dict(dtype=torch.float32)}, "disagree on dtype"),
    ("gqa", {0: dict(q_heads=3)}, "rank(s) [0]: ValueError: query heads (3) must be a positive multiple"),
    ("three_d", {1: dict(three_d=True)}, "rank(s) [1]: ValueError: q must be 4-D"),
    ("kv_shape", {0: dict(v_len=-1)}, "k and v shapes differ"),
    ("lengths", {0: dict(length=40), 1: dict(length=40)}, "do not fit the default assignment"),
    ("too_short", {0: dict(length=10), 1: dict(length=6)}, "last rank would get nothing"),
    ("bad_config", {0: dict(config=dict(window=0)), 1: dict(config=dict(window=0))},
     "invalid input on every rank: ValueError: power: 'window' must be an integer >= 1"),
    ("config_differs", {1: dict(config=dict(window=3, sink=1))},
     "disagree on the pattern, its config, scale, overlap or compute: per rank [\"power {'sink': 1, 'window': 2}"),
    ("unknown_pattern", {0: dict(pattern="nope"), 1: dict(pattern="nope")}, "unknown pattern 'nope'"),
    ("grad_differs", {1: dict(no_grad=True)}, "disagree on q.requires_grad"),
    ("overlap_differs", {0: dict(overlap=True)}, "overlap=True, compute=reference"),
    # A compute whose LSE carries no gradient (like the Triton kernels') cannot be LSE-merged under autograd.
    ("lse_not_differentiable", {0: dict(overlap=True, compute=True), 1: dict(overlap=True, compute=True)},
     "overlap=True needs gradients through the compute's LSE"),
]


def _detached_lse_compute(q, k, v, layout, block_size, *, q_offset=0, scale=None, return_lse=False):
    res = cp.reference_compute(q, k, v, layout, block_size, q_offset=q_offset, scale=scale, return_lse=return_lse)
    return (res[0], res[1].detach()) if return_lse else res


def _bad_input_worker(rank, world, cases):
    results = {}
    g = torch.Generator().manual_seed(rank)
    for name, overrides, _ in cases:
        o = dict(batch=2, q_heads=4, head_dim=8, dtype=torch.float64, length=32 if rank == 0 else 21,
                 config=dict(window=2, sink=1), pattern="power")
        o.update(overrides.get(rank, {}))
        q = torch.randn(o["batch"], o["q_heads"], o["length"], o["head_dim"], generator=g, dtype=torch.float64).to(o["dtype"])
        k = torch.randn(o["batch"], 2, o["length"], o["head_dim"], generator=g, dtype=torch.float64).to(o["dtype"])
        v = k[:, :, :o["length"] + o.get("v_len", 0)].clone()
        if o.get("three_d"):
            q = q[0]
        if not o.get("no_grad"):
            q.requires_grad_(True)
        try:
            cp.context_parallel_attention(q, k, v, o["pattern"], 16, timeout=20, overlap=o.get("overlap"),
                                          compute=_detached_lse_compute if o.get("compute") else "reference",
                                          **o["config"])
            results[name] = None
        except Exception as e:  # noqa: BLE001 - recorded and checked in the parent
            results[name] = f"{type(e).__name__}: {e}"
    # After all that the group is still usable: a valid call succeeds.
    q = torch.randn(2, 4, 32 if rank == 0 else 21, 8, dtype=torch.float64)
    k = torch.randn(2, 2, q.shape[2], 8, dtype=torch.float64)
    results["valid_after"] = tuple(cp.context_parallel_attention(q, k, k, "power", 16, window=2, sink=1).shape)
    # A rank that never makes the call: the other one fails after its timeout instead of hanging.
    if rank == 0:
        t0 = time.monotonic()
        try:
            cp.context_parallel_attention(q, k, k, "power", 16, timeout=1.0, window=2, sink=1)
            results["absent_peer"] = None
        except Exception as e:  # noqa: BLE001
            results["absent_peer"] = (f"{type(e).__name__}: {e}", time.monotonic() - t0)
    else:
        time.sleep(1.5)  # stay alive (not calling) until rank 0 has timed out
        results["absent_peer"] = None
    return results


def test_bad_inputs_raise_on_every_rank_without_hanging(two_ranks):
    # The last case breaks the group on purpose (a timed-out collective): no closing barrier.
    res = two_ranks[2]
    for name, _, fragment in BAD_CASES:
        msgs = [r[name] for r in res]
        assert all(m is not None for m in msgs), f"{name}: some rank did not raise: {msgs}"
        assert all(m.startswith("ValueError") for m in msgs), f"{name}: {msgs}"
        assert len(set(msgs)) == 1, f"{name}: ranks raised different errors: {msgs}"
        assert fragment in msgs[0], f"{name}: {msgs[0]!r} lacks {fragment!r}"
    assert res[0]["valid_after"] == (2, 4, 32, 8) and res[1]["valid_after"] == (2, 4, 21, 8)
    msg, waited = res[0]["absent_peer"]
    assert msg.startswith("TimeoutError") and "did every rank" in msg and waited < 10
