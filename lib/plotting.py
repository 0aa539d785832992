"""Shared seaborn helpers for the notebooks (mask heatmaps, pattern grids)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch

from .masks import LABELS, PATTERNS

#: One colour per pattern, the same in every notebook.
_CB = sns.color_palette("colorblind")
PALETTE = dict(zip(PATTERNS, [_CB[7], _CB[1], _CB[2], _CB[3], _CB[4], _CB[0]]))


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def mask_heatmap(ax, mask, title: str = "", color=None, block_size: int | None = None):
    """Draw a bool mask (rows = queries, columns = keys) as an adjacency matrix.

    ``block_size`` draws faint block boundaries on a token-level mask.
    """
    m = _np(mask).astype(float)
    cmap = sns.light_palette(color or "black", as_cmap=True)
    sns.heatmap(m, ax=ax, cmap=cmap, vmin=0, vmax=1, cbar=False, square=True,
                xticklabels=False, yticklabels=False, linewidths=0, rasterized=True)
    if block_size:
        for edge in range(block_size, m.shape[0], block_size):
            ax.axhline(edge, color="0.85", lw=0.3)
            ax.axvline(edge, color="0.85", lw=0.3)
    for side in ax.spines.values():
        side.set_visible(True)
        side.set_linewidth(0.5)
    ax.set_title(title, fontsize=9)
    return ax


def pattern_grid(masks: dict, suptitle: str = "", ncols: int = 3, size: float = 3.0, block_size: int | None = None,
                 xlabel: str = "key", ylabel: str = "query"):
    """One heatmap per pattern: ``masks`` maps pattern name -> bool [n, n]."""
    names = list(masks)
    nrows = -(-len(names) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        mask_heatmap(ax, masks[name], LABELS.get(name, name), PALETTE.get(name), block_size)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


__all__ = ["PALETTE", "mask_heatmap", "pattern_grid"]
