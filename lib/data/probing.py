"""The information-flow probing task of Section 4.6 / Appendix C, at exact token lengths.

Appendix C probes where a passkey's information lives, layer by layer and
block by block: long passkey prompts with one of 6 passkeys, in equal numbers;
a linear probe per (layer, block) predicts the passkey from that block's
average-pooled hidden state. The prompt (plain completion, no chat template)::

    There is an important info hidden inside a lot of irrelevant text. Find it and
    memorize it. I will quiz you about the important information there.

    The abhorrent round combs elevation. The dark roar tabulates event. [...]
    The pass key is apple. Remember it. apple is the pass key. [...]

    What is the pass key? The pass key is

Design choices (why):

* **Token-exact layout.** The probe compares the same (layer, block) cell
  across samples, so every sample must put the needle in the same block and
  end with the question. We tokenize pieces separately (intro, each filler
  word, the needle's parts, the question) and concatenate the ids, choosing
  the filler so each stretch has an exact token count. Every row has exactly
  ``seq_len`` tokens, the needle sentence starts at the same token in every
  sample, and the question's last token is the row's last token.
  For byte-level BPE tokenizers (SmolLM2, Qwen2, GPT-2) word-by-word
  tokenization equals whole-text tokenization (the pre-tokenizer splits at
  spaces and punctuation); for others the ids are a valid, if not canonical,
  tokenization of the same text.
* **Needle position.** The needle sentence starts at token
  ``int(passkey_depth * seq_len)`` (10%: Appendix C's fixed position); if the
  needle would straddle a block boundary it is moved earlier, inside the same
  block, so both copies of the passkey sit in one block (``needle_block``).
  With SmolLM2's tokenizer, 4096 tokens and blocks of 64 the needle takes
  tokens 409-423, block 6. (A needle longer than a block stays at the depth;
  ``needle_block`` is then the block of the passkey word's first copy.)
* **Passkey word.** Always tokenized as ``" " + word`` (it follows a space in
  both copies), so the needle's ids differ between labels only in the word's
  own tokens. SmolLM2 has one token for each of the 6 words; a tokenizer that
  splits some words into more tokens shifts the rest of the needle by that
  much (the filler after the needle absorbs it, so the question still ends the
  row); ``passkey_position`` (the word's first token) is identical everywhere.
* **Filler.** Random grammatical sentences from templates ("The ADJ NOUN VERB
  NOUN.", ...) over fixed word lists, different in every sample: sample ``i``
  draws from ``np.random.default_rng([seed, i, ...])``, so the same parameters
  give the same ids on any machine. No filler word is a passkey word.
* **Labels.** ``n / 6`` samples per word, in a seeded random order.
* No special tokens (BOS) are added: SmolLM2 does not use one for plain text.
"""
from __future__ import annotations

import numpy as np

PASSKEY_WORDS = ("apple", "banana", "cherry", "grape", "kiwi", "lemon")

INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
         "I will quiz you about the important information there.\n\n")
#: The needle as pieces; ``None`` marks where the passkey word (" " + word) goes.
NEEDLE_PIECES = (" The pass key is", None, ". Remember it.", None, " is the pass key.")
QUESTION = "\n\nWhat is the pass key? The pass key is"

ADJECTIVES = (
    "abhorrent", "dark", "round", "quiet", "bright", "heavy", "silent", "hollow", "gentle", "narrow", "ancient",
    "brittle", "curious", "distant", "eager", "fragile", "glassy", "humble", "idle", "jagged", "loyal", "mellow",
    "noisy", "odd", "pale", "rapid", "shallow", "tidy", "vast", "wooden", "yellow", "bitter", "calm", "dusty",
    "frozen", "golden", "lonely", "modest", "proud", "rusty",
)
NOUNS = (
    "roar", "elevation", "event", "comb", "river", "window", "garden", "engine", "theory", "lantern", "bridge",
    "canyon", "doctrine", "feather", "harbor", "island", "journal", "ladder", "meadow", "needle", "orbit",
    "pillar", "question", "rhythm", "saddle", "tower", "valley", "wagon", "anchor", "blanket", "candle", "desert",
    "factory", "glacier", "hammer", "kettle", "mirror", "planet", "signal", "thunder",
)
VERBS = (
    "combs", "tabulates", "follows", "lifts", "crosses", "measures", "carries", "divides", "paints", "weighs",
    "admires", "builds", "chases", "defends", "echoes", "frames", "guards", "hides", "imitates", "joins",
    "kicks", "locates", "mends", "notices", "observes", "praises", "questions", "repairs", "shapes", "tests",
    "unlocks", "visits", "wraps", "borrows", "covers", "drags", "examines", "feeds", "greets", "holds",
)
#: Sentence templates: C = capital "The", t = " the", A = adjective, N = noun, V = verb, P = ".".
TEMPLATES = ("CANVNP", "CAANVNP", "CNVtANP", "CANVtNP", "CNVNP", "CANVtANP")


