"""A model (not a measurement) of sparse context parallelism vs ring attention at scale, and the claims
of notebook 11.

What is modelled. One attention layer of a sequence sharded contiguously over ``W`` GPUs
(``kernels.context_parallel``'s default assignment), forward and backward:

* compute: FLOPs of the token pairs each rank's queries see, split by the rank that owns the keys
  (``kernels.context_parallel.rank_profile``, exact for the pattern), ``4 * head_dim * q_heads``
  FLOPs per pair forward and 2.5x that backward (the convention of ``kernels.benchmark``), at a
  sustained rate ``attn_fwd_tflops`` / ``attn_bwd_tflops``;
* communication: bytes from ``kernels.context_parallel.communication_volume`` (exact for the
  pattern), moved at ``link_gbs`` GB/s per GPU per direction plus ``latency_us`` per collective/hop.

Schedules.

* Sparse exchange, forward: one all-to-all of the needed blocks overlapped with the local-block
  attention, then the attention to the received blocks:
  ``T = max_r [max(local_r, comm) + remote_r]`` with ``comm = latency + max_r max(send_r, recv_r) / link``.
  Backward: the received blocks' gradients are ready after their backward, and go home while the
  local-block backward runs: ``T = max_r [remote_bwd_r + max(local_bwd_r, comm)]`` (the received
  blocks are kept from the forward; their memory is reported).
* Ring, forward: ``W - 1`` hops, each passing the current shard on while computing with it:
  ``T = max_r [sum_{h < W-1} max(c(r, h), hop) + c(r, W-1)]`` with ``hop = latency + shard / link``
  (largest shard) and ``c(r, h)`` rank r's attention to the shard it holds at hop h (zero for a
  later rank's keys: causality). Every rank runs on its own clock, which is generous to the ring
  (real hops also wait for the slower neighbour). Backward: K/V and dK/dV circulate together
  (``2 x`` bytes per hop), plus one last hop bringing dK/dV home.

Assumptions stated as parameters (the ``gpu`` profile replaces them by measured values):
``link_gbs`` 370 (NVLink 4 on H100/H200 SXM: 450 GB/s per direction peak, ~80% achieved by NCCL),
``latency_us`` 15, ``attn_fwd_tflops`` 415 and ``attn_bwd_tflops`` 297: our Triton block-sparse
kernel's sustained rate on an H100 in notebook 08 (PowerAttention, Qwen2-7B heads, 128K: forward
415 TFLOP/s, forward+backward 323 TFLOP/s, so backward 2.5 / (3.5 / 323 - 1 / 415) = 297); the H200
has the same compute (more memory bandwidth). Not modelled: the kernels' efficiency on the smaller
pieces a rank computes, NCCL's all-to-all efficiency with uneven splits, contention between
concurrent compute and communication, the rest of the model (projections, MLP) that would hide
communication further.
"""
from __future__ import annotations

import math

from kernels import context_parallel as cp
from lib.claims import check

#: Attention shape of Qwen2-7B (28 query heads, 4 KV heads, head dim 128), bf16, 256-token blocks.
QWEN2_7B = dict(q_heads=28, kv_heads=4, head_dim=128, dtype_bytes=2, block_size=256)
#: Rates assumed by the model (see the module docstring for where each comes from).
DEFAULT_RATES = dict(link_gbs=370.0, latency_us=15.0, attn_fwd_tflops=415.0, attn_bwd_tflops=297.0)
BWD_FLOP_RATIO = 2.5


