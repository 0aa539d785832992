"""An interactive pattern explorer (issue 13): pick a paper pattern or type a distance set.

``explore_figure(pattern_or_distances, num_blocks, window, sink)`` is a pure function: it builds
the pattern's block layout with ``lib.masks`` and draws, in one matplotlib figure,

* the block layout (rows = query blocks);
* the alpha_hat_k curve (Appendix A, ``lib.receptive_field``) against PowerAttention's;
* the number of key blocks each query block reads (its budget);
* the shortest-path map from the last block (Figure 2-II: path length per block; grey = never),
  for the pattern and for PowerAttention;

and returns the figure with a dict of numbers: coverage, the depth at which every block is
reached, the budget, and the work against full attention: selected block pairs vs the
``n (n + 1) / 2`` pairs of dense causal attention (the block-count speed bound, an upper
bound on what a block-sparse kernel can gain) and the forward attention FLOPs per head
(``4 block_size^2 head_dim`` per block pair: QK^T and PV), both counted by blocks as the
kernels compute them.

``explorer()`` wires ipywidgets to it for JupyterLab. ``pattern_or_distances`` is a name from
``lib.masks.NAMES`` (paper patterns use their §4.1 configuration at ``num_blocks`` unless
``window``/``sink`` override it), a sequence of positive block distances, or a string of
them ("8, 16, 32, 64"); a distance set has a window of 1 (the diagonal) and no sink unless
given. Up to ``MAX_BLOCKS`` blocks: the dense layout is ``n^2`` booleans (16 MiB at 4096)
and the figure draws all of it (down-sampled by ``any`` to at most ``MAX_DRAWN`` pixels a side).
"""
from __future__ import annotations

import math
import numbers
import re

import numpy as np

from . import masks
from . import receptive_field as rf

#: Largest number of blocks the explorer accepts (1M tokens at 256-token blocks).
MAX_BLOCKS = 4096
#: The layout panel is reduced to at most this many pixels a side (a block of pixels is set if any block is).
MAX_DRAWN = 256
#: The pattern every curve is compared with.
REFERENCE = "power"


def _int(name: str, value, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"explorer: {name} must be an integer, got {value!r}")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        hi = f" and <= {maximum}" if maximum is not None else ""
        raise ValueError(f"explorer: {name} must be >= {minimum}{hi}, got {value}")
    return value


def parse_distances(text) -> list[int]:
    """``"8, 16 32;64"`` -> ``[8, 16, 32, 64]``; ValueError on anything but positive integers."""
    if not isinstance(text, str):
        raise ValueError(f"explorer: distances must be a string of integers, got {text!r}")
    tokens = [t for t in re.split(r"[\s,;]+", text.strip()) if t]
    out = []
    for t in tokens:
        if not re.fullmatch(r"[+-]?\d+", t):
            raise ValueError(f"explorer: {t!r} is not an integer block distance (type e.g. '8, 16, 32, 64')")
        d = int(t)
        if d < 1:
            raise ValueError(f"explorer: block distances must be positive (>= 1), got {d}; "
                             "distance 0 is the diagonal, always attended (use window for 1..w-1)")
        out.append(d)
    return out


def resolve(pattern_or_distances, num_blocks: int, window=None, sink=None) -> tuple[str, dict, str]:
    """``(lib.masks name, complete config, label)`` of what the explorer is asked to draw."""
    num_blocks = _int("num_blocks", num_blocks, 1, MAX_BLOCKS)
    if window is not None:
        window = _int("window", window, 1)
    if sink is not None:
        sink = _int("sink", sink, 0)
    spec = pattern_or_distances
    if isinstance(spec, str) and spec in masks.PATTERNS:
        cfg = masks.section41_config(spec, num_blocks)
        for key, value in (("window", window), ("sink", sink)):
            if value is not None:
                if key not in cfg:
                    raise ValueError(f"explorer: {masks.LABELS[spec]} has no '{key}' (its keywords: {sorted(cfg)})")
                cfg[key] = value
        name, label = spec, masks.LABELS[spec]
    else:
        if isinstance(spec, str):
            distances = [] if spec == "distance_set" else parse_distances(spec)
        elif isinstance(spec, (list, tuple, range, np.ndarray)):
            distances = []
            for d in spec:
                if isinstance(d, bool) or not isinstance(d, numbers.Integral):
                    raise ValueError(f"explorer: block distances must be integers, got {d!r}")
                if int(d) < 1:
                    raise ValueError(f"explorer: block distances must be positive (>= 1), got {int(d)}")
                distances.append(int(d))
        else:
            raise ValueError(f"explorer: expected a pattern name from {list(masks.PATTERNS)}, a sequence of block "
                             f"distances or a string of them, got {spec!r}")
        cfg = dict(distances=sorted(set(distances)), window=1 if window is None else window,
                   sink=0 if sink is None else sink)
        name = "distance_set"
        shown = cfg["distances"] if len(cfg["distances"]) <= 8 else cfg["distances"][:8] + ["..."]
        label = f"distances {shown}"
    cfg = masks.resolve(name, **cfg)[1]
    if name == "distance_set":
        label += f", window {cfg['window']}, sink {cfg['sink']}"
    elif "window" in cfg:
        label += f" (window {cfg['window']}" + (f", sink {cfg['sink']})" if "sink" in cfg else ")")
    return name, cfg, label


