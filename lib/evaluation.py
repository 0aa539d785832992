"""Passkey evaluation (Figure 3) and the experimental alpha_k of Appendix A (Figure 1b).

* ``evaluate_passkey`` scores one fine-tuned checkpoint on a passkey set with
  passkeys uniform over blocks (``lib.data.passkey_dataset``); the per-sample
  records are cached as JSON under ``<cache>/eval/`` keyed by the checkpoint's
  spec and the evaluation parameters (so notebook 05 reuses what 04 computed).
  A sample counts as retrieved when every answer digit is the argmax given
  the prompt and the earlier digits, which is exactly "greedy decoding outputs
  the passkey".
* ``accuracy_table`` aggregates records with Wilson 95% intervals.
* ``alpha_curves``: alpha_k = (samples retrieved whose passkey block lies in
  B_k) / (all samples), B_k = blocks within k hops of the last block
  (``lib.receptive_field``), next to alpha_hat_k = |B_k| / n.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from lib.data.corpus import cache_root
from lib.data.passkey import PasskeyTask, passkey_rows
from lib.model import load_model, set_pattern
from lib.receptive_field import UNREACHABLE, distances
from lib.training import _autocast, default_device, model_spec_for_length, spec_hash, train_stage

EVAL_VERSION = 1


def wilson_interval(k, n, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for k successes out of n trials (nan, nan for n = 0)."""
    k, n = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    if np.any(k < 0) or np.any(k > n):
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        denom = 1 + z**2 / n
        centre = (p + z**2 / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
        lo, hi = np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)
    if lo.ndim == 0:
        return float(lo), float(hi)
    return lo, hi


def _eval_key(model_spec: dict, eval_params: dict) -> str:
    blob = json.dumps({"model": spec_hash(model_spec), "eval": eval_params, "version": EVAL_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _eval_params(model_spec, seq_len, samples_per_block, min_samples, seed) -> dict:
    data = model_spec["data"]
    return dict(seq_len=int(seq_len), samples_per_block=int(samples_per_block), min_samples=int(min_samples),
                seed=int(seed), n_digits=int(data["n_digits"]), filler=data["filler"],
                block_size=model_spec["block_size"])


def passkey_cache_path(model_spec: dict, seq_len: int, samples_per_block: int = 5, min_samples: int = 0,
                       seed: int = 1234) -> Path:
    """Where ``evaluate_passkey`` keeps the records of this (checkpoint, evaluation set)."""
    params = _eval_params(model_spec, seq_len, samples_per_block, min_samples, seed)
    return cache_root() / "eval" / f"passkey-{model_spec['pattern']}-{seq_len}-{_eval_key(model_spec, params)}.json"


def evaluate_passkey(model_spec: dict, seq_len: int, *, samples_per_block: int = 5, min_samples: int = 0,
                     seed: int = 1234, batch_size: int = 16, device=None, backend: str = "reference",
                     train_kwargs: dict | None = None, progress: bool = True) -> list[dict]:
    """Per-sample passkey results of the checkpoint ``model_spec`` at ``seq_len`` tokens (cached).

    Trains the checkpoint first if it is missing (``train_kwargs`` go to
    ``train_stage``). The pattern's mask at ``seq_len`` comes from
    ``lib.model.pattern_config`` (stride slash: 3 slash blocks at every length).
    """
    if model_spec.get("kind") != "passkey":
        raise ValueError("evaluate_passkey needs a passkey fine-tuning stage spec (lib.training.model_spec_for_length)")
    path = passkey_cache_path(model_spec, seq_len, samples_per_block, min_samples, seed)
    block_size = model_spec["block_size"]
    eval_params = _eval_params(model_spec, seq_len, samples_per_block, min_samples, seed)
    if path.exists():
        return json.loads(path.read_text())["records"]
    device = torch.device(device) if device is not None else default_device()
    ckpt = train_stage(model_spec, **{"device": device, "backend": backend, **(train_kwargs or {})})
    model = load_model(ckpt, model_spec["model"], device=device).eval()
    set_pattern(model, model_spec["pattern"], seq_len, block_size, backend)
    task = PasskeyTask(int(seq_len), eval_params["n_digits"], eval_params["filler"])
    # Plain columns (the same generator as lib.data.passkey_dataset): the GPU image has no `datasets`.
    ds = passkey_rows(task, block_size, samples_per_block, min_samples, seed)
    n = task.n_digits
    records = []
    label = f"eval {model_spec['pattern']} @{seq_len}"
    with torch.no_grad():
        for start in tqdm(range(0, len(ds["position"]), batch_size), desc=label, disable=not progress, mininterval=2.0):
            rows = {k: v[start:start + batch_size] for k, v in ds.items()}
            ids = torch.tensor(rows["input_ids"], device=device)
            with _autocast(device):
                logits = model(input_ids=ids, logits_to_keep=n + 1).logits[:, :-1]
            pred = logits.argmax(-1).cpu()
            target = ids[:, -n:].cpu()
            hits = (pred == target)
            for i in range(len(ids)):
                records.append(dict(position=rows["position"][i], block=rows["block"][i], depth=rows["depth"][i],
                                    key_blocks=rows["key_blocks"][i],
                                    passkey=rows["passkey"][i],
                                    predicted=bytes(int(t) for t in pred[i].clamp(0, 255)).decode("latin-1"),
                                    digits_correct=int(hits[i].sum()), correct=bool(hits[i].all())))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"model_spec_hash": spec_hash(model_spec), "eval": eval_params, "records": records}))
    tmp.replace(path)
    return records