def step_model(pattern: str, seq_len: int, world_size: int, *, q_heads: int, kv_heads: int, head_dim: int,
               dtype_bytes: int, block_size: int, batch: int = 1, link_gbs: float, latency_us: float,
               attn_fwd_tflops: float, attn_bwd_tflops: float, **config) -> dict:
    """Modelled bytes and seconds of one attention layer, sparse exchange vs ring (see module docstring)."""
    W = world_size
    profiles = cp.rank_profile(pattern, seq_len, block_size, W, **config)
    vol = cp.volume_from_profiles(cp.shard_bounds(seq_len, W, block_size), profiles, kv_heads, head_dim,
                                  dtype_bytes, batch)
    fpp = 4 * head_dim * q_heads * batch  # forward FLOPs per visible (query, key) pair
    link = link_gbs * 1e9
    lat = latency_us * 1e-6
    fwd = [[p * fpp / (attn_fwd_tflops * 1e12) for p in prof.pairs_by_source] for prof in profiles]  # [r][s] seconds
    bwd = [[p * fpp * BWD_FLOP_RATIO / (attn_bwd_tflops * 1e12) for p in prof.pairs_by_source] for prof in profiles]

    # Sparse exchange.
    exch = max(max(s, r) for s, r in zip(vol["sparse_send_bytes"], vol["sparse_recv_bytes"]))
    comm = lat + exch / link if exch else 0.0
    sp_fwd = max(max(fwd[r][r], comm) + sum(fwd[r]) - fwd[r][r] for r in range(W))
    sp_bwd = max(sum(bwd[r]) - bwd[r][r] + max(bwd[r][r], comm) for r in range(W))

    # Ring.
    tok = 2 * batch * kv_heads * head_dim * dtype_bytes
    shard = max(vol["lengths"]) * tok
    hop = lat + shard / link
    hop2 = lat + 2 * shard / link

    def ring(cost, hop_t, tail):
        # Each rank on its own clock (generous to the ring: no waiting for a slower neighbour).
        return max(sum(max(cost[r][(r - h) % W], hop_t) if h < W - 1 else cost[r][(r - h) % W] for h in range(W))
                   for r in range(W)) + tail

    rg_fwd = ring(fwd, hop, 0.0) if W > 1 else fwd[0][0]
    rg_bwd = ring(bwd, hop2, hop) if W > 1 else bwd[0][0]
    compute_fwd = max(sum(f) for f in fwd)
    compute_bwd = max(sum(b) for b in bwd)
    blk = vol["block_bytes"]
    return dict(
        pattern=pattern, seq_len=seq_len, world_size=W, block_size=block_size, q_heads=q_heads, kv_heads=kv_heads,
        head_dim=head_dim, dtype_bytes=dtype_bytes, batch=batch, link_gbs=link_gbs, latency_us=latency_us,
        attn_fwd_tflops=attn_fwd_tflops, attn_bwd_tflops=attn_bwd_tflops,
        sparse_fwd_bytes_total=vol["sparse_total_bytes"], ring_fwd_bytes_total=vol["ring_total_bytes"],
        sparse_fwd_recv_bytes_max=max(vol["sparse_recv_bytes"]), ring_fwd_recv_bytes_max=max(vol["ring_recv_bytes"]),
        sparse_fwd_bwd_bytes_total=2 * vol["sparse_total_bytes"],
        ring_fwd_bwd_bytes_total=vol["ring_total_bytes"] * 3 + W * shard,
        sparse_recv_blocks=vol["sparse_recv_blocks"], local_blocks=[b1 - b0 for b0, b1 in
                                                                    cp.shard_bounds(seq_len, W, block_size).block_ranges],
        remote_refs_max=max(vol["remote_refs_max"]),
        sparse_buffer_bytes_max=max(vol["sparse_recv_blocks"]) * blk, ring_buffer_bytes=2 * shard,
        compute_fwd_s=compute_fwd, compute_bwd_s=compute_bwd,
        sparse_comm_s=comm, ring_hop_s=hop,
        sparse_fwd_s=sp_fwd, ring_fwd_s=rg_fwd, sparse_bwd_s=sp_bwd, ring_bwd_s=rg_bwd,
        sparse_step_s=sp_fwd + sp_bwd, ring_step_s=rg_fwd + rg_bwd,
        log_bound=log_bound(pattern, math.ceil(seq_len / block_size), cp._masks.resolve(pattern, **config)[1]),
        compute_share_remote=max((sum(f) - f[r]) / sum(f) if sum(f) else 0.0 for r, f in enumerate(fwd)),
    )


def model_table(patterns, lengths, world_size: int, rates: dict | None = None, shape: dict | None = None,
                configs: dict | None = None) -> list[dict]:
    """``step_model`` rows for every (pattern, length)."""
    rates = dict(DEFAULT_RATES, **(rates or {}))
    shape = dict(QWEN2_7B, **(shape or {}))
    configs = configs or {}
    return [step_model(p, int(n), world_size, **shape, **rates, **dict(configs.get(p, {})))
            for p in patterns for n in lengths]


