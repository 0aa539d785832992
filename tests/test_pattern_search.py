"""lib.pattern_search: the fast BFS against lib.receptive_field, the searches against brute force,
the bounds against measured reach, the baselines against the paper's patterns, and the claims."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lib.masks as masks
import lib.pattern_search as ps
import lib.receptive_field as rf
from lib.claims import validate

SETTINGS = settings(max_examples=120, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def patterns(draw, max_n=90):
    n = draw(st.integers(1, max_n))
    steps = draw(st.lists(st.integers(1, max_n + 5), max_size=7))
    return n, steps, draw(st.integers(0, 3))


# ---------------------------------------------------------------- fast BFS == lib.receptive_field
@SETTINGS
@given(pat=patterns(), depth=st.integers(1, 12))
def test_fast_bfs_equals_receptive_field(pat, depth):
    n, steps, sink = pat
    layout = masks.block_layout("distance_set", n, distances=steps, window=1, sink=sink)
    np.testing.assert_array_equal(layout.numpy(), ps.ti_layout(steps, n, sink))
    ks = list(range(1, depth + 1))
    expected = rf.theoretical_accuracy_curve(layout, ks)
    np.testing.assert_array_equal(ps.alpha_curve(steps, n, depth, sink), expected)
    assert ps.score(steps, n, depth, sink) == round(expected.sum() * n)
    np.testing.assert_array_equal(ps.block_distances(steps, n, sink), rf.distances(layout))
    full = ps.full_coverage_depth(steps, n, sink)
    assert full == (None if rf.coverage(layout) < 1 else int(rf.distances(layout).max()))


@SETTINGS
@given(pat=patterns(), window=st.integers(1, 9), depth=st.integers(1, 8))
def test_config_round_trip(pat, window, depth):
    """to_config gives a distance_set config with the same layout (window = the run 1..m of the steps)."""
    n, steps, sink = pat
    s = ps.step_set(n, window, steps)
    cfg = ps.to_config(s, sink)
    assert all(d >= cfg["window"] for d in cfg["distances"])
    assert ps.step_set(n, cfg["window"], cfg["distances"]) == s
    assert np.array_equal(masks.block_layout("distance_set", n, **cfg).numpy(), ps.ti_layout(s, n, sink))
    assert int(masks.block_layout("distance_set", n, **cfg).sum(-1).max()) <= ps.budget_of(s, sink)
    m = ps.metrics(s, n, depth, sink)
    assert m["score"] == ps.score(s, n, depth, sink) and len(m["alpha_hat"]) == depth


# ---------------------------------------------------------------- bounds
@SETTINGS
@given(pat=patterns(max_n=200), depth=st.integers(1, 10))
def test_reach_never_exceeds_the_bounds(pat, depth):
    n, steps, sink = pat
    s = ps.step_set(n, 1, steps)
    budget = ps.budget_of(s, sink)
    b = ps.bounds(n, budget, depth, sink)
    counts = ps.reach_counts(s, n, depth, sink)[1:]
    assert (counts <= np.array(b["translation_invariant"])).all()
    assert (counts <= np.array(b["degree"])).all()
    assert ps.score(s, n, depth, sink) <= sum(b["translation_invariant"]) <= sum(b["degree"])


def test_bound_values():
    b = ps.bounds(1000, 4, 3, sink=0)  # 3 distances: C(3 + k, k) multisets; degree 3: 1 + 3 + 9 + 27
    assert b["translation_invariant"] == [4, 10, 20] and b["degree"] == [4, 13, 40]
    assert ps.bounds(10, 4, 3, sink=0)["translation_invariant"] == [4, 10, 10]  # capped at n
    assert ps.bounds(128, 10, 6)["min_full_depth_translation_invariant"] == 3  # 1 + C(8 + 3, 3) = 166 >= 128
    # A Sidon-like set reaches the multiset bound at k = 2: {1, 3} sums 0, 1, 3, 2, 4, 6 -> 6 = C(4, 2).
    assert ps.reach_counts((1, 3), 100, 2, sink=0)[2] == math.comb(4, 2)


# ---------------------------------------------------------------- baselines
@pytest.mark.parametrize("n,budget", [(128, 10), (512, 12), (2048, 14)])
def test_power2_at_its_budget_is_the_paper_pattern(n, budget):
    assert ps.budget_for(n) == budget
    p2 = ps.baselines(n, budget)["power-2"]
    assert p2["config"]["window"] == 5 and p2["dropped"] == []
    assert np.array_equal(masks.block_layout("distance_set", n, **p2["config"]).numpy(),
                          masks.block_layout("power", n, **masks.section41_config("power", n)).numpy())


@pytest.mark.parametrize("n", [16, 128, 512, 2048])
@pytest.mark.parametrize("budget", [4, 10, 14])
def test_baselines_respect_the_budget(n, budget):
    for key, b in ps.baselines(n, budget).items():
        layout = masks.block_layout(b["pattern"], n, **b["config"])
        if key in ps.FAMILIES:
            assert ps.budget_of(b["steps"], b["sink"]) <= budget, key
            assert int(layout.sum(-1).max()) <= budget, key
        np.testing.assert_array_equal(layout.numpy(), ps.ti_layout(b["steps"], n, b["sink"]))


def test_fit_family_keeps_the_largest_values_when_nothing_fits():
    fit = ps.fit_family(ps.fibonacci(128), 128, 10, 1)  # 1, 2, 3, 5, ..., 89 need 12 blocks at least
    assert fit["window"] + 1 + len(fit["distances"]) == 10
    assert fit["distances"][-1] == 89 and fit["dropped"] and max(fit["dropped"]) < min(fit["distances"])
    assert ps.fit_family(ps.powers(3, 128), 128, 10, 1) == dict(window=6, distances=[9, 27, 81], sink=1, dropped=[])


def test_steps_from_pattern():
    steps, sink = ps.steps_from_pattern("stride_slash", 128, window=6, stride=32, sink=1)
    assert steps == (1, 2, 3, 4, 5, 32, 64, 96) and sink == 1
    assert ps.steps_from_pattern("sliding_window", 40) == ((1, 2, 3, 4, 5, 6, 7, 8), 1)
    with pytest.raises(ValueError, match="not translation invariant"):
        ps.steps_from_pattern("longnet", 64)


# ---------------------------------------------------------------- searches
def _brute_force(n, depth, budget, sink):
    """Best score over all sets, scored by lib.receptive_field on lib.masks layouts (slow, independent)."""
    best = -1
    for steps in itertools.combinations(range(1, n), budget - 1 - sink):
        layout = masks.block_layout("distance_set", n, distances=steps, sink=sink)
        best = max(best, round(rf.theoretical_accuracy_curve(layout, range(1, depth + 1)).sum() * n))
    return best


@pytest.mark.parametrize("n,depth,budget,sink", [(10, 2, 4, 1), (12, 3, 4, 0), (9, 1, 5, 1)])
def test_exhaustive_equals_brute_force(n, depth, budget, sink):
    ex = ps.exhaustive_search(n, depth, budget, sink)
    assert ex["score"] == _brute_force(n, depth, budget, sink)
    assert ex["evaluated"] == math.comb(n - 1, budget - 1 - sink) and ex["optimal_sets"] >= 1
    assert ps.score(ex["steps"], n, depth, sink) == ex["score"]


@pytest.mark.parametrize("n,depth,budget", [(14, 2, 5), (20, 3, 5), (16, 4, 6)])
def test_unbounded_beam_is_exhaustive(n, depth, budget):
    """A beam wide enough to keep every partial set is the exhaustive search (window 1 = no constraint)."""
    wide = ps.beam_search(n, depth, budget, window=1, sink=1, width=10**6)
    assert wide["score"] == ps.exhaustive_search(n, depth, budget, 1)["score"]


def test_searches_are_seeded_and_improve():
    n, depth, budget = 96, 4, 9
    p2 = ps.baselines(n, budget)["power-2"]["steps"]
    a = ps.search(n, depth, budget, beam_width=3, seed=5, power2_steps=p2, random_starts=2)
    b = ps.search(n, depth, budget, beam_width=3, seed=5, power2_steps=p2, random_starts=2)
    assert {k: (v["steps"], v["score"]) for k, v in a.items()} == {k: (v["steps"], v["score"]) for k, v in b.items()}
    assert set(a) == set(ps.METHODS)
    assert a["swap_beam"]["score"] >= a["beam"]["score"]
    assert a["swap_power2"]["score"] >= ps.score(p2, n, depth)
    for v in a.values():
        assert ps.budget_of(v["steps"]) <= budget and ps.score(v["steps"], n, depth) == v["score"]


def test_swap_search_ends_in_a_local_optimum():
    n, depth = 30, 3
    r = ps.swap_search((1, 2, 3, 4), n, depth, sink=1, max_passes=100)
    best = r["score"]
    cur = r["steps"]
    for out in cur:
        for c in range(1, n):
            if c not in cur:
                assert ps.score([s for s in cur if s != out] + [c], n, depth) <= best


def test_bad_inputs():
    with pytest.raises(ValueError, match="MAX_EXHAUSTIVE"):
        ps.exhaustive_search(2048, 6, 14)
    with pytest.raises(ValueError, match="exceed the budget"):
        ps.beam_search(128, 6, 10, window=10, sink=1)
    with pytest.raises(ValueError, match="positive integer"):
        ps.score([0, 3], 16, 2)
    with pytest.raises(ValueError, match="'depth' must be an integer >= 1"):
        ps.score([1, 3], 16, 0)
    with pytest.raises(ValueError, match="unknown family"):
        ps.family_values("power-x", 16)
    with pytest.raises(ValueError, match="budget"):
        ps.budget_for(128, 1)


# ---------------------------------------------------------------- study and claims
@pytest.fixture(scope="module")
def small_study():
    return ps.run_study(sizes=(48, 96), depths=(3, 8), beam_width=2, random_starts=1, swap_passes=5,
                        control_cases=[(16, 3, 5)], progress=False)


def test_study_is_reproducible(small_study):
    again = ps.run_study(sizes=(48, 96), depths=(3, 8), beam_width=2, random_starts=1, swap_passes=5,
                         control_cases=[(16, 3, 5)], progress=False)
    strip = lambda r: [{k: (v["steps"], v["score"]) for k, v in c["patterns"].items()} for c in r["cases"]]  # noqa: E731
    assert strip(again) == strip(small_study)
    assert again["best_pattern_config"] == small_study["best_pattern_config"]


def test_study_results(small_study):
    assert [(c["n"], c["depth"]) for c in small_study["cases"]] == [(48, 3), (48, 8), (96, 3), (96, 8)]
    for c in small_study["cases"]:
        best = c["patterns"][c["best"]]
        assert all(best["score"] >= p["score"] for p in c["patterns"].values() if p["budget"] <= c["budget"])
        assert best["auc"] <= c["bounds"]["auc_translation_invariant"] + 1e-12
    assert all(not v["mismatches"] for v in small_study["verification"])
    cfg = small_study["best_pattern_config"]  # no 128-block case here: the largest n at depth 6's fallback
    assert set(cfg) == {"distances", "window", "sink"}
    masks.block_layout("distance_set", 128, **cfg)  # usable as is


def test_claims_follow_the_rules(small_study):
    cl = validate(ps.claims(small_study))
    by_id = {c["id"]: c for c in cl}
    for s in map(ps.standing, small_study["cases"]):
        tag = f"n{s['n']}_L{s['depth']}"
        assert by_id[f"power2_unbeaten_{tag}"]["verdict"] == ("finding" if s["gap"] > 0 else "reproduced")
        assert (by_id[f"power2_near_optimal_{tag}"]["verdict"] == "reproduced") == (s["category"] != "beaten")
        if s["gap"] > ps.NEAR_OPTIMAL_GAP:
            assert s["category"] == "beaten"
    assert by_id["fast_bfs_equals_receptive_field"]["verdict"] == "sanity check"
    assert "answer_same_across_depth" in by_id and "answer_same_across_n_L3" in by_id


def test_unbeaten_is_inconclusive_when_the_control_fails(small_study):
    import copy

    r = copy.deepcopy(small_study)
    for c in r["cases"]:  # pretend power-of-2 is the best everywhere ...
        p2 = c["patterns"]["power-2"]
        for p in c["patterns"].values():
            p["score"], p["auc"] = min(p["score"], p2["score"]), min(p["auc"], p2["auc"])
        c["best"] = "power-2"
    r["controls"][0]["hit"] = False  # ... but the search missed an exhaustive optimum
    cl = {c["id"]: c for c in ps.claims(r)}
    assert cl["power2_unbeaten_n48_L3"]["verdict"] == "inconclusive"
    assert cl["search_control_exhaustive"]["verdict"] == "not reproduced"
    r["controls"][0]["hit"] = True
    assert {c["id"]: c for c in ps.claims(r)}["power2_unbeaten_n48_L3"]["verdict"] == "reproduced"


def test_standing_categories():
    def case(p2_score, best_score, p2_depth, quick_depth):
        pat = lambda s, d: dict(score=s, auc=s / 100, full_depth=d, config=dict(window=1, distances=[], sink=1))  # noqa: E731
        return dict(n=10, depth=10, budget=4, best="x", quickest="q",
                    patterns={"power-2": pat(p2_score, p2_depth), "x": pat(best_score, p2_depth),
                              "q": pat(best_score, quick_depth)},
                    bounds=dict(auc_translation_invariant=1.0, auc_degree=1.0, min_full_depth_translation_invariant=1))
    assert ps.standing(case(100, 100, 3, 3))["category"] == "optimal"
    assert ps.standing(case(96, 100, 3, 3))["category"] == "near-optimal"
    assert ps.standing(case(96, 100, 5, 3))["category"] == "beaten"  # two layers later than the quickest
    assert ps.standing(case(94, 100, 3, 3))["category"] == "beaten"  # 6% below the best