def evaluate_grid(cfg: dict, patterns, lengths, *, eval_kwargs: dict | None = None,
                  train_kwargs: dict | None = None, progress: bool = True) -> pd.DataFrame:
    """All records for every (pattern, length), each length scored by ``model_spec_for_length``."""
    frames = []
    for pattern in patterns:
        for L in lengths:
            spec = model_spec_for_length(cfg, pattern, L)
            recs = evaluate_passkey(spec, L, train_kwargs=train_kwargs, progress=progress, **(eval_kwargs or {}))
            df = pd.DataFrame(recs)
            df.insert(0, "seq_len", L)
            df.insert(0, "pattern", pattern)
            df["trained_len"] = spec["seq_len"]
            frames.append(df)
    return pd.concat(frames, ignore_index=True)


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


def sample_hops(records: pd.DataFrame, layout) -> np.ndarray:
    """Fewest layers through which the last block can read each sample's key:
    the minimum hop distance over the blocks holding a key digit (inf if none
    is reachable)."""
    d = distances(layout)
    if "key_blocks" in records:
        groups = records["key_blocks"]
    else:
        groups = records["block"].map(lambda b: [b])
    hops = []
    for blocks in groups:
        if max(blocks) >= len(d):
            raise ValueError(f"key block {max(blocks)} outside the layout's {len(d)} blocks")
        reach = [d[b] for b in blocks if d[b] != UNREACHABLE]
        hops.append(min(reach) if reach else np.inf)
    return np.asarray(hops, dtype=float)


def alpha_curves(records: pd.DataFrame, layout, ks) -> pd.DataFrame:
    """Experimental alpha_k vs theoretical alpha_hat_k for one pattern at one length.

    ``records``: all samples of the set (``block``, ``key_blocks``, ``correct``);
    ``layout``: the block layout used at that length. Per k:

    * alpha_hat = |B_k| / n, Appendix A's theoretical accuracy (first-digit blocks);
    * alpha_bound = share of samples with some key block in B_k: the exact
      ceiling of alpha for this sample set (the needle's second copy of the key
      can lie one block later than the first digit, one hop closer);
    * alpha = share of samples retrieved AND with some key block in B_k (with
      a Wilson interval), Appendix A's experimental accuracy;
    * retrieved_outside = samples retrieved with no key block within k hops
      (must be 0 at k >= depth of the model if the theory holds).
    """
    d = distances(layout)
    in_reach = lambda k: (d != UNREACHABLE) & (d <= k)  # noqa: E731
    hops = sample_hops(records, layout)
    correct = records["correct"].to_numpy().astype(bool)
    n = len(correct)
    rows = []
    for k in ks:
        inside = hops <= k
        hit = correct & inside
        lo, hi = wilson_interval(int(hit.sum()), n)
        rows.append(dict(k=int(k), alpha_hat=float(in_reach(k).mean()), alpha_bound=float(inside.mean()),
                         alpha=float(hit.mean()), alpha_low=lo, alpha_high=hi, retrieved_in_Bk=int(hit.sum()),
                         retrieved_outside=int((correct & ~inside).sum()), n=n, accuracy=float(correct.mean())))
    return pd.DataFrame(rows)
