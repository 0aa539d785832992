"""The passkey retrieval task of Section 4.3 / Appendices A and C, at exact token lengths.

Prompt (Appendix C wording, byte tokens, BOS first)::

    There is an important info hidden inside a lot of irrelevant text. Find it
    and memorize it. I will quiz you about the important information there.
    <filler ...> The pass key is 48213. Remember it. 48213 is the pass key. <filler ...>
    What is the pass key? The pass key is 48213

The passkey is a string of random digits (Appendix A). The filler is
"repeated irrelevant sentences" (Appendix A; default) or random grammatical
sentences in the style of Appendix C's example (``filler="random"``). Every
sequence has exactly ``seq_len`` tokens and ends with the answer digits, so a
model is scored on the logits of the last ``n_digits`` positions (teacher
forcing; all digits right = greedy decoding gives the passkey).

Position: ``position`` is the token index of the passkey's first digit (first
occurrence); its block is ``position // block_size``. The needle is inserted
at that exact offset (the haystack is cut there, even mid-sentence), so
positions can be uniform over blocks, as Appendix A asks. With our small
blocks the fixed parts take room: the first digit cannot come before token
17 ("The pass key is " after BOS) nor in the last ~85 tokens (the rest of the
needle, the question and the answer). ``eligible_positions`` gives the range.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
         "I will quiz you about the important information there.\n")
NEEDLE_HEAD = "The pass key is "
NEEDLE_TAIL = ". Remember it. {key} is the pass key. "
QUESTION = "\nWhat is the pass key? The pass key is "
REPEAT_FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "

_ADJ = ["abhorrent", "dark", "round", "quiet", "bright", "heavy", "silent", "hollow", "gentle", "narrow"]
_NOUN = ["roar", "elevation", "event", "comb", "river", "window", "garden", "engine", "theory", "lantern"]
_VERB = ["combs", "tabulates", "follows", "lifts", "crosses", "measures", "carries", "divides", "paints", "weighs"]

BOS = 257  # lib.model.ByteTokenizer.BOS (kept literal here to avoid importing transformers)


@dataclass(frozen=True)
class PasskeyTask:
    """Parameters of one passkey set (hashable, goes into cache keys via ``asdict``)."""

    seq_len: int
    n_digits: int = 5
    filler: str = "repeat"

    def __post_init__(self):
        if isinstance(self.seq_len, bool) or not isinstance(self.seq_len, int) or self.seq_len < 1:
            raise ValueError(f"seq_len must be a positive integer, got {self.seq_len!r}")
        if isinstance(self.n_digits, bool) or not isinstance(self.n_digits, int) or not 1 <= self.n_digits <= 18:
            raise ValueError(f"n_digits must be an integer in [1, 18], got {self.n_digits!r}")
        if self.filler not in ("repeat", "random"):
            raise ValueError(f"filler must be 'repeat' or 'random', got {self.filler!r}")
        lo, hi = eligible_positions(self.seq_len, self.n_digits)
        if hi < lo:
            raise ValueError(
                f"seq_len={self.seq_len} is too short for the passkey prompt with {self.n_digits} digits "
                f"(needs at least {self.seq_len + lo - hi} tokens)"
            )


def _needle_len(n_digits: int) -> int:
    return len(NEEDLE_HEAD) + n_digits + len(NEEDLE_TAIL.format(key="0" * n_digits))


def eligible_positions(seq_len: int, n_digits: int = 5) -> tuple[int, int]:
    """Inclusive range (lo, hi) of token positions the passkey's first digit can take."""
    body = seq_len - 1 - len(QUESTION) - n_digits  # tokens between BOS and the question
    lo = 1 + len(NEEDLE_HEAD)
    hi = 1 + body - _needle_len(n_digits) + len(NEEDLE_HEAD)
    return lo, hi


