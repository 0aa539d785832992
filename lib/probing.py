"""Information-flow probing (Section 4.6, Figure 5, Appendix C).

Appendix C asks *where* the passkey's information is, layer by layer and block
by block: hidden states are average-pooled over each block of tokens, and a
linear probe per (layer, block) predicts which of 6 passkeys the prompt held.
The probe's held-out accuracy is the "information strength" of that cell
(chance = 1/6). The paper reads two things off the resulting heatmaps:

* sliding window: the information spreads to later blocks *linearly* with depth
  (one window further per layer) -> ``frontier`` + ``linear_growth_fit``;
* PowerAttention: the information *jumps* to blocks at power-of-two distances
  at specific layers -> ``power_jumps`` (hop distances in the block DAG against
  the first layer where a block becomes decodable, and blocks at power-of-two
  distances against the closer blocks just before them, layer by layer);

plus the last block's accuracy at the last layer (what the model can answer
from), ``final_accuracy``.

Pipeline::

    task = lib.data.probing.probing_task(tokenizer, seq_len=4096, block_size=64, n=1200)
    feats = pooled_hidden_states(model, task["input_ids"], 64)      # [n, L+1, 64, H] float16
    acc = probe_accuracy(feats, task["labels"])                       # [L+1, 64]
    plot_probe_heatmap(ax, acc, "PowerAttention", needle_block=task["needle_block"])

Thresholds are module constants, fixed before any real run (see each).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
from tqdm.auto import tqdm

# torch is imported inside the functions that need it: the joblib workers of probe_accuracy import
# this module, and without torch the first probe_accuracy call (worker start) takes 2.2 s, not 3.4 s.

#: Chance accuracy of the 6-way passkey probe.
CHANCE = 1 / 6
#: A cell "holds the passkey" when its probe accuracy reaches this: 3x chance. Under the null (no
#: information) the cross-validated accuracy of 1200 samples is ~Binomial(1200, 1/6)/1200, whose
#: 99.99% quantile is 0.21, so 0.5 cannot be reached by chance, and it leaves room for partial
#: information (a block that knows the passkey only through a few heads) to count.
INFO_THRESHOLD = 0.5
#: "Grows linearly": the least-squares line of frontier vs layer explains at least this much variance.
LINEAR_R2 = 0.9
#: "Jumps follow the DAG": Spearman rho between hop distance from the needle block and the first layer
#: where a block becomes decodable is at least this (and its p-value below SPEARMAN_P).
SPEARMAN_RHO = 0.5
SPEARMAN_P = 0.01
#: "Jumps to power-of-two distances": at some layer, blocks at a power-of-two distance from the needle
#: (beyond the local window) beat the POW2_NEIGHBOURS closer blocks just before them by at least this
#: much accuracy, on average over the powers of two (see power_jumps).
POW2_GAP = 0.1
POW2_NEIGHBOURS = 3

#: Probe settings: sklearn's LogisticRegression defaults (lbfgs, C=1, tol=1e-4, max_iter=100) on
#: float32 features, 5 stratified folds. See ``probe_accuracy`` for the measurements behind them.
PROBE_FOLDS = 5
PROBE_C = 1.0
PROBE_TOL = 1e-4
PROBE_MAX_ITER = 100
#: A looser tolerance for when time matters more than the last percent: 1.75x faster, but it stops
#: lbfgs early and lowers mid-range accuracies (0.4-0.6) by up to 3.5 points (measured).
PROBE_FAST_TOL = 1e-3


# ---------------------------------------------------------------------------------------------------------------------
# Hidden states
# ---------------------------------------------------------------------------------------------------------------------

def _backbone(model):
    """The model without its LM head: the head's logits (n x seq x vocab floats, 6 GB for 8 x 4K x 49K)
    are not needed, and the backbone returns the same hidden states."""
    import torch

    base = getattr(model, "base_model", None)
    return base if isinstance(base, torch.nn.Module) else model


def pooled_hidden_states(model, input_ids, block_size: int, batch_size: int = 8, dtype=None,
                         progress: bool = True, layers=None, out: np.ndarray | None = None) -> np.ndarray:
    """Block-averaged hidden states of every layer: numpy ``[n, n_layers, n_blocks, hidden]``.

    ``model``: any transformers causal LM (or its backbone); it runs in eval mode under
    ``torch.no_grad`` on its own device, ``batch_size`` rows at a time, with
    ``output_hidden_states=True``. Index 0 of the layer axis is the embedding output, index
    ``i`` the output of decoder layer ``i``, except that the last index holds the final norm's
    output (transformers' convention, checked on 5.23: ``hidden_states[-1] == last_hidden_state``);
    ``layers`` selects a subset of these indices (in the given order).
    Pooling is a float32 mean over each block of ``block_size`` tokens; the result is stored as
    ``dtype`` (torch.float16, float32 or float64; None = float16: 1200 x 31 x 64 x 576 values are
    2.7 GB; values beyond float16's range are clipped, with a warning). ``out`` may be a preallocated array (e.g. a
    ``np.memmap``) of the result's shape to write into.
    """
    import torch

    dtype = torch.float16 if dtype is None else dtype
    if dtype not in (torch.float16, torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float16, float32 or float64 (numpy has no {dtype}), got {dtype!r}")
    ids = torch.as_tensor(input_ids)
    if ids.ndim != 2 or ids.dtype not in (torch.int64, torch.int32) or ids.shape[0] == 0:
        raise ValueError(f"input_ids must be an integer tensor [n, seq_len] with n >= 1, got "
                         f"{tuple(ids.shape)} {ids.dtype}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    n, seq_len = ids.shape
    if seq_len % block_size:
        raise ValueError(f"seq_len ({seq_len}) must be a multiple of block_size ({block_size})")
    np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
    n_blocks = seq_len // block_size
    backbone = _backbone(model)
    device = next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    clipped = False
    try:
        with torch.no_grad():
            for start in tqdm(range(0, n, batch_size), desc="hidden states", disable=not progress, mininterval=2.0):
                batch = ids[start:start + batch_size].to(device=device, dtype=torch.long)
                hs = backbone(input_ids=batch, output_hidden_states=True, use_cache=False).hidden_states
                if start == 0:
                    sel = list(range(len(hs))) if layers is None else [int(i) for i in layers]
                    bad = [i for i in sel if not -len(hs) <= i < len(hs)]
                    if bad or not sel:
                        raise ValueError(f"layers {bad or sel} invalid: the model returns {len(hs)} hidden states")
                    shape = (n, len(sel), n_blocks, hs[0].shape[-1])
                    if out is None:
                        out = np.empty(shape, dtype=np_dtype)
                    elif out.shape != shape:
                        raise ValueError(f"out has shape {out.shape}, expected {shape}")
                b = batch.shape[0]
                for j, i in enumerate(sel):
                    pooled = hs[i].float().reshape(b, n_blocks, block_size, -1).mean(2)
                    if np_dtype == np.float16:
                        lim = float(np.finfo(np.float16).max)
                        if not clipped and bool((pooled.abs() > lim).any()):
                            clipped = True
                        pooled = pooled.clamp(-lim, lim)
                    out[start:start + b, j] = pooled.to(dtype).cpu().numpy()
    finally:
        backbone.train(was_training)
    if clipped:
        warnings.warn("some block-averaged hidden states exceed float16's range and were clipped; "
                      "pass dtype=torch.float32 to keep them", RuntimeWarning, stacklevel=2)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Probes
# ---------------------------------------------------------------------------------------------------------------------

def _probe_pipeline(C, max_iter, tol, pca, seed):
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    steps = [StandardScaler()]
    if pca is not None:
        steps += [PCA(n_components=pca, random_state=seed), StandardScaler()]
    steps.append(LogisticRegression(C=C, solver="lbfgs", max_iter=max_iter, tol=tol))
    return make_pipeline(*steps)


def _probe_chunk(x, y, splits, C, max_iter, tol, pca, seed) -> np.ndarray:
    """Cross-validated accuracy of every cell in ``x`` ([n, cells, H]); runs in a joblib worker."""
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    accs = np.empty(x.shape[1])
    # One BLAS/OpenMP thread: these matrices are small (960 x 576), and threaded BLAS made a probe
    # 16x slower on 2 cores (measured: 3.9 s vs 0.25 s per cell); parallelism comes from joblib.
    # It also fixes the summation order, so the same inputs give the same accuracies.
    with warnings.catch_warnings(), threadpool_limits(1):
        # lbfgs stops at max_iter on (nearly) separable cells; its accuracy there is already
        # stable (measured, see probe_accuracy), so the warning is expected, not a fault.
        warnings.simplefilter("ignore", ConvergenceWarning)
        for c in range(x.shape[1]):
            xc = np.asarray(x[:, c], dtype=np.float32)  # lbfgs keeps float32: 1.9x faster than float64
            correct = 0
            for train, test in splits:
                model = _probe_pipeline(C, max_iter, tol, pca, seed).fit(xc[train], y[train])
                correct += int((model.predict(xc[test]) == y[test]).sum())
            accs[c] = correct / len(y)
    return accs


def probe_accuracy(features, labels, folds: int = PROBE_FOLDS, seed: int = 0, n_jobs: int = -1, C: float = PROBE_C,
                   max_iter: int = PROBE_MAX_ITER, tol: float = PROBE_TOL, pca: int | None = None,
                   progress: bool = True) -> np.ndarray:
    """Probe accuracy per (layer, block): float64 ``[L, B]`` from features ``[n, L, B, H]``.

    Each cell gets a multinomial ``LogisticRegression`` (lbfgs, L2, ``C``) on standardized
    features (the scaler is fit inside each training fold), optionally on the first ``pca``
    principal components; its accuracy is the fraction of samples predicted correctly when
    held out, over a stratified ``folds``-fold split (shuffled with ``seed``, the same split
    for every cell). Cells run in parallel with joblib (``n_jobs``, loky processes, one BLAS
    thread each); the features go to the workers in chunks of cells. Results do not depend on
    ``n_jobs`` (bit-identical for 1 and 2, tested).

    Settings, measured on real features (SmolLM2-135M-Instruct, full attention, 1200 probing
    prompts of 512 tokens = 8 blocks of 64, needle in block 2, 31 x 8 = 248 cells; accuracies
    from 0.15 to 1.0, many in 0.3-0.6), one core (AMD EPYC VM), CPU seconds per cell (5 folds)
    and accuracy vs sklearn's defaults on float64 (tol 1e-4, max_iter 100):

    =====================================  ========  ==================  =================
    setting                                s / cell  mean |diff| (max)   vs converged (*)
    =====================================  ========  ==================  =================
    sklearn defaults, float64              0.43      0                   0.0017 (0.011)
    converged (*) tol 1e-6, max_iter 2000  0.93      0.0017 (0.011)      0
    **defaults on float32 (chosen)**       0.23      0.0005 (0.0035)     0.0017 (0.011)
    float32, tol 1e-3 (PROBE_FAST_TOL)     0.13      0.0044 (0.033)      0.0051 (0.035)
    float32, tol 1e-3, max_iter 50         0.12      0.0048 (0.033)      0.0054 (0.035)
    float32, 3 folds                       0.12      0.012 (0.064)       0.013 (0.068)
    float32, C = 0.1                       0.17      0.0066 (0.076)      0.0069 (0.076)
    float64, tol 1e-3, PCA to 128 dims     0.29      0.018 (0.065) (10 cells)
    =====================================  ========  ==================  =================

    The looser tolerance stops lbfgs early and biases accuracies *down* (mean -0.003, up to
    -0.035 in the 0.4-0.56 range, where the INFO_THRESHOLD decisions are made); PCA costs more
    than it saves (an SVD per fold) and loses accuracy. So the probe is sklearn's default
    LogisticRegression, fed float32 (lbfgs keeps float32: 1.9x faster, same accuracies).
    Whole grid: 248 cells took 57 s with n_jobs=1 and 31-33 s with n_jobs=2 on 2 cores
    (7% over ideal; the first call also starts the workers, ~2 s). Projection for the
    paper-scale grid, 31 layers x 64 blocks = 1984 cells: 460 CPU-s, about 30-33 s per model
    on 16 cores (15 free beside a training process), 2.5-3 min for 5 models;
    ``tol=PROBE_FAST_TOL`` would make it ~18 s per model at the bias above.
    """
    from joblib import Parallel, delayed, effective_n_jobs
    from sklearn.model_selection import StratifiedKFold

    if not isinstance(features, np.ndarray):
        features = np.asarray(features)
    if features.ndim != 4:
        raise ValueError(f"features must be [n, layers, blocks, hidden], got shape {features.shape}")
    y = np.asarray(labels)
    n, n_layers, n_blocks, _ = features.shape
    if y.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {y.shape}")
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds must be an integer >= 2, got {folds!r}")
    counts = np.unique(y, return_counts=True)[1]
    if len(counts) < 2 or counts.min() < folds:
        raise ValueError(f"every class needs at least folds={folds} samples and there must be >= 2 classes; "
                         f"got class counts {counts.tolist()}")
    splits = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(n), y))
    cells = [(l, b) for l in range(n_layers) for b in range(n_blocks)]
    workers = effective_n_jobs(n_jobs)
    # Cells differ in cost (lbfgs iterations), so chunks take every n_chunks-th cell: each mixes
    # layers and blocks, and the workers finish together.
    n_chunks = min(len(cells), max(1, 4 * workers))
    chunks = [np.arange(k, len(cells), n_chunks) for k in range(n_chunks)]

    def chunk_data(idx):
        ls = np.array([cells[i][0] for i in idx])
        bs = np.array([cells[i][1] for i in idx])
        return features[:, ls, bs]  # [n, cells, H] copy (fancy indexing), works on np.memmap too

    tasks = (delayed(_probe_chunk)(chunk_data(idx), y, splits, C, max_iter, tol, pca, seed) for idx in chunks)
    results = Parallel(n_jobs=n_jobs, return_as="generator", max_nbytes=None)(tasks)
    acc = np.empty(len(cells))
    for idx, r in zip(chunks, tqdm(results, total=len(chunks), desc="probes", disable=not progress, mininterval=2.0)):
        acc[idx] = r
    return acc.reshape(n_layers, n_blocks)


# ---------------------------------------------------------------------------------------------------------------------
# Analysis (the paper's claims)
# ---------------------------------------------------------------------------------------------------------------------

def _check_grid(acc) -> np.ndarray:
    acc = np.asarray(acc, dtype=np.float64)
    if acc.ndim != 2 or acc.size == 0:
        raise ValueError(f"acc must be a non-empty [layers, blocks] grid, got shape {acc.shape}")
    return acc


def _check_needle(needle_block, n_blocks: int) -> int:
    if isinstance(needle_block, bool) or not isinstance(needle_block, (int, np.integer)) \
            or not 0 <= needle_block < n_blocks:
        raise ValueError(f"needle_block must be an integer in [0, {n_blocks - 1}], got {needle_block!r}")
    return int(needle_block)


def final_accuracy(acc) -> float:
    """Probe accuracy of the last block at the last layer: what the answer can be read from."""
    return float(_check_grid(acc)[-1, -1])


def frontier(acc, needle_block: int, threshold: float = INFO_THRESHOLD) -> np.ndarray:
    """Per layer, the farthest block at or after ``needle_block`` whose accuracy reaches ``threshold``.

    int ``[layers]``; -1 where no such block exists. This is how far the passkey's information
    has spread by that layer (the needle block itself counts: at the embeddings the
    information is only there).
    """
    acc = _check_grid(acc)
    nb = _check_needle(needle_block, acc.shape[1])
    hit = acc[:, nb:] >= threshold
    far = hit.shape[1] - 1 - np.argmax(hit[:, ::-1], axis=1)
    return np.where(hit.any(1), nb + far, -1).astype(np.int64)


def linear_growth_fit(front, n_blocks: int | None = None) -> dict:
    """Least-squares line of ``front`` (``frontier``'s output) against the layer index.

    Layers with no frontier (-1) are skipped; with ``n_blocks`` the fit stops before the first
    layer whose frontier reaches the last block (that layer's frontier is capped by the end of
    the sequence and later ones are saturated: they would bend any growth curve flat). Returns slope (blocks per layer), intercept, r2, the layers used
    and ``linear`` (r2 >= LINEAR_R2 and slope > 0). Needs at least 3 layers, else NaNs.
    """
    front = np.asarray(front, dtype=np.float64)
    if front.ndim != 1:
        raise ValueError(f"front must be 1-D [layers], got shape {front.shape}")
    layers = np.arange(len(front))
    if n_blocks is not None:
        full = np.flatnonzero(front >= n_blocks - 1)
        if len(full):
            layers = layers[: full[0]]
    layers = layers[front[layers] >= 0]
    out = {"slope": math.nan, "intercept": math.nan, "r2": math.nan, "layers": layers.tolist(), "linear": False}
    if len(layers) < 3:
        return out
    y = front[layers]
    slope, intercept = np.polyfit(layers, y, 1)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    ss_res = float(((y - (slope * layers + intercept)) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else math.nan
    out.update(slope=float(slope), intercept=float(intercept), r2=r2, linear=bool(r2 >= LINEAR_R2 and slope > 0))
    return out


def first_crossing(acc, threshold: float = INFO_THRESHOLD) -> np.ndarray:
    """Per block, the first layer whose accuracy reaches ``threshold``: int ``[blocks]``, -1 if never."""
    hit = _check_grid(acc) >= threshold
    return np.where(hit.any(0), np.argmax(hit, axis=0), -1).astype(np.int64)


def hop_distances(layout, needle_block: int) -> np.ndarray:
    """Layers information needs to go from ``needle_block`` to each block: int ``[blocks]``, -1 = never.

    ``layout[q, k]`` means query block q reads key block k, so information flows k -> q: the
    hops are shortest paths in the transposed DAG. Blocks before the needle are -1 (causal).
    """
    from lib.receptive_field import distances

    if hasattr(layout, "detach"):  # a torch tensor
        layout = layout.detach().cpu().numpy()
    layout = np.asarray(layout)
    nb = _check_needle(needle_block, layout.shape[0])
    return distances(np.ascontiguousarray(layout.T), source=nb)


def power_layout(n_blocks: int):
    """PowerAttention's block layout (bool torch tensor) at ``n_blocks`` blocks, Section 4.1 configuration."""
    import lib.masks as M

    return M.block_layout("power", n_blocks, **M.section41_config("power"))


def hop_correlation(acc, needle_block: int, layout, threshold: float = INFO_THRESHOLD) -> dict:
    """Spearman correlation between hop distance and the first decodable layer, over later blocks.

    Uses every block after the needle that the DAG reaches; a block that never reaches
    ``threshold`` is censored at ``layers`` (one past the last layer), a tie in the ranks.
    Returns rho, p (two-sided), n (blocks used), n_never (censored ones), and ``hops`` /
    ``first_layer`` per block.
    """
    from scipy.stats import spearmanr

    acc = _check_grid(acc)
    nb = _check_needle(needle_block, acc.shape[1])
    hops = hop_distances(layout, nb)
    if len(hops) != acc.shape[1]:
        raise ValueError(f"layout has {len(hops)} blocks, acc has {acc.shape[1]}")
    first = first_crossing(acc, threshold)
    use = (np.arange(len(hops)) > nb) & (hops > 0)
    censored = np.where(first >= 0, first, acc.shape[0])[use]
    out = {"rho": math.nan, "p": math.nan, "n": int(use.sum()), "n_never": int((first[use] < 0).sum()),
           "hops": hops, "first_layer": first}
    if use.sum() >= 3 and np.ptp(hops[use]) > 0 and np.ptp(censored) > 0:
        res = spearmanr(hops[use], censored)
        out.update(rho=float(res.statistic), p=float(res.pvalue))
    return out


def power_jumps(acc, needle_block: int, layout=None, threshold: float = INFO_THRESHOLD, window: int = 5,
                neighbours: int = POW2_NEIGHBOURS) -> dict:
    """Test of "PowerAttention's information jumps to power-of-two block distances at specific layers".

    Two views:

    * ``gap[l]``: for each power-of-two distance p >= ``window`` (8, 16, 32 with the Section
      4.1 window of 5: beyond the local window every pattern reads) that fits after the needle,
      the accuracy of block ``needle + p`` minus the mean accuracy of the ``neighbours`` blocks
      just before it (distances p-neighbours .. p-1), averaged over p. Those neighbours are
      *closer* to the needle, so any spread that grows with distance (sliding window, stride
      slash's window) gives gap <= 0; PowerAttention reaches p in one layer and p-1 only in
      several, so the gap opens at an early layer (``max_gap``, ``max_gap_layer``) and closes
      once the neighbours catch up. Comparing with near neighbours rather than all other blocks
      keeps distance out of the comparison (powers of two are, on average, nearer blocks);
    * ``hop_correlation`` with the power layout (default ``power_layout``): blocks fewer hops
      from the needle should become decodable at earlier layers (rho, p).

    ``jumps`` = (max_gap >= POW2_GAP) and (rho >= SPEARMAN_RHO and p < SPEARMAN_P).
    """
    acc = _check_grid(acc)
    nb = _check_needle(needle_block, acc.shape[1])
    if isinstance(neighbours, bool) or not isinstance(neighbours, int) or neighbours < 1:
        raise ValueError(f"neighbours must be a positive integer, got {neighbours!r}")
    if layout is None:
        layout = power_layout(acc.shape[1])
    span = acc.shape[1] - 1 - nb  # farthest distance after the needle
    powers = [p for p in (2 ** k for k in range(1, span.bit_length() + 1)) if window <= p <= span
              and p - neighbours > 0]
    if powers:
        gaps = [acc[:, nb + p] - acc[:, nb + p - neighbours:nb + p].mean(1) for p in powers]
        gap = np.mean(gaps, axis=0)
        at = int(np.argmax(gap))
        max_gap = float(gap[at])
    else:
        gap, at, max_gap = np.full(acc.shape[0], math.nan), -1, math.nan
    corr = hop_correlation(acc, nb, layout, threshold)
    jumps = bool(max_gap >= POW2_GAP and corr["rho"] >= SPEARMAN_RHO and corr["p"] < SPEARMAN_P)
    return {"gap": gap, "max_gap": max_gap, "max_gap_layer": at, "powers": powers,
            "rho": corr["rho"], "p": corr["p"], "n": corr["n"], "n_never": corr["n_never"],
            "hops": corr["hops"], "first_layer": corr["first_layer"], "jumps": jumps}


# ---------------------------------------------------------------------------------------------------------------------
# Figure 5
# ---------------------------------------------------------------------------------------------------------------------

def plot_probe_heatmap(ax, acc, title: str, needle_block: int | None = None, highlight_last: bool = True,
                       colorbar: bool = True, vmin: float = 0.0, vmax: float = 1.0):
    """Layer x block heatmap of probe accuracy (Figure 5): rows = layers (embeddings at the
    bottom, last layer on top), columns = blocks; the needle block is marked with a dashed
    line and the last block's last-layer accuracy is boxed and written in the corner."""
    from matplotlib.patches import Rectangle

    acc = _check_grid(acc)
    n_layers, n_blocks = acc.shape
    im = ax.imshow(acc, origin="lower", aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax,
                   extent=(-0.5, n_blocks - 0.5, -0.5, n_layers - 0.5), interpolation="nearest")
    ax.set_xlabel("block")
    ax.set_ylabel("layer (0 = embeddings)")
    ax.set_title(title)
    if needle_block is not None:
        nb = _check_needle(needle_block, n_blocks)
        ax.axvline(nb, color="white", linestyle="--", linewidth=0.8)
    if highlight_last:
        ax.add_patch(Rectangle((n_blocks - 1.5, n_layers - 1.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5))
        ax.annotate(f"{acc[-1, -1]:.2f}", xy=(n_blocks - 1, n_layers - 1), xytext=(-4, -4),
                    textcoords="offset points", ha="right", va="top", color="red", fontsize=9, fontweight="bold")
    if colorbar:
        ax.figure.colorbar(im, ax=ax, label="probe accuracy")
    return im
