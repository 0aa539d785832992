"""The DAG view of Section 3.1 and the theoretical accuracy of Appendix A.

A block layout ``L`` (bool ``[n, n]``, rows = query blocks) is the adjacency
matrix of a DAG: an edge q -> k for every key block k that query block q
attends to. One transformer layer moves information one edge, so after k
layers the last block can have read exactly the blocks within k edges of it:

    B_k  = { blocks at shortest-path distance <= k from the last block }
    alpha_hat_k = |B_k| / n          (Appendix A's "theoretical accuracy")

Appendix A's text says "the ratio of total blocks to |B_k|", but its own
example (B_1 of sliding window has 10 of 128 blocks, alpha_hat_1 = 10/128 =
7.82%) is |B_k| / n: the extracted text inverts the ratio, we follow the
example. Likewise alpha_k (the experimental accuracy) is retrieved samples
within B_k over all samples.

Graph work uses ``scipy.sparse.csgraph`` (breadth-first shortest paths).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import shortest_path

UNREACHABLE = -1


def _as_adjacency(layout) -> sp.csr_matrix:
    if isinstance(layout, torch.Tensor):
        layout = layout.detach().cpu().numpy()
    layout = np.asarray(layout)
    if layout.ndim != 2 or layout.shape[0] != layout.shape[1] or layout.shape[0] == 0:
        raise ValueError(f"layout must be a square [n, n] matrix with n >= 1, got shape {layout.shape}")
    if layout.dtype != bool:
        raise ValueError(f"layout must be boolean, got dtype {layout.dtype}")
    return sp.csr_matrix(layout)


def distances(layout, source: int | None = None) -> np.ndarray:
    """Shortest-path length (in layers) from ``source`` (default: last block) to every block.

    Blocks that cannot be reached get ``UNREACHABLE`` (-1). The source itself is 0.
    """
    adj = _as_adjacency(layout)
    n = adj.shape[0]
    source = n - 1 if source is None else int(source)
    if not 0 <= source < n:
        raise ValueError(f"source must be in [0, {n - 1}], got {source}")
    d = shortest_path(adj, method="D", directed=True, unweighted=True, indices=source)
    return np.where(np.isinf(d), UNREACHABLE, d).astype(np.int64)


def _check_depth(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer number of layers, got {k!r}")
    return int(k)


def reachable_within(layout, k: int, source: int | None = None) -> np.ndarray:
    """Bool mask of B_k: blocks within ``k`` edges (layers) of ``source`` (default: last block).

    The source block itself (distance 0) belongs to every B_k: each pattern
    attends to its own diagonal block.
    """
    k = _check_depth(k)
    d = distances(layout, source)
    return (d != UNREACHABLE) & (d <= k)


def theoretical_accuracy(layout, k: int) -> float:
    """alpha_hat_k = |B_k| / num_blocks (Appendix A), from the last block."""
    within = reachable_within(layout, k)
    return float(within.sum()) / within.size


def theoretical_accuracy_curve(layout, ks) -> np.ndarray:
    """alpha_hat_k for every k in ``ks``, computed from one shortest-path search."""
    d = distances(layout)
    return np.array([float(((d != UNREACHABLE) & (d <= _check_depth(k))).sum()) / d.size for k in ks])


def coverage(layout) -> float:
    """Fraction of blocks the last block can reach at any depth."""
    return float((distances(layout) != UNREACHABLE).mean())


def receptive_field_growth(layout, max_depth: int) -> np.ndarray:
    """|B_k| for k = 1..max_depth (number of blocks, not a fraction)."""
    d = distances(layout)
    return np.array([int(((d != UNREACHABLE) & (d <= k)).sum()) for k in range(1, max_depth + 1)])


def layer_reachability(layout, layers: int) -> np.ndarray:
    """For Figure 1a: ``R[l, j]`` is True if block j reaches the last block's
    output after l + 1 layers (i.e. shortest distance <= l + 1)."""
    d = distances(layout)
    return np.stack([(d != UNREACHABLE) & (d <= l) for l in range(1, layers + 1)])


__all__ = [
    "UNREACHABLE",
    "coverage",
    "distances",
    "layer_reachability",
    "reachable_within",
    "receptive_field_growth",
    "theoretical_accuracy",
    "theoretical_accuracy_curve",
]