def _filler(n_bytes: int, filler: str, rng: np.random.Generator) -> str:
    if filler == "repeat":
        return (REPEAT_FILLER * (n_bytes // len(REPEAT_FILLER) + 1))[:n_bytes]
    parts, total = [], 0
    while total < n_bytes:
        s = f"The {_ADJ[rng.integers(10)]} {_NOUN[rng.integers(10)]} {_VERB[rng.integers(10)]} {_NOUN[rng.integers(10)]}. "
        parts.append(s)
        total += len(s)
    return "".join(parts)[:n_bytes]


def random_passkey(rng: np.random.Generator, n_digits: int) -> str:
    """Random digits; the first is 1-9 so the key reads as a number."""
    return str(rng.integers(1, 10)) + "".join(str(d) for d in rng.integers(0, 10, size=n_digits - 1))


def passkey_example(task: PasskeyTask, position: int, key: str, rng: np.random.Generator | None = None) -> np.ndarray:
    """Token ids (int64 ``[seq_len]``) of one prompt with the passkey's first digit at ``position``."""
    lo, hi = eligible_positions(task.seq_len, task.n_digits)
    if not lo <= position <= hi:
        raise ValueError(f"position {position} outside the eligible range [{lo}, {hi}] for seq_len={task.seq_len}")
    if len(key) != task.n_digits or not key.isdigit():
        raise ValueError(f"key must be {task.n_digits} digits, got {key!r}")
    rng = rng if rng is not None else np.random.default_rng(0)
    body = task.seq_len - 1 - len(QUESTION) - task.n_digits
    needle = NEEDLE_HEAD + key + NEEDLE_TAIL.format(key=key)
    hay = (INTRO + _filler(body, task.filler, rng))[: body - len(needle)]
    cut = position - 1 - len(NEEDLE_HEAD)
    text = hay[:cut] + needle + hay[cut:] + QUESTION + key
    ids = np.empty(task.seq_len, dtype=np.int64)
    ids[0] = BOS
    ids[1:] = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    return ids


def passkey_batch(rng: np.random.Generator, batch_size: int, task: PasskeyTask):
    """Training batch: positions uniform over the eligible range, fresh random keys.

    Returns ``(input_ids int64 [B, seq_len], positions int64 [B])``.
    """
    lo, hi = eligible_positions(task.seq_len, task.n_digits)
    positions = rng.integers(lo, hi + 1, size=batch_size)
    ids = np.stack([passkey_example(task, int(p), random_passkey(rng, task.n_digits), rng) for p in positions])
    return ids, positions


def passkey_dataset(task: PasskeyTask, block_size: int, samples_per_block: int = 5, min_samples: int = 0,
                    seed: int = 0):
    """``passkey_rows`` as a ``datasets.Dataset`` (for sharing, saving, or ``map``)."""
    import datasets

    return datasets.Dataset.from_dict(passkey_rows(task, block_size, samples_per_block, min_samples, seed))


def passkey_rows(task: PasskeyTask, block_size: int, samples_per_block: int = 5, min_samples: int = 0,
                 seed: int = 0) -> dict[str, list]:
    """Evaluation set as columns (dict of lists): for every block that can hold the
    passkey, ``samples_per_block`` (or more, to reach ``min_samples`` in all)
    positions drawn uniformly inside the block, each with a fresh random key.

    Columns: input_ids, passkey, position, block (of the first digit), depth
    (= position / seq_len), key_blocks (every block holding a digit of either
    occurrence of the key: with small blocks the needle's two copies can fall
    in different blocks, and the later copy is enough to answer).
    """
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    if isinstance(samples_per_block, bool) or not isinstance(samples_per_block, int) or samples_per_block < 1:
        raise ValueError(f"samples_per_block must be a positive integer, got {samples_per_block!r}")
    rng = np.random.default_rng([seed, task.seq_len, task.n_digits])
    lo, hi = eligible_positions(task.seq_len, task.n_digits)
    blocks = range(lo // block_size, hi // block_size + 1)
    per_block = max(samples_per_block, math.ceil(min_samples / len(blocks)))
    rows = {"input_ids": [], "passkey": [], "position": [], "block": [], "depth": [], "key_blocks": []}
    second = task.n_digits + len(NEEDLE_TAIL.split("{key}")[0])  # offset of the second copy
    for b in blocks:
        b_lo, b_hi = max(lo, b * block_size), min(hi, (b + 1) * block_size - 1)
        for p in rng.integers(b_lo, b_hi + 1, size=per_block):
            key = random_passkey(rng, task.n_digits)
            rows["input_ids"].append(passkey_example(task, int(p), key, rng).tolist())
            rows["passkey"].append(key)
            rows["position"].append(int(p))
            rows["block"].append(int(b))
            rows["depth"].append(float(p) / task.seq_len)
            digits = [int(p) + i for i in range(task.n_digits)] + [int(p) + second + i for i in range(task.n_digits)]
            rows["key_blocks"].append(sorted({t // block_size for t in digits}))
    return rows
