"""Theorem B.1 (Appendix B) and the budget/sparsity arithmetic of Section 4.1.

Theorem B.1 is about the DAG on vertices 1..n with an edge i -> j whenever
i - j = 2^k (k = 0, 1, 2, ...). We index the vertices 0..n-1 (vertex v here is
the paper's v + 1); differences, and so every statement, are unchanged.

What the theorem claims, and what actually holds (checked in
tests/test_theorem_b1.py and notebooks/03_theorem_b1.ipynb):

1. "the out-degree of i is less than log n". Vertex i (1-based) has one edge
   per k with 2^k <= i - 1, i.e. ``(i - 1).bit_length()`` edges; the largest,
   at i = n, is ``(n - 1).bit_length() = ceil(log2 n)``. That is *equal* to
   log2 n when n is a power of two and *larger* than log2 n otherwise, so the
   strict "<" never holds at the top vertex (n >= 2). What the proof shows is
   "at most ceil(log2 n)".
2. "the distance from i to j is at most log n". The shortest path length is
   popcount(i - j) (the binary expansion is the fewest powers of two summing to
   i - j), whose maximum over i - j <= n - 1 is floor(log2 n) <= log2 n: holds.

Graph work (breadth-first shortest paths) uses ``scipy.sparse.csgraph``.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import shortest_path

from .masks import block_layout
from .masks._common import check_int


def power2_dag(n: int) -> sp.csr_matrix:
    """Sparse bool adjacency ``[n, n]`` of Theorem B.1's DAG (row = source vertex)."""
    n = check_int("n", n, 1, "power2_dag")
    rows, cols = [], []
    k = 1
    while k < n:
        src = np.arange(k, n)
        rows.append(src)
        cols.append(src - k)
        k *= 2
    if rows:
        rows, cols = np.concatenate(rows), np.concatenate(cols)
    else:
        rows = cols = np.zeros(0, dtype=np.int64)
    data = np.ones(len(rows), dtype=bool)
    return sp.csr_matrix((data, (rows, cols)), shape=(n, n))


def out_degrees(adjacency: sp.spmatrix) -> np.ndarray:
    """Out-degree of every vertex (number of stored edges per row)."""
    return np.diff(sp.csr_matrix(adjacency).indptr)


def out_degree_formula(n: int) -> np.ndarray:
    """Closed form for vertices 0..n-1: vertex v has ``v.bit_length()`` edges."""
    n = check_int("n", n, 1, "out_degree_formula")
    v = np.arange(n)
    return np.where(v > 0, np.floor(np.log2(np.maximum(v, 1))).astype(np.int64) + 1, 0)


def popcount(x) -> np.ndarray:
    """Number of ones in the binary expansion of each (non-negative) integer."""
    x = np.asarray(x, dtype=np.int64)
    if (x < 0).any():
        raise ValueError("popcount needs non-negative integers")
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x).astype(np.int64)
    return np.array([bin(int(v)).count("1") for v in x.ravel()], dtype=np.int64).reshape(x.shape)


def dag_distances(adjacency: sp.spmatrix, source: int) -> np.ndarray:
    """BFS shortest-path length from ``source`` to every vertex (-1: unreachable)."""
    d = shortest_path(sp.csr_matrix(adjacency), method="D", directed=True, unweighted=True, indices=int(source))
    return np.where(np.isinf(d), -1, d).astype(np.int64)


def theorem_b1_row(n: int) -> dict:
    """Measured out-degree and distance of the n-vertex DAG against log2 n.

    Distances are measured by BFS from the top vertex n - 1: every path only
    moves down and lands on existing vertices, so dist(i, j) depends on i - j
    alone and the top vertex sees every difference 1..n-1 (the tests check
    this translation invariance with all-pairs BFS on small n).
    """
    adj = power2_dag(n)
    deg = out_degrees(adj)
    dist = dag_distances(adj, n - 1)
    log2n = math.log2(n)
    max_deg, max_dist = int(deg.max()), int(dist.max())
    return {
        "n": n,
        "log2_n": log2n,
        "max_out_degree": max_deg,
        "ceil_log2_n": math.ceil(log2n),
        "max_distance": max_dist,
        "floor_log2_n": math.floor(log2n),
        "unreachable": int((dist < 0).sum()),
        "distance_is_popcount": bool(np.array_equal(dist[::-1], popcount(np.arange(n)))),
        "out_degree_lt_log2_n": max_deg < log2n,  # the paper's claim 1, as printed
        "out_degree_le_ceil_log2_n": max_deg <= math.ceil(log2n),
        "distance_le_log2_n": max_dist <= log2n,  # the paper's claim 2
    }


def budget_stats(name: str, num_blocks: int, **config) -> dict:
    """Per-row budget and sparsity of a block layout, under three definitions.

    * ``sparsity_square``: 1 - selected blocks / num_blocks**2 (vs the full square).
    * ``sparsity_causal``: 1 - selected blocks / (num_blocks (num_blocks + 1) / 2)
      (vs dense causal attention, the work full attention really does).
    * ``sparsity_last_row``: 1 - budget of the last query block / num_blocks
      (what one decoding step at the end of the sequence skips).
    """
    layout = block_layout(name, num_blocks, **config)
    per_row = layout.sum(-1).double()
    selected = float(per_row.sum())
    n = num_blocks
    return {
        "pattern": name,
        "num_blocks": n,
        "last_row": int(per_row[-1]),
        "max_row": int(per_row.max()),
        "mean_row": float(per_row.mean()),
        "sparsity_square": 1.0 - selected / n**2,
        "sparsity_causal": 1.0 - selected / (n * (n + 1) / 2),
        "sparsity_last_row": 1.0 - float(per_row[-1]) / n,
    }


__all__ = [
    "budget_stats",
    "dag_distances",
    "out_degree_formula",
    "out_degrees",
    "popcount",
    "power2_dag",
    "theorem_b1_row",
]
