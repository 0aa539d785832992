"""Claims of notebooks 01, 02, 03 (lib.paper_claims) and 09 (lib.latency): verdicts follow the written rules.

Each claim function takes the ``results`` dict its notebook stores, so the tests build small results dicts
the way the notebooks do (or synthetic latency records) and check that

* the verdicts come out as the rules say, on the real patterns and on inputs altered to flip a rule;
* the stored tables the notebooks keep (``sparsity_definitions``, ``paper_vs_ours``, ``checks``,
  ``claim_counts``) are what the same lib functions compute;
* every list validates with ``lib.claims.validate``, and the committed results (where present) give
  valid claims too (the call used to recompute them).
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest

import lib.masks as masks
import lib.receptive_field as rf
from lib import latency, paper_claims, theory
from lib.claims import validate
from lib.masks import PATTERNS, section41_config

ROOT = Path(__file__).resolve().parents[1]


def verdicts(claims) -> dict:
    validate(claims)
    return {c["id"]: c["verdict"] for c in claims}


# ----------------------------------------------------------------------------- 01 masks
def masks_results(contexts=(32768, 65536), layout_blocks=128, block_tokens=256) -> dict:
    """Notebook 01's results, reduced to what the claims read (same lib calls as the notebook)."""
    layouts = {n: masks.block_layout(n, layout_blocks, **section41_config(n, layout_blocks)) for n in PATTERNS}
    budget = []
    for length in contexts:
        n = -(-length // block_tokens)
        budget += [dict(context=length, **theory.budget_stats(p, n, **section41_config(p, n)), variant="section 4.1")
                   for p in PATTERNS]
    sparsity = theory.sparsity_definitions(budget)
    results = dict(params=dict(layout_blocks=layout_blocks, block_tokens=block_tokens, context_lengths=list(contexts)),
                   configs_at_layout_blocks={n: section41_config(n, layout_blocks) for n in PATTERNS},
                   last_row_key_blocks={n: layouts[n][-1].nonzero().flatten().tolist() for n in PATTERNS},
                   budget=budget, sparsity_definitions=sparsity,
                   alternative_readings=theory.readings_table(theory.pseudo_code_readings(layout_blocks)))
    results["paper_vs_ours"] = theory.budget_vs_paper(budget, sparsity)
    return results


@pytest.fixture(scope="module")
def r01():
    return masks_results()


def test_masks_claims_verdicts(r01):
    v = verdicts(paper_claims.masks_claims(r01))
    assert v == {"S41.budget.sliding_window": "reproduced", "S41.budget.stride_slash": "reproduced",
                 "S41.budget.dilated": "reproduced", "S41.budget.power": "reproduced",
                 "S41.sparsity": "finding", "Alg5.product": "finding", "Alg4.mask_window": "finding",
                 "Alg45.precedence": "sanity check", "S41.stride": "sanity check"}


def test_masks_claims_follow_the_rules(r01):
    r = copy.deepcopy(r01)
    power32 = next(b for b in r["budget"] if b["context"] == 32768 and b["pattern"] == "power")
    power32["max_row"] = 13  # outside 10 +- 1
    for v in r["sparsity_definitions"].values():  # one definition at 0.94 for every pattern -> the paper holds
        v.update(min_at_32K=0.9381, max_at_32K=0.9419)
        break
    got = verdicts(paper_claims.masks_claims(r))
    assert got["S41.budget.power"] == "not reproduced" and got["S41.sparsity"] == "reproduced"
    # a dense window that matched the text would make Algorithm 4 fine as printed
    r["alternative_readings"][2].update(last_row=10, coverage_from_last_block=0.5)
    assert verdicts(paper_claims.masks_claims(r))["Alg4.mask_window"] == "reproduced"


def test_masks_stored_tables(r01):
    assert paper_claims.python_reads_and_first()
    rows = {r["quantity"]: r["ours"] for r in r01["paper_vs_ours"]}
    assert rows["LongNet: blocks per row at 32K (last row / max)"] == "8 / 13"
    assert r01["sparsity_definitions"]["sparsity_last_row"]["min_at_32K"] == 1 - 10 / 128
    names = [r["variant"] for r in r01["alternative_readings"]]
    assert names[0] == theory.LONGNET_PRODUCT and names[-1] == theory.DILATED_EMPTY
    assert paper_claims.masks_notes(r01)[0].startswith("| quantity | paper | ours |")


# ----------------------------------------------------------------------------- 02 receptive field
def rf_results(num_blocks=128) -> dict:
    dist = {n: rf.distances(masks.block_layout(n, num_blocks, **section41_config(n, num_blocks))).tolist()
            for n in PATTERNS}
    return dict(params=dict(num_blocks=num_blocks, max_k=12), distances=dist,
                stride_six_layers=dict(max_stride=24, min_budget=12),
                stride_same_budget_best=dict(stride=32, layers=8))


def test_receptive_field_claims_verdicts():
    r = rf_results()
    claims = paper_claims.receptive_field_claims(r)
    v = verdicts(claims)
    findings = {"RF.dilated_6", "RF.stride_6", "RF.appendixA_ratio"}
    assert {k for k, x in v.items() if x == "finding"} == findings
    assert all(x == "reproduced" for k, x in v.items() if k not in findings) and len(v) == 12
    assert "stride <= 24" in next(c for c in claims if c["id"] == "RF.stride_6")["why"]
    # the pass/FAIL table and the claims come from the same facts
    checks = paper_claims.receptive_field_checks(r["distances"], 128)
    assert [c["result"] for c in checks] == ["FAIL" if v[c["id"]] == "finding" else "pass" for c in claims[:-1]]
    assert [c["statement"] for c in checks] == [c["claim"] for c in claims[:-1]]


def test_receptive_field_claims_off_the_paper_size():
    v = verdicts(paper_claims.receptive_field_claims(rf_results(64)))
    for cid in ("RF.alpha1", "RF.B1", "RF.dilated_6", "RF.power_6", "RF.stride_6", "RF.appendixA_ratio"):
        assert v[cid] == "inconclusive", cid
    assert v["RF.dilated_half"] == "reproduced" and v["RF.power_full"] == "reproduced"


# ----------------------------------------------------------------------------- 03 Theorem B.1
def b1_results(sizes=(16, 17, 24, 32), n=64, depth=6) -> dict:
    rows = [theory.theorem_b1_row(s) for s in sizes]
    variants = theory.growth_variants(n)
    growth = {label: rf.receptive_field_growth(masks.block_layout(p, n, **cfg), depth).tolist()
              for label, (p, cfg) in variants.items()}
    exact = [sum(math.comb(int(math.log2(n)), i) for i in range(k + 1)) for k in range(1, depth + 1)]
    return dict(params=dict(rf_num_blocks=n, max_depth=depth), theorem_b1=rows,
                claim_counts=theory.theorem_b1_counts(rows), growth=growth,
                pure_power_matches_binomial_sum=growth[theory.PURE_POWER] == exact)


def test_theorem_b1_claims_verdicts():
    r = b1_results()
    assert r["claim_counts"]["claim1_out_degree_lt_log2_n_holds_for"] == 0
    assert r["claim_counts"]["claim2_distance_le_log2_n_holds_for"] == 4
    assert verdicts(paper_claims.theorem_b1_claims(r)) == {
        "B1.out_degree": "finding", "B1.distance": "reproduced", "B1.popcount": "sanity check",
        "B1.growth": "reproduced", "B1.binomial": "sanity check"}


def test_theorem_b1_claims_follow_the_rules():
    r = b1_results()
    for row in r["theorem_b1"]:
        row["out_degree_lt_log2_n"] = True   # if the strict bound held, claim 1 would be reproduced
        row["distance_le_log2_n"] = False    # and a failing claim 2 a finding
    r["growth"][theory.SLIDING_41][2] += 1  # no longer linear
    v = verdicts(paper_claims.theorem_b1_claims(r))
    assert v["B1.out_degree"] == "reproduced" and v["B1.distance"] == "finding" and v["B1.growth"] == "not reproduced"


# ----------------------------------------------------------------------------- 09 latency
def latency_results(device="cuda", shape="qwen2-7b", full=9.0, power=2.9, dec_power=7.0, dec_full_graph=13.0,
                    contexts=(65536, 131072)) -> dict:
    records = []
    for c in contexts:
        scale = c / contexts[-1]
        for v, s in (("full", full * scale ** 2), ("power", power * scale), ("power_flex", 1.1 * power * scale),
                     ("no_attention", 2.8 * scale), ("sliding_window", power * scale)):
            records.append(dict(phase="prefill", variant=v, context=c, batch=1, seconds=s))
        for v, ms in (("full", 90 * scale), ("full_graph", dec_full_graph * scale ** 0.5), ("power", dec_power),
                      ("no_attention", 6.7)):
            records.append(dict(phase="decode", variant=v, context=c, batch=1, ms_per_step=ms))
    records.append(dict(phase="decode", variant="power", context=contexts[-1], batch=8, error="skipped: memory"))
    physics = [dict(context=c, **{"power/full_floor_b1": 0.66}) for c in contexts]
    return dict(device=device, shape=shape, records=records, physics=physics, minference=latency.MINFERENCE,
                decode_kernel_check={"power": 2e-3, "full": 3e-3} if device == "cuda" else {},
                decode_impl="split-KV")


def test_figure4a_claims_gpu_rules():
    v = verdicts(latency.figure4a_claims(latency_results()))
    assert v == {"F4a.prefill": "reproduced", "F4a.decode": "reproduced", "F4a.minference_prefill": "inconclusive",
                 "F4a.minference_decode": "inconclusive", "target_prefill_vs_flex": "reproduced",
                 "target_decode_floor_b1": "reproduced", "target_decode_flat_b1": "reproduced",
                 "check_decode_kernel": "sanity check"}
    slow = latency_results(power=3.4, dec_power=9.5)  # 2.65x prefill, 73% decode: both below the paper
    claims = latency.figure4a_claims(slow)
    v = verdicts(claims)
    assert v["F4a.prefill"] == "not reproduced" and v["F4a.decode"] == "not reproduced"
    assert v["target_decode_floor_b1"] == "not reproduced"  # 9.5 / 6.7 ms > 1.1
    assert "bytes" in next(c for c in claims if c["id"] == "F4a.decode")["why"]
    # Issue 11's end-to-end Flex target: >= 5% ahead from 64K on (1.1x above); 3% is not enough.
    near = latency_results()
    near["records"] = [dict(r, seconds=r["seconds"] / 1.1 * 1.03) if r["variant"] == "power_flex" else r
                       for r in near["records"]]
    assert verdicts(latency.figure4a_claims(near))["target_prefill_vs_flex"] == "not reproduced"
    no128 = verdicts(latency.figure4a_claims(latency_results(contexts=(16384, 32768))))
    assert no128["F4a.prefill"] == "inconclusive" and no128["F4a.decode"] == "inconclusive"


def test_figure4a_claims_cpu_run_is_inconclusive():
    r = latency_results(device="cpu", shape="tiny", contexts=(256, 512))
    assert set(verdicts(latency.figure4a_claims(r)).values()) == {"inconclusive"}
    notes = latency.figure4a_notes(r)
    assert any("inconclusive here by rule" in n for n in notes)


def test_decode_kernel_ok():
    assert latency.decode_kernel_ok({"power": 1e-3, "full": 2e-3})
    assert not latency.decode_kernel_ok({})
    assert not latency.decode_kernel_ok({"power": 1e-3, "full": "RuntimeError: no kernel"})
    assert not latency.decode_kernel_ok({"power": 0.5})


def test_set_variant_passes_graph_kernel():
    import torch

    from lib import hf_attention

    model = latency.build_model("tiny", "cpu", torch.float32, num_hidden_layers=1)
    for flag in (True, False):
        latency.set_variant(model, "power", block_size=32, graph_kernel=flag, power={"window": 5, "sink": 1})
        assert getattr(model.config, hf_attention.CONFIG_KEY)["graph_kernel"] is flag


# ----------------------------------------------------------------------------- committed results
COMMITTED = {
    "01_masks": paper_claims.masks_claims,
    "02_receptive_field": paper_claims.receptive_field_claims,
    "03_theorem_b1": paper_claims.theorem_b1_claims,
    "09_figure4a_latency": latency.figure4a_claims,
}


@pytest.mark.parametrize("profile", ["gpu", "cpu"])
@pytest.mark.parametrize("name", sorted(COMMITTED))
def test_claims_of_committed_results(name, profile):
    """The claims of a committed run are recomputed from its results.json alone (older runs included)."""
    path = ROOT / "outputs" / profile / name / "results.json"
    if not path.exists():
        pytest.skip(f"no committed {path.relative_to(ROOT)}")
    results = json.loads(path.read_text())
    claims = COMMITTED[name](results)
    validate(claims)
    if name == "09_figure4a_latency" and results.get("device") != "cuda":
        assert {c["verdict"] for c in claims} == {"inconclusive"}