def measure_on_gloo(world_sizes, lengths, patterns, *, block_size: int, configs: dict | None = None, batch: int = 1,
                    q_heads: int = 4, kv_heads: int = 2, head_dim: int = 32, dtype: str = "float64",
                    overlaps=(False, True), seed: int = 0, timeout: float = 300.0) -> list[dict]:
    """Run the sparse context-parallel attention on spawned CPU gloo ranks and return one row per
    (world size, length, pattern, overlap, rank): errors against the single-process reference, the
    bytes actually exchanged (sparse forward/backward and a ring exchange of all KV), and the model's
    bytes for the same rank (``model_*``), so a table can show measured beside modelled.
    CPU gloo wall times are recorded too but say nothing about GPUs."""
    import torch

    configs = configs or {}
    rows = []
    dtype_bytes = torch.empty(0, dtype=getattr(torch, dtype)).element_size()
    for W in world_sizes:
        cases = []
        for i, n in enumerate(lengths):
            for j, p in enumerate(patterns):
                # Every overlap mode checked against the reference at the shortest length; bytes only
                # (one mode: they do not depend on it) above. The ring moves the same bytes for every
                # pattern: measured once per length.
                for ov in (overlaps if i == 0 else overlaps[:1]):
                    cases.append(dict(pattern=p, config=dict(configs.get(p, {})), seq_len=int(n),
                                      block_size=block_size, batch=batch, q_heads=q_heads, kv_heads=kv_heads,
                                      head_dim=head_dim, dtype=dtype, seed=seed + 1000 * W + 100 * i + j,
                                      overlap=ov, check=i == 0, ring=j == 0 and ov == overlaps[0]))
        per_rank = cp.run_ranks(W, cp.measure_worker, (cases,), timeout=timeout)
        for rank_rows in per_rank:
            for r in rank_rows:
                vol = cp.communication_volume(r["pattern"], r["seq_len"], block_size, W, kv_heads, head_dim,
                                              dtype_bytes, batch=batch, **r["config"])
                k = r["rank"]
                r.update(model_send_bytes=vol["sparse_send_bytes"][k], model_recv_bytes=vol["sparse_recv_bytes"][k],
                         model_ring_send_bytes=vol["ring_send_bytes"][k], model_ring_recv_bytes=vol["ring_recv_bytes"][k],
                         model_recv_blocks=vol["sparse_recv_blocks"][k], remote_refs_max=vol["remote_refs_max"][k],
                         num_blocks=vol["num_blocks"])
                r["config"] = str(r["config"])
                rows.append(r)
    return rows


def log_bound(pattern: str, num_blocks: int, config: dict) -> int | None:
    """Most key blocks a PowerAttention row can select: window + sink + one per power of two below nb."""
    if pattern != "power":
        return None
    return int(config["window"]) + int(config["sink"]) + max(0, math.floor(math.log2(max(num_blocks - 1, 1)))) + 1


