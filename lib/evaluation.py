"""Evaluation: perplexity (Table 1), passkey accuracy (Figure 3) and the experimental alpha_k (Figure 1b).

* ``perplexity(model, windows)``: exp of the mean next-token loss over every predicted token of every
  window (the PG19 protocol), in batches, without materialising [tokens, vocab] logits.
* ``passkey_records(model, cols, answer_len)``: one record per prompt; a prompt is retrieved when every
  answer token is the argmax given the prompt and the earlier answer tokens, which is exactly "greedy
  decoding outputs the passkey".
* ``accuracy_table`` aggregates records with Wilson 95% intervals; ``alpha_curves`` puts the
  experimental alpha_k (retrieved samples whose needle block lies within k hops of the last block,
  over all samples) next to alpha_hat_k (Appendix A) and the exact ceiling on the sample set.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from lib.receptive_field import UNREACHABLE, distances
from lib.stats import wilson_interval
from lib.train import autocast, sequence_nll


@torch.no_grad()
def perplexity(model, windows, *, batch_size: int = 8, device=None, progress: bool = True, desc: str = "ppl") -> dict:
    """Perplexity over ``windows`` (int64 [n, L]); returns dict(ppl, nll, tokens, windows, seq_len)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    windows = torch.as_tensor(np.asarray(windows), dtype=torch.long)
    n, L = windows.shape
    model.eval()
    per_window = []
    for s in tqdm(range(0, n, batch_size), desc=desc, disable=not progress, mininterval=5.0):
        ids = windows[s:s + batch_size].to(device)
        with autocast(device):  # one loss per window (for paired comparisons across patterns)
            per_window += sequence_nll(model, ids).tolist()
    nll = float(np.mean(per_window))
    return dict(ppl=math.exp(nll), nll=nll, tokens=n * (L - 1), windows=n, seq_len=L, window_nll=per_window)


@torch.no_grad()
def passkey_records(model, cols: dict, answer_len: int, *, batch_size: int = 8, device=None,
                    progress: bool = True, desc: str = "passkey") -> list[dict]:
    """Score a passkey evaluation set (``PasskeyBuilder.eval_set`` columns) with teacher forcing."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    ids_all = np.stack(cols["input_ids"])
    model.eval()
    out = []
    for s in tqdm(range(0, len(ids_all), batch_size), desc=desc, disable=not progress, mininterval=5.0):
        ids = torch.as_tensor(ids_all[s:s + batch_size], device=device)
        with autocast(device):
            logits = model(input_ids=ids, logits_to_keep=answer_len + 1).logits[:, :-1]
        hit = (logits.argmax(-1) == ids[:, -answer_len:]).cpu()
        for i in range(len(ids)):
            j = s + i
            out.append(dict(block=int(cols["block"][j]), position=int(cols["position"][j]),
                            depth=float(cols["depth"][j]), passkey=cols["passkey"][j],
                            digits_correct=int(hit[i].sum()), correct=bool(hit[i].all())))
    return out


def accuracy_table(records: pd.DataFrame, by) -> pd.DataFrame:
    """Accuracy per group with counts and Wilson 95% intervals."""
    g = records.groupby(list(by) if not isinstance(by, str) else [by], observed=True)["correct"]
    out = g.agg(n="size", correct="sum").reset_index()
    out["accuracy"] = out["correct"] / out["n"]
    out["ci_low"], out["ci_high"] = wilson_interval(out["correct"].to_numpy(), out["n"].to_numpy())
    return out


def depth_bin(depth, n_bins: int = 10) -> np.ndarray:
    """Bin index (0..n_bins-1) of relative depths in [0, 1)."""
    return np.minimum((np.asarray(depth) * n_bins).astype(int), n_bins - 1)


def sample_hops(blocks, layout) -> np.ndarray:
    """Fewest layers through which the last block can read each sample's needle block (inf if never)."""
    d = distances(layout)
    blocks = np.asarray(blocks, dtype=int)
    if blocks.size and blocks.max() >= len(d):
        raise ValueError(f"needle block {blocks.max()} outside the layout's {len(d)} blocks")
    hops = d[blocks].astype(float)
    hops[hops == UNREACHABLE] = np.inf
    return hops


def ceiling(blocks, layout, depth: int) -> float:
    """Share of samples whose needle block the last block reaches within ``depth`` layers: the
    receptive-field ceiling of the accuracy on this sample set (alpha_hat over the needle positions)."""
    return float((sample_hops(blocks, layout) <= depth).mean())


def alpha_curves(records: pd.DataFrame, layout, ks) -> pd.DataFrame:
    """Experimental alpha_k vs theoretical alpha_hat_k for one pattern at one length.

    Per k: alpha_hat = |B_k| / n (Appendix A, over all blocks); alpha_bound = share of samples whose
    needle block is in B_k (the exact ceiling on this sample set); alpha = share of samples retrieved
    AND with the needle block in B_k (Appendix A's experimental accuracy, Wilson interval);
    retrieved_outside = samples retrieved with the needle farther than k hops.
    """
    d = distances(layout)
    hops = sample_hops(records["block"].to_numpy(), layout)
    correct = records["correct"].to_numpy().astype(bool)
    n = len(correct)
    rows = []
    for k in ks:
        inside = hops <= k
        hit = correct & inside
        lo, hi = wilson_interval(int(hit.sum()), n)
        rows.append(dict(k=int(k), alpha_hat=float(((d != UNREACHABLE) & (d <= k)).mean()),
                         alpha_bound=float(inside.mean()), alpha=float(hit.mean()), alpha_low=lo, alpha_high=hi,
                         retrieved_in_Bk=int(hit.sum()), retrieved_outside=int((correct & ~inside).sum()), n=n,
                         accuracy=float(correct.mean())))
    return pd.DataFrame(rows)


__all__ = ["accuracy_table", "alpha_curves", "ceiling", "depth_bin", "passkey_records", "perplexity",
           "sample_hops", "wilson_interval"]
