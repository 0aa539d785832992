"""The passkey retrieval task of Section 4.3 / Appendix A, at exact token lengths, for any HF tokenizer.

Prompt (Appendix C's wording, plain completion: chat templates answer badly)::

    There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. I will
    quiz you about the important information there.
    <filler ...> The pass key is 48213. Remember it. 48213 is the pass key. <filler ...>
    What is the pass key? The pass key is 48213

The passkey is a string of random digits (Appendix A); the filler is "repeated irrelevant sentences"
(Appendix A). Every sequence has exactly ``seq_len`` tokens and ends with the answer (a space and the
digits), so a model is scored on the logits of the answer positions: all answer tokens being the argmax
given the prompt and the earlier answer tokens is exactly "greedy decoding outputs the passkey".

Token-exact construction: the prompt is the concatenation of separately tokenized pieces (intro,
filler, needle, filler, question, answer), so lengths and positions are exact and the same for every
key; every digit must be a single token (true of SmolLM2's tokenizer and of byte-level ones).

The needle inside one block: the needle sentence (about 25 SmolLM2 tokens) is placed so that it lies
entirely inside one ``block_size`` block (``needle_block``): the question "which block holds the
key" has one answer, and the receptive-field ceiling of a sample is that block's reachability.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
         "I will quiz you about the important information there.\n")
REPEAT_FILLER = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
QUESTION = "\nWhat is the pass key? The pass key is"


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


class PasskeyPieces:
    """The tokenized pieces of the prompt for one tokenizer (built once, reused for every sample)."""

    def __init__(self, tokenizer, filler: str = "repeat"):
        if filler != "repeat":
            raise ValueError(f"filler must be 'repeat' (Appendix A's repeated sentences), got {filler!r}")
        self.intro = _ids(tokenizer, INTRO)
        self.filler = _ids(tokenizer, REPEAT_FILLER)
        self.question = _ids(tokenizer, QUESTION)
        self.head = _ids(tokenizer, " The pass key is")
        self.mid = _ids(tokenizer, ". Remember it.")
        self.tail = _ids(tokenizer, " is the pass key.")
        self.space = _ids(tokenizer, " ")
        self.digits = []
        for d in "0123456789":
            ids = _ids(tokenizer, d)
            if len(ids) != 1:
                raise ValueError(f"the tokenizer splits the digit {d!r} into {len(ids)} tokens; the passkey task "
                                 "needs one token per digit")
            self.digits.append(ids[0])
        if len(self.space) != 1:
            raise ValueError("the tokenizer must encode a single space as one token")

    def key_ids(self, key: str) -> list[int]:
        return self.space + [self.digits[int(c)] for c in key]

    def needle(self, key: str) -> list[int]:
        k = self.key_ids(key)
        return self.head + k + self.mid + k + self.tail

    def needle_len(self, n_digits: int) -> int:
        return len(self.needle("0" * n_digits))


@dataclass(frozen=True)
class PasskeyTask:
    """One passkey setting (hashable; its fields go into cache keys)."""

    seq_len: int
    block_size: int
    n_digits: int = 5
    filler: str = "repeat"

    def __post_init__(self):
        for name, low in (("seq_len", 1), ("block_size", 1), ("n_digits", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
        if self.n_digits > 18:
            raise ValueError(f"n_digits must be at most 18, got {self.n_digits}")

    @property
    def answer_len(self) -> int:
        return 1 + self.n_digits


class PasskeyBuilder:
    """Builds passkey prompts of ``task`` with ``tokenizer``; ``eligible_blocks`` are the blocks that
    can hold the whole needle (after the intro, before the question)."""

    def __init__(self, task: PasskeyTask, tokenizer, pieces: PasskeyPieces | None = None):
        self.task = task
        self.p = pieces or PasskeyPieces(tokenizer, task.filler)
        self.needle_len = self.p.needle_len(task.n_digits)
        if self.needle_len > task.block_size:
            raise ValueError(f"the needle takes {self.needle_len} tokens, more than one block of {task.block_size}")
        tail = len(self.p.question) + task.answer_len
        self.body_end = task.seq_len - tail  # first token of the question
        self.body_start = len(self.p.intro)
        if self.body_end - self.body_start < self.needle_len:
            raise ValueError(f"seq_len={task.seq_len} is too short for the passkey prompt (needs at least "
                             f"{self.body_start + self.needle_len + tail} tokens)")

    @cached_property
    def eligible_blocks(self) -> list[int]:
        bs, n = self.task.block_size, self.needle_len
        out = []
        for b in range(self.task.seq_len // bs + 1):
            lo, hi = max(b * bs, self.body_start), min((b + 1) * bs, self.body_end)
            if hi - lo >= n:
                out.append(b)
        return out

    def offsets(self, block: int) -> tuple[int, int]:
        """Inclusive range of needle start positions that keep the needle inside ``block``."""
        bs, n = self.task.block_size, self.needle_len
        lo = max(block * bs, self.body_start)
        hi = min((block + 1) * bs, self.body_end) - n
        if hi < lo:
            raise ValueError(f"block {block} cannot hold the needle (eligible: {self.eligible_blocks[0]}.."
                             f"{self.eligible_blocks[-1]})")
        return lo, hi

    def example(self, position: int, key: str) -> np.ndarray:
        """Token ids (int64 ``[seq_len]``) with the needle starting at token ``position``."""
        t = self.task
        if len(key) != t.n_digits or not key.isdigit():
            raise ValueError(f"key must be {t.n_digits} digits, got {key!r}")
        if not self.body_start <= position <= self.body_end - self.needle_len:
            raise ValueError(f"needle position {position} outside [{self.body_start}, {self.body_end - self.needle_len}]")
        before = position - self.body_start
        after = self.body_end - position - self.needle_len
        f = self.p.filler
        reps = (before + after) // len(f) + 2
        stream = f * reps
        ids = (self.p.intro + stream[:before] + self.p.needle(key) + stream[before:before + after]
               + self.p.question + self.p.key_ids(key))
        assert len(ids) == t.seq_len, (len(ids), t.seq_len)
        return np.asarray(ids, dtype=np.int64)

    def random_key(self, rng: np.random.Generator) -> str:
        """Random digits; the first is 1-9 so the key reads as a number."""
        return str(rng.integers(1, 10)) + "".join(str(d) for d in rng.integers(0, 10, size=self.task.n_digits - 1))

    def batch(self, rng: np.random.Generator, batch_size: int) -> np.ndarray:
        """Training batch (int64 ``[B, seq_len]``): needle blocks uniform over the eligible blocks, a
        uniform start inside the block, fresh random keys."""
        rows = []
        blocks = self.eligible_blocks
        for _ in range(batch_size):
            b = blocks[int(rng.integers(len(blocks)))]
            lo, hi = self.offsets(b)
            rows.append(self.example(int(rng.integers(lo, hi + 1)), self.random_key(rng)))
        return np.stack(rows)

    def eval_set(self, samples_per_block: int, seed: int, min_samples: int = 0) -> dict[str, list]:
        """Evaluation set as columns: for every eligible block, ``samples_per_block`` needles (or more,
        to reach ``min_samples`` in all) at uniform offsets inside the block, fresh keys.

        Columns: input_ids, passkey, position (first needle token), block, depth (= position / seq_len).
        """
        if isinstance(samples_per_block, bool) or not isinstance(samples_per_block, int) or samples_per_block < 1:
            raise ValueError(f"samples_per_block must be a positive integer, got {samples_per_block!r}")
        rng = np.random.default_rng([seed, self.task.seq_len, self.task.block_size, self.task.n_digits])
        blocks = self.eligible_blocks
        per_block = max(samples_per_block, -(-min_samples // len(blocks)))
        cols = {"input_ids": [], "passkey": [], "position": [], "block": [], "depth": []}
        for b in blocks:
            lo, hi = self.offsets(b)
            for p in rng.integers(lo, hi + 1, size=per_block):
                key = self.random_key(rng)
                cols["input_ids"].append(self.example(int(p), key))
                cols["passkey"].append(key)
                cols["position"].append(int(p))
                cols["block"].append(int(b))
                cols["depth"].append(float(p) / self.task.seq_len)
        return cols


__all__ = ["INTRO", "PasskeyBuilder", "PasskeyPieces", "PasskeyTask", "QUESTION", "REPEAT_FILLER"]