def build_claims(measured: list[dict], model_rows: list[dict], *, exact_tol: float = 1e-10,
                 merge_tol: float = 1e-5) -> list[dict]:
    """The claims of notebook 11 from the gloo measurements (``measure_worker`` rows, each with the
    model's per-rank bytes attached as ``model_*``) and the scale model (``model_table`` rows)."""
    claims = []
    n = len(measured)
    checked = [r for r in measured if r.get("check", True)]
    bytes_ok = all(r["fwd_sent_bytes"] == r["model_send_bytes"] and r["fwd_recv_bytes"] == r["model_recv_bytes"]
                   and r["bwd_sent_bytes"] == r["model_recv_bytes"] and r["bwd_recv_bytes"] == r["model_send_bytes"]
                   for r in measured)
    ring_rows = [r for r in measured if "ring_recv_bytes" in r]
    ring_ok = all(r["ring_recv_bytes"] == r["model_ring_recv_bytes"] and r["ring_sent_bytes"] == r["model_ring_send_bytes"]
                  and r["ring_ok"] for r in ring_rows)
    big = max(measured, key=lambda r: (r["world_size"], r["seq_len"]))
    W, S = big["world_size"], big["seq_len"]
    at = [r for r in measured if r["world_size"] == W and r["seq_len"] == S]
    ring_tot = sum(r["ring_recv_bytes"] for r in at if r.get("ring_recv_bytes") is not None)
    once = {(r["pattern"], r["rank"]): r["fwd_recv_bytes"] for r in at}  # both overlap modes move the same bytes
    power_tot = sum(b for (p, _), b in once.items() if p == "power")
    claims.append(check(
        "cp_bytes_match_model", "The sparse exchange moves exactly the bytes the plan predicts (forward and the "
        "gradient return), and a ring exchange moves every other rank's KV",
        paper="not in the paper (issue #12)",
        ours=f"{n} rank-runs on CPU gloo: sparse fwd/bwd bytes equal the model in all: {bytes_ok}; ring bytes equal "
             f"the model in all {len(ring_rows)}: {ring_ok}; e.g. {W} ranks, {S} tokens, forward bytes received "
             f"(all ranks): PowerAttention {power_tot:,} vs ring {ring_tot:,}",
        holds=bytes_ok and ring_ok, kind="sanity",
        rule="measured all-to-all payload bytes == communication_volume() per rank and direction; ring likewise"))
    keys = ("err_out", "err_dq", "err_dk", "err_dv")
    exact = [r for r in checked if not r.get("overlap")]
    merged = [r for r in checked if r.get("overlap")]
    worst_exact = max((max(r[k] for k in keys) for r in exact), default=None)
    worst_merge = max((max(r[k] for k in keys) for r in merged), default=None)
    fmt = lambda x: "not run" if x is None else f"{x:.1e}"  # noqa: E731
    claims.append(check(
        "cp_matches_reference", "Context-parallel output and q/k/v gradients equal the single-process reference",
        paper="not in the paper (issue #12)",
        ours=f"worst relative error over {len(checked)} rank-runs, patterns {sorted({r['pattern'] for r in checked})}, "
             f"{sorted({r['world_size'] for r in checked})} ranks: single call {fmt(worst_exact)}, overlapped "
             f"(LSE merge) {fmt(worst_merge)}",
        holds=(bool(checked) and (worst_exact is None or worst_exact <= exact_tol)
               and (worst_merge is None or worst_merge <= merge_tol)) if checked else None, kind="sanity",
        rule=f"float64: single compacted call <= {exact_tol:g}; overlap with float32-LSE merge <= {merge_tol:g}"))
    power = [r for r in model_rows if r["pattern"] == "power"]
    if power:
        rows = []
        ok = True
        for r in power:
            nb = math.ceil(r["seq_len"] / r["block_size"])
            bound = r.get("log_bound")
            ok &= bound is None or r["remote_refs_max"] <= bound
            ring_blocks = (r["world_size"] - 1) * max(r["local_blocks"])
            rows.append(f"{r['seq_len'] // 2**20}M: <= {r['remote_refs_max']} remote blocks per query block "
                        f"(log2 nb = {math.log2(nb):.0f}); per rank {max(r['sparse_recv_blocks'])} vs ring {ring_blocks}")
        claims.append(check(
            "cp_log_blocks", "A PowerAttention query block needs O(log n) remote key blocks; a ring delivers every block",
            paper="pattern: one block per power-of-two distance (Algorithm 1)", ours="; ".join(rows), holds=ok,
            kind="sanity", rule="max remote blocks of any query block <= window + sink + floor(log2(nb - 1)) + 1"))
        adv = [r["ring_step_s"] / r["sparse_step_s"] for r in power]
        text = "; ".join(f"{r['seq_len'] // 2**20}M: ring {r['ring_step_s'] * 1e3:.1f} ms vs sparse "
                         f"{r['sparse_step_s'] * 1e3:.1f} ms per layer fwd+bwd ({a:.2f}x); fwd+bwd bytes "
                         f"{r['ring_fwd_bwd_bytes_total'] / r['sparse_fwd_bwd_bytes_total']:.1f}x fewer"
                         for r, a in zip(power, adv))
        claims.append(check(
            "cp_modeled_step_time", f"At {power[0]['world_size']} GPUs and 1M-4M tokens (Qwen2-7B attention, bf16) "
            "the sparse exchange makes an attention layer's step faster than ring attention",
            paper="not in the paper (issue #12)", ours=text, holds=min(adv) > 1.0,
            rule="modelled ring / sparse step time > 1 at every length",
            inconclusive=("this is a model (stated bandwidth and compute rates), not a measurement; the 2-GPU NCCL "
                          "timing run has not been done (no 2-GPU machine was lent)")))
    return claims


__all__ = ["BWD_FLOP_RATIO", "DEFAULT_RATES", "QWEN2_7B", "build_claims", "log_bound", "measure_on_gloo", "model_table",
           "step_model"]
