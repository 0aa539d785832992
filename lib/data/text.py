"""Long English text as token ids: training windows and perplexity windows.

``TokenStream(docs, tokenizer)`` tokenizes whole works once (EOS between works) and
draws random training windows; ``eval_windows(docs, tokenizer, seq_len, max_tokens)``
cuts the held-out works into non-overlapping windows, the same windows for every
attention pattern (the PG19 protocol: perplexity of every token of every window).
Token ids are cached on disk by a digest of the text and the tokenizer, so the
GPU run and repeated notebook runs tokenize each corpus once.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np

from lib.paths import atomic_file, cache_dir


def _tokenizer_id(tokenizer) -> str:
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    blob = json.dumps(sorted(vocab.items())[:5000]) + str(len(vocab)) + type(tokenizer).__name__
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def tokenize_docs(docs: list[str], tokenizer, cache: bool = True) -> list[np.ndarray]:
    """Token ids (uint32) of each document, cached by (text digest, tokenizer)."""
    if not docs:
        raise ValueError("need at least one document")
    h = hashlib.sha256()
    for d in docs:
        h.update(d.encode("utf-8", "replace"))
        h.update(b"\0")
    key = f"{h.hexdigest()[:16]}-{_tokenizer_id(tokenizer)}"
    path = cache_dir("tokens") / f"{key}.npz" if cache else None
    if path is not None and path.exists():
        data = np.load(path)
        return [data[f"d{i}"] for i in range(len(docs))]
    out = [np.asarray(tokenizer(d, add_special_tokens=False)["input_ids"], dtype=np.uint32) for d in docs]
    if path is not None:
        with atomic_file(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a name
            np.savez(f, **{f"d{i}": a for i, a in enumerate(out)})
    return out


class TokenStream:
    """Documents as one stream of token ids (EOS between documents), for language-model training.

    ``batch(rng, batch_size, seq_len)`` returns random windows (int64 ``[batch, seq_len]``).
    """

    def __init__(self, docs: list[str], tokenizer, cache: bool = True):
        eos = tokenizer.eos_token_id
        parts = []
        for ids in tokenize_docs(docs, tokenizer, cache):
            parts.append(ids)
            if eos is not None:
                parts.append(np.asarray([eos], dtype=np.uint32))
        self.tokens = np.concatenate(parts).astype(np.int64)

    def __len__(self) -> int:
        return len(self.tokens)

    def batch(self, rng: np.random.Generator, batch_size: int, seq_len: int) -> np.ndarray:
        if len(self.tokens) <= seq_len:
            raise ValueError(f"the corpus has {len(self.tokens)} tokens, too few for windows of {seq_len}")
        starts = rng.integers(0, len(self.tokens) - seq_len, size=batch_size)
        return np.stack([self.tokens[s:s + seq_len] for s in starts])


def eval_windows(docs: list[str], tokenizer, seq_len: int, max_tokens: int, cache: bool = True) -> np.ndarray:
    """Non-overlapping ``seq_len`` windows (int64 ``[n, seq_len]``) from the start of each held-out
    work, taken round-robin over works (so every work contributes) until ``max_tokens``."""
    if seq_len < 2 or max_tokens < seq_len:
        raise ValueError(f"need seq_len >= 2 and max_tokens >= seq_len, got {seq_len}, {max_tokens}")
    per_doc = [ids.astype(np.int64) for ids in tokenize_docs(docs, tokenizer, cache)]
    queues = [[d[i:i + seq_len] for i in range(0, len(d) - seq_len + 1, seq_len)] for d in per_doc]
    if not any(queues):
        raise ValueError(f"no held-out work has {seq_len} tokens")
    windows, i = [], 0
    while len(windows) * seq_len + seq_len <= max_tokens and any(queues):
        q = queues[i % len(queues)]
        if q:
            windows.append(q.pop(0))
        i += 1
    return np.stack(windows)


__all__ = ["TokenStream", "eval_windows", "tokenize_docs"]