def explore(pattern_or_distances, num_blocks: int = 128, window=None, sink=None, *, max_k: int = 12,
            block_size: int = 256, head_dim: int = 128) -> dict:
    """The numbers of ``explore_figure`` (no drawing), plus numpy arrays for the panels: ``layout``,
    ``distances``/``reference_distances`` (path length per block, -1 = never) and ``per_row``/
    ``reference_per_row`` (key blocks per query block)."""
    name, cfg, label = resolve(pattern_or_distances, num_blocks, window, sink)
    max_k = _int("max_k", max_k, 1, 1024)
    block_size = _int("block_size", block_size, 1)
    head_dim = _int("head_dim", head_dim, 1)
    n = num_blocks
    layout = masks.block_layout(name, n, **cfg)
    ref_layout = masks.block_layout(REFERENCE, n, **masks.section41_config(REFERENCE, n))
    dist, ref_dist = rf.distances(layout), rf.distances(ref_layout)
    ks = list(range(1, max_k + 1))
    per_row = layout.sum(-1).numpy()
    selected, dense = int(per_row.sum()), n * (n + 1) // 2
    flops_pair = 4 * block_size ** 2 * head_dim
    ignored = [d for d in cfg.get("distances", ()) if d >= n]
    return dict(
        pattern=name, config={k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}, label=label,
        num_blocks=n, seq_len=n * block_size, block_size=block_size, head_dim=head_dim, ks=ks,
        alpha_hat=rf.theoretical_accuracy_curve(layout, ks).tolist(),
        alpha_hat_reference=rf.theoretical_accuracy_curve(ref_layout, ks).tolist(),
        coverage=float((dist >= 0).mean()), unreachable_blocks=int((dist < 0).sum()),
        full_depth=None if (dist < 0).any() else int(dist.max()),
        reference_full_depth=None if (ref_dist < 0).any() else int(ref_dist.max()),
        longest_path=int(dist.max()), last_row_blocks=int(per_row[-1]), max_row_blocks=int(per_row.max()),
        mean_row_blocks=float(per_row.mean()), selected_blocks=selected, dense_causal_blocks=dense,
        block_speed_bound=dense / selected, flops_per_head=selected * flops_pair,
        full_flops_per_head=dense * flops_pair, reference_selected_blocks=int(ref_layout.sum()),
        ignored_distances=ignored,
        layout=layout.numpy(), distances=dist, reference_distances=ref_dist, per_row=per_row,
        reference_per_row=ref_layout.sum(-1).numpy())


_ARRAYS = ("layout", "distances", "reference_distances", "per_row", "reference_per_row")


