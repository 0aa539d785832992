"""The DAG view of Section 3.1 / Appendix A on the Section 4.1 layouts (128 blocks = 32K tokens)."""
from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lib.masks as masks
import lib.receptive_field as rf

N = 128


def hand_bfs(layout: np.ndarray, source: int) -> np.ndarray:
    """Plain queue BFS over rows of the layout (query block -> key blocks)."""
    n = layout.shape[0]
    dist = np.full(n, -1)
    dist[source] = 0
    queue = deque([source])
    while queue:
        u = queue.popleft()
        for v in np.flatnonzero(layout[u]):
            if dist[v] < 0:
                dist[v] = dist[u] + 1
                queue.append(v)
    return dist


def test_alpha_hat_1_sliding_window_is_10_of_128():
    # Appendix A: B_1 = {1, 120, ..., 128} (1-based), alpha_hat_1 = 10/128 (= 7.8125%, printed "7.82%").
    layout = masks.block_layout("sliding_window", N)
    assert rf.theoretical_accuracy(layout, 1) == 10 / N
    assert np.flatnonzero(rf.reachable_within(layout, 1)).tolist() == [0] + list(range(119, 128))


def test_dilated_reaches_exactly_half():
    layout = masks.block_layout("dilated", N)
    reach = rf.distances(layout) != rf.UNREACHABLE
    assert rf.coverage(layout) == 0.5
    # Section 3.2: blocks at odd distance from the last block are never reached.
    assert np.array_equal(reach, (N - 1 - np.arange(N)) % 2 == 0)


def test_longnet_has_holes_at_the_last_block_of_each_segment():
    layout = masks.block_layout("longnet", N)
    d = rf.distances(layout)
    assert rf.coverage(layout) < 1.0
    # Section 3.2: "cannot access ... the last token in each segment": with 8-block
    # segments, every block 8m + 7 other than the source itself is unreachable.
    last_of_segment = np.arange(7, N - 1, 8)
    assert (d[last_of_segment] == rf.UNREACHABLE).all()
    assert d[N - 1] == 0


@pytest.mark.parametrize("name", ["full", "power", "stride_slash", "sliding_window"])
def test_full_coverage_patterns(name):
    assert rf.coverage(masks.block_layout(name, N)) == 1.0


@settings(max_examples=60, derandomize=True, deadline=None)
@given(n=st.integers(1, 300), window=st.integers(1, 8), sink=st.integers(0, 2))
def test_power_covers_everything_at_any_length(n, window, sink):
    # Every distance is a sum of powers of two, so nothing is ever unreachable,
    # and the depth needed is at most the number of bits of n - 1.
    d = rf.distances(masks.block_layout("power", n, window=window, sink=sink))
    assert (d >= 0).all()
    assert d.max() <= max(n - 1, 1).bit_length()


def test_power_reaches_all_128_blocks_in_6_layers_sliding_needs_16():
    assert rf.theoretical_accuracy(masks.block_layout("power", N), 6) == 1.0
    assert rf.theoretical_accuracy(masks.block_layout("power", N), 5) < 1.0
    assert rf.distances(masks.block_layout("sliding_window", N)).max() == 16


def test_alpha_hat_is_monotone_and_curve_matches_pointwise():
    ks = list(range(1, 13))
    for name in masks.PATTERNS:
        layout = masks.block_layout(name, N)
        curve = rf.theoretical_accuracy_curve(layout, ks)
        assert np.all(np.diff(curve) >= 0)
        assert curve.tolist() == [rf.theoretical_accuracy(layout, k) for k in ks]
        assert curve[-1] <= rf.coverage(layout)
        growth = rf.receptive_field_growth(layout, 12)
        assert np.allclose(growth / N, curve)
        layers = rf.layer_reachability(layout, 6)
        assert layers.shape == (6, N)
        assert np.allclose(layers.mean(axis=1), curve[:6])


@st.composite
def random_layouts(draw):
    n = draw(st.integers(1, 24))
    bits = draw(st.lists(st.booleans(), min_size=n * n, max_size=n * n))
    layout = np.tril(np.array(bits, dtype=bool).reshape(n, n))
    source = draw(st.integers(0, n - 1))
    return layout, source


@settings(max_examples=200, derandomize=True, deadline=None)
@given(case=random_layouts())
def test_shortest_paths_match_hand_bfs(case):
    layout, source = case
    expected = hand_bfs(layout, source)
    assert np.array_equal(rf.distances(layout, source), expected)
    assert np.array_equal(rf.distances(torch.from_numpy(layout), source), expected)
    if source == layout.shape[0] - 1:
        assert np.array_equal(rf.distances(layout), expected)
        k = 2
        within = (expected >= 0) & (expected <= k)
        assert np.array_equal(rf.reachable_within(layout, k), within)
        assert rf.theoretical_accuracy(layout, k) == within.mean()


BAD = [
    (lambda: rf.distances(np.ones((3, 4), dtype=bool)), "square"),
    (lambda: rf.distances(np.ones((0, 0), dtype=bool)), "n >= 1"),
    (lambda: rf.distances(np.ones(5, dtype=bool)), "square"),
    (lambda: rf.distances(np.ones((3, 3), dtype=np.int64)), "boolean"),
    (lambda: rf.distances(np.ones((3, 3), dtype=bool), source=3), "source"),
    (lambda: rf.distances(np.ones((3, 3), dtype=bool), source=-1), "source"),
    (lambda: rf.theoretical_accuracy(np.ones((3, 3), dtype=bool), 0), "k must be"),
    (lambda: rf.theoretical_accuracy(np.ones((3, 3), dtype=bool), 1.5), "k must be"),
    (lambda: rf.theoretical_accuracy(np.ones((3, 3), dtype=bool), True), "k must be"),
    (lambda: rf.theoretical_accuracy_curve(np.ones((3, 3), dtype=bool), [1, 0]), "k must be"),
]


@pytest.mark.parametrize("call, match", BAD, ids=[m for _, m in BAD])
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
