"""lib.explorer: the numbers behind the figure, its clear errors, and the widget wiring (headless)."""
from __future__ import annotations

import numpy as np
import pytest

import lib.masks as masks
import lib.pattern_search as ps
from lib import explorer as ex


def test_power_numbers_at_the_paper_geometry():
    r = ex.explore("power", 128)
    layout = masks.block_layout("power", 128).numpy()
    assert r["selected_blocks"] == int(layout.sum()) and r["dense_causal_blocks"] == 128 * 129 // 2
    assert r["block_speed_bound"] == pytest.approx(8256 / layout.sum())
    assert r["flops_per_head"] == layout.sum() * 4 * 256 ** 2 * 128
    assert r["max_row_blocks"] == 10 and r["coverage"] == 1.0
    assert r["alpha_hat"] == r["alpha_hat_reference"]  # PowerAttention against itself
    assert r["full_depth"] == ps.full_coverage_depth(ps.step_set(128, 5, [8, 16, 32, 64]), 128, 1)


def test_typed_distances_equal_the_distance_set_pattern():
    r = ex.explore("6, 9 16;27", 64, window=2, sink=1, max_k=7)
    steps = ps.step_set(64, 2, [6, 9, 16, 27])
    assert r["pattern"] == "distance_set" and r["config"] == dict(distances=[6, 9, 16, 27], window=2, sink=1)
    np.testing.assert_array_equal(r["alpha_hat"], ps.alpha_curve(steps, 64, 7, 1))
    np.testing.assert_array_equal(r["distances"], ps.block_distances(steps, 64, 1))
    assert ex.explore([27, 16, 9, 6, 6], 64, window=2, sink=1, max_k=7)["alpha_hat"] == r["alpha_hat"]


def test_non_translation_invariant_pattern_and_ignored_distances():
    r = ex.explore("longnet", 128)
    assert 0 < r["coverage"] < 1 and r["full_depth"] is None and r["unreachable_blocks"] > 0
    assert ex.explore([4, 100], 64)["ignored_distances"] == [100]


def test_figure_and_json_numbers():
    import json

    import matplotlib.pyplot as plt

    fig, nums = ex.explore_figure("stride_slash", 96, max_k=8)
    assert len(fig.axes) >= 4
    json.dumps(nums)  # plain numbers only
    plt.close(fig)


@pytest.mark.parametrize("args,kwargs,words", [
    (([0, 4], 64), {}, "positive"),
    (([-3], 64), {}, "positive"),
    (("8, -2", 64), {}, "positive"),
    (("8, x", 64), {}, "not an integer"),
    (([2.5], 64), {}, "integers"),
    ((3.5, 64), {}, "expected a pattern name"),
    (([8], 64), dict(window=0), "window must be >= 1"),
    (([8], 64), dict(sink=-1), "sink must be >= 0"),
    (("power", ex.MAX_BLOCKS + 1), {}, f"<= {ex.MAX_BLOCKS}"),
    (("power", 0), {}, "num_blocks must be >= 1"),
    (("full", 64), dict(window=3), "has no 'window'"),
    (("power", 64), dict(max_k=0), "max_k"),
])
def test_bad_input_raises_clear_errors(args, kwargs, words):
    with pytest.raises(ValueError, match=words):
        ex.explore_figure(*args, **kwargs)


def test_widget_redraws_and_reports_errors():
    pytest.importorskip("ipywidgets")
    import matplotlib.pyplot as plt

    box = ex.explorer(num_blocks=64)
    ui = box.controls
    assert ui["pattern"].value == "power" and ui["window"].value == 5 and ui["distances"].disabled
    assert box.state["error"] is None and box.state["numbers"]["num_blocks"] == 64
    ui["pattern"].value = "full"  # no window or sink: both fields off
    assert ui["window"].disabled and ui["sink"].disabled and box.state["numbers"]["block_speed_bound"] == 1.0
    ui["pattern"].value = "distance_set"
    assert not ui["distances"].disabled and not ui["window"].disabled
    ui["distances"].value = "3, 0"  # a bad distance set does not raise out of the widget: it is reported
    assert "positive" in box.state["error"]
    ui["distances"].value = "3, 7"
    assert box.state["error"] is None and box.state["numbers"]["config"]["distances"] == [3, 7]
    plt.close("all")