def _reduce(mask: np.ndarray, limit: int = MAX_DRAWN) -> np.ndarray:
    f = max(1, math.ceil(mask.shape[0] / limit))
    if f == 1:
        return mask
    n = math.ceil(mask.shape[0] / f) * f
    pad = np.zeros((n, n), dtype=bool)
    pad[:mask.shape[0], :mask.shape[1]] = mask
    return pad.reshape(n // f, f, n // f, f).any(axis=(1, 3))


def _fmt(x) -> str:
    return "never" if x is None else f"{x}"


def explore_figure(pattern_or_distances, num_blocks: int = 128, window=None, sink=None, *, max_k: int = 12,
                   block_size: int = 256, head_dim: int = 128):
    """``(matplotlib Figure, numbers)`` for one pattern; see the module docstring for the panels.
    The numbers are JSON-able (the layout and path arrays of ``explore`` are left out)."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    from matplotlib.ticker import MaxNLocator

    r = explore(pattern_or_distances, num_blocks, window, sink, max_k=max_k, block_size=block_size,
                head_dim=head_dim)
    n, ks = r["num_blocks"], r["ks"]
    colors = sns.color_palette("colorblind")
    fig = plt.figure(figsize=(13, 7.2), layout="constrained")
    grid = fig.add_gridspec(2, 3, height_ratios=[3, 1.25])
    ax_lay, ax_alpha, ax_row = (fig.add_subplot(grid[0, i]) for i in range(3))
    ax_path = fig.add_subplot(grid[1, :])

    shown = _reduce(r["layout"])
    from matplotlib.colors import ListedColormap

    ax_lay.imshow(shown, cmap=ListedColormap(["white", colors[0]]), vmin=0, vmax=1, interpolation="nearest",
                  extent=(-0.5, n - 0.5, n - 0.5, -0.5))
    ax_lay.grid(False)
    ax_lay.set_xlabel("key block")
    ax_lay.set_ylabel("query block")
    scale = "" if shown.shape[0] == n else f" (drawn at {shown.shape[0]} px: any block)"
    ax_lay.set_title(f"block layout{scale}", fontsize=9)

    ax_alpha.plot(ks, 100 * np.array(r["alpha_hat"]), marker="o", ms=3, color=colors[3], label="this pattern")
    ax_alpha.plot(ks, 100 * np.array(r["alpha_hat_reference"]), marker="s", ms=3, ls="--", color=colors[0],
                  label=f"{masks.LABELS[REFERENCE]} (§4.1)")
    ax_alpha.set_xlabel("k (layers)")
    ax_alpha.set_ylabel("alpha_hat_k = |B_k| / n  (%)")
    ax_alpha.set_ylim(0, 105)
    ax_alpha.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_alpha.legend(fontsize=8, loc="lower right")
    ax_alpha.set_title("theoretical accuracy (Appendix A)", fontsize=9)

    ax_row.plot(np.arange(n), r["per_row"], color=colors[3], lw=1.2, label="this pattern")
    ax_row.plot(np.arange(n), r["reference_per_row"], color=colors[0], ls="--", lw=1,
                label=f"{masks.LABELS[REFERENCE]} (§4.1)")
    ax_row.set_xlabel("query block")
    ax_row.set_ylabel("key blocks read")
    ax_row.set_ylim(0, max(r["per_row"].max(), r["reference_per_row"].max(), 1) * 1.15)
    ax_row.legend(fontsize=8, loc="lower right")
    ax_row.set_title(f"budget per row: max {r['max_row_blocks']}, last row {r['last_row_blocks']}", fontsize=9)

    paths = np.stack([r["distances"], r["reference_distances"]]).astype(float)
    paths[paths < 0] = np.nan
    vmax = max(1.0, np.nanmax(paths) if np.isfinite(paths).any() else 1.0)
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.6")
    im = ax_path.imshow(paths, aspect="auto", cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest",
                        extent=(-0.5, n - 0.5, 1.5, -0.5))
    ax_path.grid(False)
    ax_path.set_yticks([0, 1], ["this pattern", masks.LABELS[REFERENCE]], fontsize=8)
    ax_path.set_xlabel("key block (the last block, the source, is on the right)")
    ax_path.set_title("shortest path from the last block (layers; grey = never reached), as in Figure 2-II",
                      fontsize=9)
    fig.colorbar(im, ax=ax_path, label="layers", pad=0.01)

    fig.suptitle(f"{r['label']} at {n} blocks ({r['seq_len']} tokens of {block_size})\n"
                 f"coverage {r['coverage']:.1%}, every block reached at k={_fmt(r['full_depth'])} "
                 f"({masks.LABELS[REFERENCE]}: k={_fmt(r['reference_full_depth'])}); {r['selected_blocks']} of "
                 f"{r['dense_causal_blocks']} causal block pairs: speed bound {r['block_speed_bound']:.1f}x, "
                 f"{r['flops_per_head'] / 1e9:.3g} vs {r['full_flops_per_head'] / 1e9:.3g} GFLOP/head (forward)",
                 fontsize=10)
    numbers_out = {k: v for k, v in r.items() if k not in _ARRAYS}
    return fig, numbers_out


def numbers_table(numbers_dict: dict):
    """The headline numbers as a one-column pandas DataFrame (for display under the figure)."""
    import pandas as pd

    keys = ("label", "num_blocks", "coverage", "unreachable_blocks", "full_depth", "reference_full_depth",
            "max_row_blocks", "last_row_blocks", "selected_blocks", "dense_causal_blocks", "block_speed_bound",
            "flops_per_head", "full_flops_per_head", "ignored_distances")
    return pd.DataFrame({"value": {k: numbers_dict[k] for k in keys}})


def explorer(pattern="power", distances="8, 16, 32, 64", num_blocks: int = 128, window: int = 5, sink: int = 1,
             max_k: int = 12):
    """ipywidgets UI around ``explore_figure``: a pattern menu (or a typed distance set), window,
    sink, number of blocks and depth; redraws on every change, and shows errors as text.
    ``window``/``sink`` are the starting values for a typed distance set; a paper pattern starts at
    (and switching to one resets the fields to) its §4.1 configuration, which can then be edited."""
    import ipywidgets as w
    import matplotlib.pyplot as plt
    from IPython.display import display

    typed = "distance set (typed)"
    options = [(masks.LABELS[p], p) for p in masks.PATTERNS] + [(typed, "distance_set")]
    ui = dict(
        pattern=w.Dropdown(options=options, value=pattern, description="pattern"),
        distances=w.Text(value=distances, description="distances", placeholder="8, 16, 32, 64"),
        window=w.BoundedIntText(value=window, min=1, max=MAX_BLOCKS, description="window"),
        sink=w.BoundedIntText(value=sink, min=0, max=MAX_BLOCKS, description="sink"),
        num_blocks=w.BoundedIntText(value=num_blocks, min=1, max=MAX_BLOCKS, description="blocks"),
        max_k=w.IntSlider(value=max_k, min=1, max=64, description="max k"),
    )
    out = w.Output()
    state = dict(syncing=False, error=None, numbers=None)

    def sync_fields():
        """A paper pattern shows its §4.1 window/sink (editable); a typed set enables the distances box."""
        name = ui["pattern"].value
        ui["distances"].disabled = name != "distance_set"
        cfg = {"window": 1, "sink": 0} if name == "distance_set" else masks.section41_config(name, ui["num_blocks"].value)
        state["syncing"] = True  # one redraw for the whole change, not one per field
        try:
            for key in ("window", "sink"):
                ui[key].disabled = key not in cfg
                if key in cfg and name != "distance_set":
                    ui[key].value = cfg[key]
        finally:
            state["syncing"] = False

    def redraw():
        name = ui["pattern"].value
        spec = ui["distances"].value if name == "distance_set" else name
        kw = {k: ui[k].value for k in ("window", "sink") if not ui[k].disabled}
        with out:
            out.clear_output(wait=True)
            try:
                fig, nums = explore_figure(spec, ui["num_blocks"].value, max_k=ui["max_k"].value, **kw)
            except ValueError as e:
                state["error"], state["numbers"] = str(e), None
                print(f"cannot draw: {e}")
                return
            state["error"], state["numbers"] = None, nums
            display(fig)
            plt.close(fig)
            display(numbers_table(nums))

    def on_change(change):
        if state["syncing"]:
            return
        if change["owner"] is ui["pattern"]:
            sync_fields()
        redraw()

    for widget in ui.values():
        widget.observe(on_change, names="value")
    sync_fields()
    redraw()
    controls = w.VBox([w.HBox([ui["pattern"], ui["distances"]]),
                       w.HBox([ui["window"], ui["sink"], ui["num_blocks"]]), ui["max_k"]])
    box = w.VBox([controls, out])
    box.controls = ui  # for tests and scripting
    box.output = out
    box.redraw = redraw
    box.state = state  # the last error (None when drawn) and the last numbers
    return box


__all__ = ["MAX_BLOCKS", "MAX_DRAWN", "REFERENCE", "explore", "explore_figure", "explorer", "numbers_table",
           "parse_distances", "resolve"]
