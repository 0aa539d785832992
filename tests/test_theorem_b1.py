"""Theorem B.1 (Appendix B) as property tests.

The DAG: vertices 1..n, edge i -> j iff i - j = 2^k, k >= 0 (here 0-based).
What we test, precisely:

* out-degree of vertex i (1-based) = #{k >= 0 : 2^k <= i - 1} = bit_length(i - 1),
  so the maximum, at i = n, is ceil(log2 n). The paper's claim 1 ("less than
  log n") is therefore FALSE as printed: equality when n is a power of two,
  strictly greater otherwise (e.g. n = 5: vertex 5 -> 4, 3, 1, out-degree 3 >
  log2 5 = 2.32). What holds is "at most ceil(log2 n)".
* distance(i, j) = popcount(i - j) for every j < i, hence <= floor(log2 n) <=
  log2 n: claim 2 holds, and the bound floor(log2 n) is attained.
* PowerAttention's block layout with window 1 and sink 0 is exactly that DAG
  plus self loops.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse.csgraph import shortest_path

import lib.masks as masks
from lib import theory

SETTINGS = settings(max_examples=100, derandomize=True, deadline=None)


@SETTINGS
@given(n=st.integers(1, 5000))
def test_out_degree_is_bit_length_and_at_most_ceil_log2(n):
    deg = theory.out_degrees(theory.power2_dag(n))
    expected = np.array([int(v).bit_length() for v in range(n)])  # 0-based v = paper's i - 1
    assert np.array_equal(deg, expected)
    assert np.array_equal(theory.out_degree_formula(n), expected)
    assert deg.max() == (n - 1).bit_length() == (math.ceil(math.log2(n)) if n > 1 else 0)


@SETTINGS
@given(n=st.integers(2, 5000))
def test_paper_claim_1_strict_bound_fails_at_the_top_vertex(n):
    top = int(theory.out_degrees(theory.power2_dag(n))[-1])
    if n & (n - 1) == 0:
        assert top == math.log2(n)  # equality: "< log n" fails
    else:
        assert top > math.log2(n)  # strictly larger: "< log n" fails
    # The lower half of the vertices stays within log2 n (bit_length(n // 2) = floor(log2 n)).
    deg = theory.out_degrees(theory.power2_dag(n))
    assert (deg[: n // 2 + 1] <= math.log2(n)).all()


@SETTINGS
@given(data=st.data(), n=st.integers(2, 5000))
def test_distance_is_popcount_of_difference(data, n):
    adj = theory.power2_dag(n)
    i = data.draw(st.integers(1, n - 1), label="i")
    d = theory.dag_distances(adj, i)
    j = np.arange(i + 1)
    assert np.array_equal(d[: i + 1], theory.popcount(i - j))
    assert (d[i + 1:] == -1).all()  # nothing above i is reachable (acyclic, edges go down)
    assert d.max() <= math.log2(n)


@SETTINGS
@given(n=st.integers(1, 1 << 14))
def test_max_distance_is_floor_log2_n(n):
    row = theory.theorem_b1_row(n)
    assert row["max_distance"] == math.floor(math.log2(n))
    assert row["distance_le_log2_n"] and row["distance_is_popcount"] and row["unreachable"] == 0
    assert row["max_out_degree"] == row["ceil_log2_n"]


@pytest.mark.parametrize("n", [1, 2, 3, 7, 16, 33, 100])
def test_distance_depends_only_on_difference_all_pairs(n):
    # Justifies measuring from the top vertex only (theorem_b1_row).
    all_pairs = shortest_path(theory.power2_dag(n), method="D", unweighted=True)
    i, j = np.tril_indices(n)
    assert np.array_equal(all_pairs[i, j], theory.popcount(i - j))
    assert np.isinf(all_pairs[np.triu_indices(n, 1)]).all()


@SETTINGS
@given(n=st.integers(1, 600))
def test_power_layout_window1_sink0_is_the_dag_plus_self_loops(n):
    layout = masks.block_layout("power", n, window=1, sink=0).numpy()
    dag = (theory.power2_dag(n) + sp.identity(n, dtype=bool, format="csr")).toarray()
    assert np.array_equal(layout, dag)


def test_popcount_and_input_checks():
    assert theory.popcount([0, 1, 2, 3, 255, 1 << 40]).tolist() == [0, 1, 1, 2, 8, 1]
    with pytest.raises(ValueError, match="non-negative"):
        theory.popcount([-1])
    with pytest.raises(ValueError, match="'n'"):
        theory.power2_dag(0)
    with pytest.raises(ValueError, match="'n'"):
        theory.power2_dag(2.5)


def test_budget_stats_definitions():
    s = theory.budget_stats("sliding_window", 128)
    layout = masks.block_layout("sliding_window", 128)
    total = int(layout.sum())
    assert s["last_row"] == 10 and s["max_row"] == 10
    assert s["sparsity_square"] == pytest.approx(1 - total / 128**2)
    assert s["sparsity_causal"] == pytest.approx(1 - total / (128 * 129 / 2))
    assert s["sparsity_last_row"] == pytest.approx(1 - 10 / 128)
    assert theory.budget_stats("full", 64)["sparsity_causal"] == 0.0