class _Filler:
    """Random template sentences of an exact total token count, for one tokenizer.

    Words are tokenized once, with a leading space, and sentences are
    sequences of word ids, so a sample's filler costs a few numpy calls, not
    thousands of tokenizer calls. The first sentence's "The" follows the
    intro's newlines without a space; it is tokenized with the intro
    (``INTRO + "The"``) so the newlines split as the tokenizer splits them in
    running text, and here it is an empty word.
    """

    KINDS = "CtANVP"

    def __init__(self, tokenizer):
        # 0: the first sentence's "The", which the intro piece already holds (no tokens here),
        # 1: " The", 2: " the", 3: "."
        words = ["", " The", " the", "."]
        kind_words = {"A": ADJECTIVES, "N": NOUNS, "V": VERBS}
        self.offset = {"C": 1, "t": 2, "P": 3}
        self.count = {"C": 1, "t": 1, "P": 1}
        for kind, ws in kind_words.items():
            self.offset[kind] = len(words)
            self.count[kind] = len(ws)
            words.extend(" " + w for w in ws)
        toks = [[]] + [_encode(tokenizer, w) for w in words[1:]]
        if any(len(t) == 0 for t in toks[1:]):
            raise ValueError("the tokenizer maps a filler word to no tokens")
        self.lens = np.array([len(t) for t in toks], dtype=np.int64)
        self.tok = np.zeros((len(toks), int(self.lens.max())), dtype=np.int64)
        for i, t in enumerate(toks):
            self.tok[i, :len(t)] = t
        self.kinds = [[k for k in tpl] for tpl in TEMPLATES]
        self.max_slots = max(len(k) for k in self.kinds)
        # Per template and per "first sentence" flag: the sets of reachable lengths of each suffix of slots.
        self._suffix = {first: [self._suffix_sets(k, first) for k in self.kinds] for first in (False, True)}
        self.lengths = {first: sorted(set().union(*(s[0] for s in self._suffix[first]))) for first in (False, True)}
        self.min_len = min(self.lengths[False] + self.lengths[True])
        self.max_len = max(self.lengths[False] + self.lengths[True])
        self._reach = np.ones(1, dtype=bool)

    def _slot_lens(self, kind: str, first_slot: bool) -> np.ndarray:
        if kind == "C" and first_slot:
            return self.lens[[0]]
        o = self.offset[kind]
        return self.lens[o:o + self.count[kind]]

    def _suffix_sets(self, kinds, first: bool) -> list[set]:
        sets = [set() for _ in range(len(kinds) + 1)]
        sets[len(kinds)] = {0}
        for j in range(len(kinds) - 1, -1, -1):
            opts = set(self._slot_lens(kinds[j], first and j == 0).tolist())
            sets[j] = {a + b for a in opts for b in sets[j + 1]}
        return sets

    def reach(self, r: int) -> bool:
        """Whether exactly ``r`` tokens can be filled with non-initial sentences."""
        if r < 0:
            return False
        if r >= len(self._reach):
            reach = np.zeros(max(r + 1, 2 * len(self._reach)), dtype=bool)
            reach[0] = True
            lengths = self.lengths[False]
            for i in range(1, len(reach)):
                reach[i] = any(i >= s and reach[i - s] for s in lengths)
            self._reach = reach
        return bool(self._reach[r])

    def feasible(self, budget: int, first: bool) -> bool:
        if budget == 0:
            return not first
        return any(self.reach(budget - s) for s in self.lengths[first])

    def _draw(self, rng: np.random.Generator, m: int, first: bool) -> tuple[np.ndarray, np.ndarray]:
        """``m`` free random sentences: word ids ``[m, max_slots]`` (-1 = unused) and token lengths."""
        t = rng.integers(len(self.kinds), size=m)
        u = rng.random((m, self.max_slots))
        g = np.full((m, self.max_slots), -1, dtype=np.int64)
        for ti, kinds in enumerate(self.kinds):
            rows = np.flatnonzero(t == ti)
            for j, k in enumerate(kinds):
                g[rows, j] = self.offset[k] + np.floor(u[rows, j] * self.count[k]).astype(np.int64)
        if first:
            g[0, 0] = 0  # the sentence right after the intro: its "The" is part of the intro piece
        lengths = np.where(g >= 0, self.lens[np.maximum(g, 0)], 0).sum(1)
        return g, lengths

    def _exact(self, rng: np.random.Generator, length: int, first: bool) -> np.ndarray:
        """One random sentence of exactly ``length`` tokens (word ids)."""
        cands = [i for i, s in enumerate(self._suffix[first]) if length in s[0]]
        ti = cands[int(rng.integers(len(cands)))]
        kinds, suffix = self.kinds[ti], self._suffix[first][ti]
        out, rem = [], length
        for j, k in enumerate(kinds):
            if k == "C" and first and j == 0:
                ids = np.array([0])
            else:
                ids = np.arange(self.offset[k], self.offset[k] + self.count[k])
            ok = ids[[(rem - self.lens[w]) in suffix[j + 1] for w in ids]]
            w = int(ok[rng.integers(len(ok))])
            out.append(w)
            rem -= int(self.lens[w])
        return np.array(out + [-1] * (self.max_slots - len(out)), dtype=np.int64)

    def fill(self, budget: int, rng: np.random.Generator, first: bool) -> np.ndarray:
        """Token ids of random sentences totalling exactly ``budget`` tokens."""
        if not self.feasible(budget, first):
            raise ValueError(f"cannot fill exactly {budget} tokens with filler sentences")
        sentences, r = [], budget
        margin = 2 * self.max_len
        if r > margin + self.max_len:
            m = (r - margin) // max(self.min_len, 1) + 1
            g, lengths = self._draw(rng, m, first)
            c = np.cumsum(lengths)
            k = int(np.searchsorted(c, r - margin, side="right"))
            while k > 0 and not self.reach(r - int(c[k - 1])):
                k -= 1
            if k > 0:
                sentences.append(g[:k])
                r -= int(c[k - 1])
                first = False
        while r > 0:
            for _ in range(20):  # a free draw keeps the templates' natural mix
                g, lengths = self._draw(rng, 1, first)
                if self.reach(r - int(lengths[0])):
                    break
            else:  # rare: a remainder only a few lengths can fill
                ok = [s for s in self.lengths[first] if self.reach(r - s)]
                length = ok[int(rng.integers(len(ok)))]
                g = self._exact(rng, length, first)[None]
                lengths = np.array([length])
            sentences.append(g)
            r -= int(lengths[0])
            first = False
        if not sentences:
            return np.zeros(0, dtype=np.int64)
        words = np.concatenate(sentences).ravel()
        words = words[words >= 0]
        mask = np.arange(self.tok.shape[1])[None, :] < self.lens[words][:, None]
        out = self.tok[words][mask]
        assert len(out) == budget
        return out


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _check_int(name: str, value, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    return int(value)


def probing_task(tokenizer, seq_len: int = 4096, block_size: int = 64, n: int = 1200, seed: int = 0,
                 passkey_depth: float = 0.1, words=PASSKEY_WORDS, return_texts: bool = False) -> dict:
    """Appendix C's probing set: ``n`` prompts of exactly ``seq_len`` tokens, ``n / len(words)`` per passkey.

    Returns a dict:

    * ``input_ids``: LongTensor ``[n, seq_len]`` (no padding, no special tokens);
    * ``labels``: int64 numpy ``[n]`` in ``0..len(words)-1``, balanced, seeded order;
    * ``words``: the passkey words (``labels`` index them);
    * ``needle_block``: block holding the passkey word (both copies), the same for every sample;
    * ``needle_start``: token index of the needle sentence's first token (" The" of "The pass key is");
    * ``passkey_position``: token index of the passkey word's first token (first copy);
    * ``question_start``: token index where the question begins (the same for every sample);
    * ``n_blocks``, ``block_size``, ``seq_len``, ``seed``, ``passkey_depth``;
    * ``texts``: decoded prompts (only with ``return_texts=True``; decoding 1200 x 4K tokens takes a while).
    """
    import torch

    seq_len = _check_int("seq_len", seq_len, 1)
    block_size = _check_int("block_size", block_size, 1)
    n = _check_int("n", n, 1)
    seed = _check_int("seed", seed, 0)
    words = tuple(words)
    if len(words) < 2 or len(set(words)) != len(words) or not all(isinstance(w, str) and w.strip() for w in words):
        raise ValueError(f"words must be at least 2 distinct non-empty strings, got {words!r}")
    if n % len(words):
        raise ValueError(f"n must be a multiple of {len(words)} (equal samples per passkey), got {n}")
    if seq_len % block_size:
        raise ValueError(f"seq_len ({seq_len}) must be a multiple of block_size ({block_size}) so blocks tile it")
    if isinstance(passkey_depth, bool) or not isinstance(passkey_depth, (int, float)) or not 0 < passkey_depth < 1:
        raise ValueError(f"passkey_depth must be a number in (0, 1), got {passkey_depth!r}")

    filler = _Filler(tokenizer)
    intro = _encode(tokenizer, INTRO + "The")  # + the first filler sentence's "The" (see _Filler)
    question = _encode(tokenizer, QUESTION)
    word_ids = [_encode(tokenizer, " " + w) for w in words]
    pieces = [None if p is None else _encode(tokenizer, p) for p in NEEDLE_PIECES]
    needles = [sum((w if p is None else p for p in pieces), []) for w in word_ids]
    head = len(pieces[0])  # the needle's tokens before the first passkey copy
    needle_len = max(len(x) for x in needles)

    start = int(passkey_depth * seq_len)
    if start // block_size != (start + needle_len - 1) // block_size and needle_len <= block_size:
        start = (start // block_size + 1) * block_size - needle_len  # keep the needle inside one block
    fixed = len(intro) + needle_len + len(question)
    before = start - len(intro)
    if seq_len < fixed + 2 * filler.min_len:
        raise ValueError(f"seq_len={seq_len} is too short for the probing prompt: it needs at least "
                         f"{fixed + 2 * filler.min_len} tokens (intro, needle, question and a filler sentence "
                         "before and after the needle)")
    if before < filler.min_len or not filler.feasible(before, first=True):
        raise ValueError(f"passkey_depth={passkey_depth} puts the needle at token {start}, leaving {before} "
                         f"tokens after the {len(intro)}-token intro: too few for filler; use a larger depth or "
                         "seq_len")
    for x in needles:
        after = seq_len - start - len(x) - len(question)
        if after < filler.min_len or not filler.feasible(after, first=False):
            raise ValueError(f"passkey_depth={passkey_depth} leaves {after} tokens between the needle and the "
                             "question: too few for filler; use a smaller depth or a larger seq_len")

    labels = np.random.default_rng([seed, n, len(words)]).permutation(np.repeat(np.arange(len(words)), n // len(words)))
    ids = np.empty((n, seq_len), dtype=np.int64)
    for i in range(n):
        rng = np.random.default_rng([seed, i, seq_len, start])
        needle = needles[labels[i]]
        after = seq_len - start - len(needle) - len(question)
        row = np.concatenate([intro, filler.fill(before, rng, first=True), needle,
                              filler.fill(after, rng, first=False), question])
        assert len(row) == seq_len
        ids[i] = row
    out = {
        "input_ids": torch.from_numpy(ids),
        "labels": labels.astype(np.int64),
        "words": words,
        "needle_block": (start + head) // block_size,
        "needle_start": start,
        "passkey_position": start + head,
        "question_start": seq_len - len(question),
        "n_blocks": seq_len // block_size,
        "block_size": block_size,
        "seq_len": seq_len,
        "seed": seed,
        "passkey_depth": float(passkey_depth),
    }
    if return_texts:
        out["texts"] = [tokenizer.decode(row.tolist()) for row in ids]
    return out
